"""Chat channels through send-pending, end to end, on each of the three databases.

One ``[chat.<name>]`` block per destination in a real config file; loopback servers
speaking Slack's, Teams Workflows' and the signed webhook's shapes. A chat message is a
delivery row per (event, chat, destination) with the guarantees email has: retries with
backoff (``Retry-After`` honoured), ``ITSM_MAX_ATTEMPTS``, failures in ``status``,
``requeue``, the delivery log; a webhook found gone disables its destination until its
URL changes or ``test-channel`` reaches it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from contract_app import (
    add_event,
    add_ticket,
    cli_env,
    create_schema,
    deliveries,
    outbox_states,
    run_cli,
    seed_helpdesk,
    utcnow,
)
from http_fakes import Reply, SlackFake, TeamsFake, WebhookReceiver
from itsm_notify.storage import schema
from smtp_server import SmtpSink

pytestmark = pytest.mark.timeout(120)
SECRET = "whsec-test-0123456789"


def write_config(tmp_path: Path, slack: SlackFake, teams: TeamsFake, *,
                 slack_path: str | None = None, extra: str = "") -> Path:
    path = tmp_path / "itsm-notify.toml"
    path.write_text(f"""
site_name = "Example Help Desk"

[chat.ops]
kind = "teams"
url_env = "TEAMS_OPS_URL"
priorities = ["high", "critical"]
projects = ["Network"]

[chat.everything]
kind = "slack"
url = "{slack.url}{slack_path or slack.path}"
rate_per_second = 0
{extra}
""")
    return path


def env_for(url: str, sink: SmtpSink, config: Path, teams: TeamsFake,
            **settings: Any) -> dict[str, str]:
    return cli_env(url, EMAIL_BACKEND="smtp", EMAIL_HOST=sink.host, EMAIL_PORT=sink.port,
                   ITSM_NOTIFY_CONFIG=str(config), TEAMS_OPS_URL=teams.url + teams.path,
                   SITE_URL="https://helpdesk.example.com", ITSM_DELIVERY_LOG="email.log",
                   **settings)


def chat_rows(engine: sa.Engine) -> dict[tuple[int, str], dict[str, Any]]:
    return {(r["event_id"], r["recipient"]): r for r in deliveries(engine)
            if r["channel"] == "chat"}


@pytest.fixture
def desk(database_url: str) -> Any:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    yield engine, ids, database_url
    engine.dispose()


def test_routes_send_each_message_once_where_its_rules_say(desk: Any, tmp_path: Path,
                                                            smtp_sink: SmtpSink) -> None:
    engine, ids, url = desk
    created = add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})  # high, Network
    laptop = add_event(engine, "status_changed", ids["laptop"], ids["bob"],
                       {"old_status": "open", "new_status": "resolved"})  # no project
    internal = add_event(engine, "comment_added", ids["vpn"], ids["frank"],
                         {"comment_id": ids["c_frank_internal"]})
    with SlackFake() as slack, TeamsFake() as teams:
        env = env_for(url, smtp_sink, write_config(tmp_path, slack, teams), teams)
        result = run_cli(["send-pending"], env)
        assert result.exit_code == 0, result.stdout + result.stderr
        again = run_cli(["send-pending"], env)  # nothing is sent twice
        assert again.exit_code == 0
    # Teams: the high Network ticket only; Slack: every event but the internal comment
    [card] = [r.json() for r in teams.requests]
    content = card["attachments"][0]["content"]
    texts = json.dumps(content)
    assert "TKT-001" in texts and "VPN drops every 10 minutes" in texts and "Alice" in texts
    assert content["actions"][0]["url"] == f"https://helpdesk.example.com/tickets/{ids['vpn']}/"
    slack_texts = [r.json()["text"] for r in slack.requests]
    assert sorted(slack_texts) == sorted([
        "New ticket: TKT-001 VPN drops every 10 minutes",
        "Status changed: TKT-002 New laptop for onboarding"])
    assert all("SECRET-NOTE" not in r.body.decode() for r in slack.requests + teams.requests)

    rows = chat_rows(engine)
    assert set(rows) == {(created, "ops"), (created, "everything"), (laptop, "everything")}
    assert {r["state"] for r in rows.values()} == {"sent"}
    assert rows[(created, "ops")]["provider_message_id"].startswith("08584")  # the run id
    assert outbox_states(engine) == {created: "done", laptop: "done", internal: "done"}
    log = Path("email.log").read_text()
    assert f"event={created} channel=chat recipient=ops outcome=sent code=202" in log


def test_a_throttled_or_failing_webhook_is_retried_and_email_goes_on(
        desk: Any, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    engine, ids, url = desk
    event = add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    with SlackFake() as slack, TeamsFake() as teams:
        slack.script(Reply(429, {"Retry-After": "30"}, body="rate_limited"))
        teams.script(Reply(500, body={"error": {"code": "InternalServerError"}}))
        env = env_for(url, smtp_sink, write_config(tmp_path, slack, teams), teams,
                      ITSM_MAX_ATTEMPTS="2")
        first = run_cli(["send-pending"], env)
        assert first.exit_code == 1  # deferred
        rows = chat_rows(engine)
        # a 500 uses up an attempt; being asked to wait does not
        assert {(r["recipient"], r["state"], r["attempts"]) for r in rows.values()} == \
            {("ops", "deferred", 1), ("everything", "deferred", 0)}
        # Slack's Retry-After (30 s) pushes the retry past the first backoff step
        waited = rows[(event, "everything")]["next_attempt_at"] - utcnow()
        assert waited > timedelta(seconds=25)
        # the email went out meanwhile, and is not sent again
        assert {a for m in smtp_sink.messages for a in m.rcpt_tos} >= {"bob@example.com"}
        emails = len(smtp_sink.messages)
        assert run_cli(["requeue", "--deferred", "--yes"], env).exit_code == 0
        second = run_cli(["send-pending"], env)
        assert second.exit_code == 0, second.stdout + second.stderr
        assert len(smtp_sink.messages) == emails
        assert len(slack.requests) == 2 and len(teams.requests) == 2
        # the same delivery id on the retry (the receivers' idempotency key)
    rows = chat_rows(engine)
    assert {(r["recipient"], r["state"], r["attempts"]) for r in rows.values()} == \
        {("ops", "sent", 2), ("everything", "sent", 1)}
    assert outbox_states(engine) == {event: "done"}


def test_max_attempts_fail_the_delivery_and_status_counts_it(desk: Any, tmp_path: Path,
                                                              smtp_sink: SmtpSink) -> None:
    engine, ids, url = desk
    event = add_event(engine, "ticket_created", ids["laptop"], ids["alice"], {})
    with SlackFake() as slack, TeamsFake() as teams:
        slack.script(*[Reply(503, body="service unavailable")] * 2)
        env = env_for(url, smtp_sink, write_config(tmp_path, slack, teams), teams,
                      ITSM_MAX_ATTEMPTS="2")
        run_cli(["send-pending"], env)
        run_cli(["requeue", "--deferred", "--yes"], env)
        assert run_cli(["send-pending"], env).exit_code == 1
        row = chat_rows(engine)[(event, "everything")]
        assert row["state"] == "failed" and "gave up after 2 attempts" in row["last_error"]
        assert outbox_states(engine) == {event: "failed"}
        status = json.loads(run_cli(["status", "--json"], env).stdout)
        assert status["failed_deliveries_last_24h"]["chat"] == 1
        # requeue retries exactly that delivery
        assert run_cli(["requeue", str(event), "--yes"], env).exit_code == 0
        assert run_cli(["send-pending"], env).exit_code == 0
    assert chat_rows(engine)[(event, "everything")]["state"] == "sent"


def test_a_deleted_webhook_disables_its_destination_until_test_channel_reaches_it(
        desk: Any, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    engine, ids, url = desk
    first = add_event(engine, "ticket_created", ids["laptop"], ids["alice"], {})
    with SlackFake() as slack, TeamsFake() as teams:
        gone = write_config(tmp_path, slack, teams, slack_path="/services/T0001/B0001/deleted")
        env = env_for(url, smtp_sink, gone, teams)
        assert run_cli(["send-pending"], env).exit_code == 1  # failed
        row = chat_rows(engine)[(first, "everything")]
        assert row["state"] == "failed" and "no_service" in row["last_error"]
        status = json.loads(run_cli(["status", "--json"], env).stdout)
        [disabled] = status["disabled_chat_destinations"]
        assert disabled["name"] == "everything" and "no_service" in disabled["reason"]
        shown = run_cli(["status"], env).stdout
        assert "chat destination everything is disabled" in shown

        # while disabled, nothing is posted there: the delivery is skipped with the reason
        second = add_event(engine, "ticket_created", ids["laptop"], ids["alice"], {})
        posted = len(slack.requests)
        assert run_cli(["send-pending"], env).exit_code == 0
        assert len(slack.requests) == posted
        row = chat_rows(engine)[(second, "everything")]
        assert row["state"] == "skipped" and "test-channel everything" in row["last_error"]

        # test-channel on the dead URL fails and says why; on a new URL it posts, and the
        # new URL alone enables the destination again
        probe = run_cli(["test-channel", "everything"], env)
        assert probe.exit_code == 1 and "gone" in probe.stdout
        fixed = write_config(tmp_path, slack, teams)
        env = env_for(url, smtp_sink, fixed, teams)
        probe = run_cli(["test-channel", "everything"], env)
        assert probe.exit_code == 0, probe.stdout + probe.stderr
        assert "enable" in probe.stdout and "T0001" not in probe.stdout  # the URL is secret
        third = add_event(engine, "ticket_created", ids["laptop"], ids["alice"], {})
        assert run_cli(["send-pending"], env).exit_code == 0
    assert chat_rows(engine)[(third, "everything")]["state"] == "sent"
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.chat_destination_states)).all() == []


def test_debug_mode_posts_only_to_debug_destinations(desk: Any, tmp_path: Path,
                                                     smtp_sink: SmtpSink) -> None:
    engine, ids, url = desk
    add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    with SlackFake() as slack, TeamsFake() as teams, WebhookReceiver(SECRET) as hook:
        config = write_config(tmp_path, slack, teams, extra=f"""
[chat.test]
kind = "webhook"
url = "{hook.url}{hook.path}"
secret_env = "HOOK_SECRET"
debug = true
""")
        env = env_for(url, smtp_sink, config, teams, DEBUG="true",
                      DEVELOPMENT_EMAIL="dev@example.com", HOOK_SECRET=SECRET)
        assert run_cli(["send-pending"], env).exit_code == 0
    assert (len(slack.requests), len(teams.requests)) == (0, 0)
    [delivered] = hook.processed.values()  # signed, and verified by the receiver
    assert delivered["ticket"]["number"] == "TKT-001" and not hook.refused
    assert {a for m in smtp_sink.messages for a in m.rcpt_tos} == {"dev@example.com"}


def test_ticket_text_cannot_mention_everyone_or_forge_a_link(desk: Any, tmp_path: Path,
                                                             smtp_sink: SmtpSink) -> None:
    engine, ids, url = desk
    hostile = add_ticket(engine, "TKT-666", "<!channel> @here <https://evil.example|click>",
                         ids["alice"], project_id=ids["network"], priority="critical")
    add_event(engine, "ticket_created", hostile, ids["alice"], {})
    with SlackFake() as slack, TeamsFake() as teams:
        env = env_for(url, smtp_sink, write_config(tmp_path, slack, teams), teams)
        assert run_cli(["send-pending"], env).exit_code == 0
    [posted] = [r.body.decode() for r in slack.requests]
    assert "<!channel>" not in posted and "@here" not in posted
    assert "<https://evil.example|click>" not in posted
    [card] = [r.json() for r in teams.requests]
    assert "@here" not in json.dumps(card, ensure_ascii=False)


def test_test_channel_names_the_destinations_there_are(tmp_path: Path) -> None:
    with SlackFake() as slack, TeamsFake() as teams:
        config = write_config(tmp_path, slack, teams)
        env = cli_env(f"sqlite:///{tmp_path}/x.db", ITSM_NOTIFY_CONFIG=str(config),
                      TEAMS_OPS_URL=teams.url + teams.path)
        result = run_cli(["test-channel", "opps"], env)
    assert result.exit_code == 2
    assert "There is no chat destination 'opps': the config file has ops, everything." \
        in result.stderr
