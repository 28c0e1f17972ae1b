"""The smaller commands: ``status --json`` (contract §5), ``demo``, ``config show``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from contract_app import add_event, cli_env, create_schema, run_cli, seed_helpdesk

pytestmark = pytest.mark.timeout(120)


# -------------------------------------------------------------------------- status


def status_json(database_url: str) -> dict[str, object]:
    result = run_cli(["status", "--json"], cli_env(database_url))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)  # stdout is the JSON document and nothing else
    assert isinstance(data, dict)
    return data


def test_status_json_shape_and_counts(database_url: str) -> None:
    engine = create_schema(database_url)
    try:
        empty = status_json(database_url)
        assert empty["counts"] == {"pending": 0, "processing": 0, "done": 0, "failed": 0}
        assert empty["oldest_pending_age_seconds"] is None

        ids = seed_helpdesk(engine)
        add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
        add_event(engine, "ticket_exploded", ids["vpn"], None, {})
        queued = status_json(database_url)
        assert queued["counts"] == {"pending": 2, "processing": 0, "done": 0, "failed": 0}
        age = queued["oldest_pending_age_seconds"]
        # A number, and UTC on every database: the event was written just now.
        assert isinstance(age, int | float) and not isinstance(age, bool)
        assert 0 <= age < 60

        assert run_cli(["send-pending"], cli_env(database_url)).exit_code == 1
        after = status_json(database_url)
        assert after["counts"] == {"pending": 0, "processing": 0, "done": 1, "failed": 1}
        assert after["oldest_pending_age_seconds"] is None
        assert after["failed_last_24h"] == 1
    finally:
        engine.dispose()


def test_status_table_on_a_terminal_or_not(sqlite_url: str) -> None:
    engine = create_schema(sqlite_url)
    engine.dispose()
    result = run_cli(["status"], cli_env(sqlite_url))
    assert result.exit_code == 0
    for state in ("pending", "processing", "done", "failed"):
        assert state in result.stdout
    assert "oldest pending: none" in result.stdout


# ---------------------------------------------------------------------------- demo


def test_demo_in_an_empty_folder_prints_real_emails(tmp_path: Path) -> None:
    assert list(tmp_path.iterdir()) == []
    result = run_cli(["demo"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert (tmp_path / "itsm-notify-demo.db").is_file()
    # Real emails, with the contract's subjects and headers, to the console.
    assert "Subject: New Ticket: VPN drops every 10 minutes (TKT-001)" in out
    assert "Subject: Ticket Assigned: VPN drops every 10 minutes (TKT-001)" in out
    assert "Subject: New Comment on Ticket: VPN drops every 10 minutes (TKT-001)" in out
    assert "Subject: Ticket Status Changed: VPN drops every 10 minutes → in_progress" in out
    assert "Subject: New Ticket: New laptop for onboarding (TKT-002)" in out
    assert "X-ITSM-Event: comment_added" in out and "Auto-Submitted: auto-generated" in out
    assert "Hi Alice," in out and "http://localhost:8000/tickets/1/" in out
    # Carol reads German (users.locale): her copy of the same event is in German
    assert "Subject: Neues Ticket: VPN drops every 10 minutes (TKT-001)" in out
    assert "Hallo Carol," in out
    assert out.count("Envelope: ") >= 6
    # The internal note is in the demo's data but never in an email.
    assert "idle-timeout" not in out
    assert "/tickets/1/" in out and "in-app notifications" in out


def test_demo_runs_again_from_scratch(tmp_path: Path) -> None:
    first = run_cli(["demo"])
    second = run_cli(["demo"])
    assert first.exit_code == second.exit_code == 0
    assert first.stdout.count("Envelope: ") == second.stdout.count("Envelope: ")


def test_demo_ignores_the_users_settings(tmp_path: Path) -> None:
    """A .env pointing at a real server must not make the demo send real mail."""
    (tmp_path / ".env").write_text("EMAIL_BACKEND=smtp\nEMAIL_HOST=127.0.0.1\nEMAIL_PORT=1\n"
                                   "DATABASE_URL=sqlite:///real.db\n")
    result = run_cli(["demo"])
    assert result.exit_code == 0, result.stderr
    assert "Envelope: " in result.stdout
    assert not (tmp_path / "real.db").exists()


# --------------------------------------------------------------------- config show


def _alnum(text: str) -> str:
    """Only letters and digits: a secret folded across table lines still shows whole."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("EMAIL_HOST=smtp.example.com\n")
    env = {"EMAIL_HOST_PASSWORD": "hunter2VerySecret",
           "DATABASE_URL": "postgresql+psycopg://helpdesk:dbpassSecret9@db.example.com/itsm",
           "SECRET_KEY": "signingKeySecret7"}
    result = run_cli(["config", "show"], env)
    assert result.exit_code == 0, result.stderr
    shown = result.stdout + result.stderr
    for secret in ("hunter2VerySecret", "dbpassSecret9", "signingKeySecret7"):
        assert secret not in _alnum(shown)
    assert "********" in shown
    assert "EMAIL_HOST_PASSWORD" in shown and "smtp.example.com" in shown  # from .env
    assert "postgresqlpsycopghelpdeskdbexamplecomitsm" in _alnum(shown)  # the URL, masked


def test_config_show_with_a_bad_setting_exits_2(tmp_path: Path) -> None:
    result = run_cli(["config", "show"], {"EMAIL_USE_SSL": "perhaps"})
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "EMAIL_USE_SSL" in result.stderr
