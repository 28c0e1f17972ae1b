"""send-pending through SendGrid's API, end to end, on each of the three databases.

Arctyk's guide configures SendGrid with a Django ``.env`` (``EMAIL_BACKEND=
sendgrid_backend.SendgridBackend``, ``SENDGRID_API_KEY``): that file, unchanged, in
the working folder of a real ``itsm-notify send-pending``, against a loopback server
speaking SendGrid's v3 API. Then the guarantees: a 429 waited out, a 500 retried by a
later run with the same Message-ID, a revoked key that defers everything without using
up a retry.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from contract_app import add_event, cli_env, create_schema, deliveries, outbox_states, run_cli
from contract_app import seed_helpdesk as seed
from http_fakes import SENDGRID_RATE_LIMITED, SENDGRID_SERVER_ERROR, Reply, SendGridFake
from itsm_notify.compose.render import message_id

pytestmark = pytest.mark.timeout(120)

ARCTYK_DOTENV = "EMAIL_BACKEND=sendgrid_backend.SendgridBackend\nSENDGRID_API_KEY=SG.test-key\n"
#: ticket_created on TKT-001 (project Network, notify_team): requester, assignee, the
#: other team member, ADMINS
RECIPIENTS = {"alice@example.com", "bob@example.com", "carol@example.com", "ops@example.com"}


@pytest.fixture
def desk(database_url: str, tmp_path: Path) -> Any:
    (tmp_path / ".env").write_text(ARCTYK_DOTENV)  # the working folder's, as in Arctyk
    engine = create_schema(database_url)
    ids = seed(engine)
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    yield engine, event, database_url
    engine.dispose()


def env(database_url: str, fake: SendGridFake, **settings: Any) -> dict[str, str]:
    return cli_env(database_url, SENDGRID_API_URL=fake.url + "/v3/",
                   DEFAULT_FROM_EMAIL="Help Desk <helpdesk@example.com>",
                   SITE_URL="https://helpdesk.example.com", ADMINS="Ops <ops@example.com>",
                   ITSM_DELIVERY_LOG="email.log", **settings)


def sent_to(fake: SendGridFake) -> Counter[tuple[str, str]]:
    """(recipient, Message-ID) of every request SendGrid accepted (202)."""
    return Counter((r.json()["personalizations"][0]["to"][0]["email"],
                    r.json()["headers"]["Message-ID"]) for r in fake.requests)


def test_arctyks_dotenv_sends_through_sendgrid(desk: Any) -> None:
    engine, event, url = desk
    with SendGridFake() as fake:
        result = run_cli(["send-pending"], env(url, fake))
    assert result.exit_code == 0, result.stderr
    expected = {(a, message_id(event, a, "example.com")) for a in RECIPIENTS}
    assert sent_to(fake) == Counter(expected)  # each once
    assert all(r.header("Authorization") == "Bearer SG.test-key" for r in fake.requests)
    rows = [r for r in deliveries(engine) if r["channel"] == "email"]
    assert {(r["recipient"], r["state"], r["attempts"], r["last_code"]) for r in rows} == \
        {(a, "sent", 1, 202) for a in RECIPIENTS}
    # SendGrid's X-Message-Id, kept to match its later events
    assert all(len(r["provider_message_id"] or "") == 22 for r in rows)
    assert outbox_states(engine) == {event: "done"}
    assert "code=202" in Path("email.log").read_text()


def test_a_429_is_waited_out_and_a_500_retried_by_the_next_run(desk: Any) -> None:
    engine, event, url = desk
    with SendGridFake() as fake:
        fake.script(Reply(429, {"Retry-After": "1"}, SENDGRID_RATE_LIMITED),
                    Reply(500, body=SENDGRID_SERVER_ERROR))
        # the retry due in 0.5-1 s: not within the first run (which claims again once the
        # server has answered, and would take a retry already due), but after the pause
        settings = env(url, fake, ITSM_HTTP_CONNECTIONS=1, ITSM_RETRY_BASE_SECONDS=1,
                       ITSM_RETRY_MAX_SECONDS=1)
        first = run_cli(["send-pending"], settings)
        assert first.exit_code == 1  # a delivery was deferred
        rows = {r["recipient"]: r for r in deliveries(engine) if r["channel"] == "email"}
        [failed] = [r for r in rows.values() if r["state"] == "deferred"]
        assert (failed["attempts"], failed["last_code"]) == (1, 500)
        assert failed["last_error"] == "500 internal error"
        assert outbox_states(engine) == {event: "pending"}
        time.sleep(1.05)
        second = run_cli(["send-pending"], settings)
    assert second.exit_code == 0, second.stderr
    assert len(fake.requests) == 6  # 429, 4 sent, 500 ... then its retry
    retried = fake.requests[-1].json()
    assert retried["personalizations"][0]["to"][0]["email"] == failed["recipient"]
    assert retried["headers"]["Message-ID"] == message_id(event, failed["recipient"],
                                                          "example.com")
    assert {r["state"] for r in deliveries(engine) if r["channel"] == "email"} == {"sent"}
    assert outbox_states(engine) == {event: "done"}


def test_a_revoked_key_defers_everything_without_using_a_retry(desk: Any) -> None:
    engine, event, url = desk
    with SendGridFake(api_key="SG.rotated-key") as fake:
        result = run_cli(["send-pending"], env(url, fake, ITSM_HTTP_CONNECTIONS=1))
    assert result.exit_code != 0
    assert "check SENDGRID_API_KEY" in result.stderr and "SG.test-key" not in result.stderr
    assert len(fake.requests) == 1
    rows = [r for r in deliveries(engine) if r["channel"] == "email"]
    assert {(r["state"], r["attempts"]) for r in rows} == {("deferred", 0)}
    assert outbox_states(engine) == {event: "pending"}
