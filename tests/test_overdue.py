"""overdue-scan against a real SMTP server, on SQLite, PostgreSQL and MariaDB.

The clock is pinned (``now=NOW``) so "3 days overdue" and the re-alert window are exact.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from contract_app import (
    add_ticket,
    add_user,
    create_schema,
    outbox_rows,
    run_cli,
    set_preference,
    smtp_env,
)
from contract_app import utcnow as helpdesk_now
from itsm_notify.compose.i18n import Languages
from itsm_notify.config import Settings, load_settings
from itsm_notify.engine import scans
from itsm_notify.engine.overdue import overdue_scan
from itsm_notify.engine.sender import send_pending
from itsm_notify.source import load_source
from itsm_notify.storage import schema
from itsm_notify.storage.deliveries import add_suppression
from smtp_server import ReceivedMessage, SmtpSink

NOW = datetime(2026, 3, 10, 12, 0, 0)
SITE = "https://helpdesk.example.com"


def settings_for(url: str, sink: SmtpSink, **overrides: Any) -> Settings:
    values = {"database_url": url, "email_backend": "smtp", "email_host": sink.host,
              "email_port": sink.port, "email_timeout": 10, "site_url": SITE,
              "default_from_email": "Help Desk <helpdesk@example.com>", **overrides}
    return load_settings(values, environ={}, dotenv_path=None)


@pytest.fixture
def desk(database_url: str) -> dict[str, Any]:
    """Agents bob and carol, requester alice, inactive gina, address-less hank."""
    engine = create_schema(database_url)
    ids: dict[str, Any] = {"engine": engine, "url": database_url}
    ids["alice"] = add_user(engine, "alice", first_name="Alice")
    ids["bob"] = add_user(engine, "bob", first_name="Bob", last_name="Okafor")
    ids["carol"] = add_user(engine, "carol", first_name="Carol")
    ids["gina"] = add_user(engine, "gina", first_name="Gina", is_active=False)
    ids["hank"] = add_user(engine, "hank", None, first_name="Hank")
    return ids


def ticket(desk: dict[str, Any], number: str, *, assignee: str | None, due: timedelta | None,
           status: str = "open", priority: str = "medium", title: str | None = None) -> int:
    """A ticket due ``due`` before NOW (negative: due in the future)."""
    return add_ticket(desk["engine"], number, title or f"Title of {number}", desk["alice"],
                      assignee_id=desk[assignee] if assignee else None, status=status,
                      priority=priority, due_at=NOW - due if due is not None else None)


def text_of(message: ReceivedMessage) -> str:
    part = message.message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def html_of(message: ReceivedMessage) -> str:
    part = message.message.get_body(preferencelist=("html",))
    assert part is not None
    return part.get_content()


def alerts(engine: sa.Engine) -> set[tuple[int, str]]:
    with engine.connect() as conn:
        return {(r.ticket_id, r.recipient) for r in conn.execute(sa.select(schema.overdue_alerts))}


# ------------------------------------------------------------------ who gets what


def test_one_digest_per_assignee_most_overdue_first(desk: dict[str, Any],
                                                    smtp_sink: SmtpSink) -> None:
    b1 = ticket(desk, "TKT-101", assignee="bob", due=timedelta(hours=5), priority="critical")
    b2 = ticket(desk, "TKT-102", assignee="bob", due=timedelta(days=3, hours=2))
    b3 = ticket(desk, "TKT-103", assignee="bob", due=timedelta(days=2))
    ticket(desk, "TKT-104", assignee="bob", due=timedelta(days=9), status="resolved")
    ticket(desk, "TKT-105", assignee="bob", due=timedelta(days=9), status="closed")
    ticket(desk, "TKT-106", assignee="bob", due=-timedelta(hours=1))  # due in an hour
    ticket(desk, "TKT-107", assignee="bob", due=None)
    c1 = ticket(desk, "TKT-201", assignee="carol", due=timedelta(minutes=30),
                title="Printer <b>jam</b>")

    report = overdue_scan(settings_for(desk["url"], smtp_sink), now=NOW)

    assert report.exit_code == 0
    assert (report.overdue_tickets, report.digests_sent, report.tickets_alerted) == (4, 2, 4)
    assert len(smtp_sink.messages) == 2
    [to_bob] = smtp_sink.messages_to("bob@example.com")
    assert to_bob.subject == "Overdue Tickets: 3 tickets past due"
    assert to_bob.rcpt_tos == ["bob@example.com"]
    assert to_bob.message["X-ITSM-Event"] == "overdue"
    assert to_bob.message["Auto-Submitted"] == "auto-generated"
    assert to_bob.message["X-ITSM-Ticket"] is None  # several tickets: no single ticket
    assert to_bob.message["In-Reply-To"] is None
    text = text_of(to_bob)
    assert text.startswith("Hi Bob,")
    order = [text.index(number) for number in ("TKT-102", "TKT-103", "TKT-101")]
    assert order == sorted(order), "most overdue first"
    for expected in ("3 days overdue", "2 days overdue", "5 hours overdue", "[Critical]"):
        assert expected in text
    for absent in ("TKT-104", "TKT-105", "TKT-106", "TKT-107", "TKT-201"):
        assert absent not in text
    html = html_of(to_bob)
    for ticket_id in (b1, b2, b3):
        assert f'href="{SITE}/tickets/{ticket_id}/"' in html

    [to_carol] = smtp_sink.messages_to("carol@example.com")
    assert to_carol.subject == "Overdue Ticket: Printer <b>jam</b> (TKT-201)"
    assert to_carol.message["X-ITSM-Ticket"] == "TKT-201"
    thread = f"<itsm-notify.ticket-{c1}@example.com>"
    assert to_carol.message["In-Reply-To"] == thread
    assert to_carol.message["References"] == thread
    assert "30 minutes overdue" in text_of(to_carol)
    assert "Printer &lt;b&gt;jam&lt;/b&gt;" in html_of(to_carol)
    assert "<b>jam</b>" not in html_of(to_carol)

    assert alerts(desk["engine"]) == {(b1, "bob@example.com"), (b2, "bob@example.com"),
                                      (b3, "bob@example.com"), (c1, "carol@example.com")}
    # A digest is an event like any other: its delivery rows, its delivery log lines.
    with desk["engine"].connect() as conn:
        digests = conn.execute(sa.select(schema.outbox.c.id, schema.outbox.c.state)
                               .where(schema.outbox.c.event_type == "overdue")).all()
        rows = conn.execute(sa.select(schema.deliveries.c.recipient,
                                      schema.deliveries.c.state)).all()
    assert [state for _, state in digests] == ["done", "done"]
    assert sorted(rows) == [("bob@example.com", "sent"), ("carol@example.com", "sent")]
    log = (Path.cwd() / "logs" / "email.log").read_text()
    assert f"event={digests[0][0]} channel=email recipient=bob@example.com outcome=sent" in log


def test_unassigned_and_unreachable_assignees_go_to_admins(desk: dict[str, Any],
                                                           smtp_sink: SmtpSink) -> None:
    ticket(desk, "TKT-301", assignee=None, due=timedelta(days=1))
    ticket(desk, "TKT-302", assignee="gina", due=timedelta(days=2))  # inactive
    ticket(desk, "TKT-303", assignee="hank", due=timedelta(hours=3))  # no address
    ticket(desk, "TKT-304", assignee="bob", due=timedelta(hours=1))
    settings = settings_for(desk["url"], smtp_sink,
                            admins="Ops Team <ops@example.com>, sec@example.com")

    report = overdue_scan(settings, now=NOW)

    assert report.digests_sent == 3
    assert sorted(r for m in smtp_sink.messages for r in m.rcpt_tos) == [
        "bob@example.com", "ops@example.com", "sec@example.com"]
    for admin in ("ops@example.com", "sec@example.com"):
        [message] = smtp_sink.messages_to(admin)
        assert message.rcpt_tos == [admin]  # each admin its own message
        assert message.subject == "Overdue Tickets: 3 tickets past due"
        text = text_of(message)
        assert [n for n in ("TKT-302", "TKT-301", "TKT-303") if n in text] == \
            ["TKT-302", "TKT-301", "TKT-303"]
        assert "TKT-304" not in text
    assert text_of(smtp_sink.messages_to("ops@example.com")[0]).startswith("Hi Ops Team,")
    assert smtp_sink.messages_to("bob@example.com")[0].subject == \
        "Overdue Ticket: Title of TKT-304 (TKT-304)"


def test_admin_with_an_account_is_that_user(desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    engine = desk["engine"]
    ticket(desk, "TKT-321", assignee=None, due=timedelta(days=1))
    add_user(engine, "dora", "Dora.Admin@example.com", first_name="Dora")
    quiet = add_user(engine, "quiet", "quiet@example.com", first_name="Quinn")
    set_preference(engine, quiet, "overdue", "email", False)
    settings = settings_for(desk["url"], smtp_sink, secret_key="s3cret-key",
                            admins="Ops <dora.admin@example.com>, quiet@example.com")

    report = overdue_scan(settings, now=NOW)

    assert (report.digests_sent, report.opted_out) == (1, 1)
    [message] = smtp_sink.messages
    assert message.rcpt_tos == ["Dora.Admin@example.com"]
    assert text_of(message).startswith("Hi Dora,")
    assert message.message["List-Unsubscribe"].startswith(
        f"<{SITE}/notifications/unsubscribe/")


def test_unsubscribe_link_turns_overdue_email_off(desk: dict[str, Any],
                                                 smtp_sink: SmtpSink) -> None:
    from itsm_notify.ops.unsubscribe import apply_token

    ticket(desk, "TKT-331", assignee="bob", due=timedelta(days=1))
    settings = settings_for(desk["url"], smtp_sink, secret_key="s3cret-key")
    assert overdue_scan(settings, now=NOW).digests_sent == 1
    header = smtp_sink.messages[0].message["List-Unsubscribe"]
    assert smtp_sink.messages[0].message["List-Unsubscribe-Post"] == \
        "List-Unsubscribe=One-Click"
    token = header.strip("<>").rstrip("/").rsplit("/", 1)[1]
    assert apply_token(desk["engine"], "s3cret-key", token) == (desk["bob"], "overdue")

    report = overdue_scan(settings, now=NOW + timedelta(days=2))
    assert (report.digests, report.opted_out) == (0, 1)
    assert len(smtp_sink.messages) == 1


def test_unassigned_without_admins_is_counted_not_sent(desk: dict[str, Any],
                                                       smtp_sink: SmtpSink) -> None:
    ticket(desk, "TKT-311", assignee=None, due=timedelta(days=1))
    report = overdue_scan(settings_for(desk["url"], smtp_sink), now=NOW)
    assert (report.unrouted, report.digests, len(smtp_sink.messages)) == (1, 0, 0)


# ------------------------------------------------------------ the re-alert window


def test_realert_window_and_new_tickets(desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    settings = settings_for(desk["url"], smtp_sink)  # default window: 24 h
    first = ticket(desk, "TKT-401", assignee="bob", due=timedelta(hours=2))

    assert overdue_scan(settings, now=NOW).digests_sent == 1
    again = overdue_scan(settings, now=NOW + timedelta(hours=1))
    assert (again.digests_sent, again.within_window) == (0, 1)
    assert len(smtp_sink.messages) == 1

    # A ticket that falls overdue later gets its own digest; the first is not repeated.
    ticket(desk, "TKT-402", assignee="bob", due=-timedelta(hours=1, minutes=30))
    later = overdue_scan(settings, now=NOW + timedelta(hours=2))
    assert (later.digests_sent, later.within_window) == (1, 1)
    assert smtp_sink.messages[-1].subject == "Overdue Ticket: Title of TKT-402 (TKT-402)"

    # 24 h after the first alert, only the first is due again ...
    day_later = overdue_scan(settings, now=NOW + timedelta(hours=24))
    assert (day_later.digests_sent, day_later.within_window) == (1, 1)
    assert smtp_sink.messages[-1].subject == "Overdue Ticket: Title of TKT-401 (TKT-401)"
    # ... and once the windows of both have passed, one digest holds both.
    both = overdue_scan(settings, now=NOW + timedelta(hours=48))
    assert both.digests_sent == 1
    assert smtp_sink.messages[-1].subject == "Overdue Tickets: 2 tickets past due"
    assert len(smtp_sink.messages) == 4
    with desk["engine"].connect() as conn:
        alerted_at = conn.execute(sa.select(schema.overdue_alerts.c.alerted_at).where(
            schema.overdue_alerts.c.ticket_id == first)).scalar_one()
    assert alerted_at == NOW + timedelta(hours=48)


def test_moved_due_date_rearms_the_alert(desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    settings = settings_for(desk["url"], smtp_sink)
    moved = ticket(desk, "TKT-501", assignee="bob", due=timedelta(hours=2))
    ticket(desk, "TKT-502", assignee="carol", due=timedelta(hours=2))
    assert overdue_scan(settings, now=NOW).digests_sent == 2

    def set_due(due_at: datetime) -> None:
        with desk["engine"].begin() as conn:
            conn.execute(sa.update(schema.tickets).where(schema.tickets.c.id == moved)
                         .values(due_at=due_at))

    set_due(NOW + timedelta(hours=3))  # pushed back: not overdue for now
    assert overdue_scan(settings, now=NOW + timedelta(hours=1)).digests_sent == 0
    # Overdue again at the new date, well within 24 h of the first alert: alerted afresh,
    # while carol's ticket (same due date) stays quiet.
    rearmed = overdue_scan(settings, now=NOW + timedelta(hours=4))
    assert (rearmed.digests_sent, rearmed.within_window) == (1, 1)
    assert smtp_sink.messages[-1].rcpt_tos == ["bob@example.com"]
    assert "1 hour overdue" in text_of(smtp_sink.messages[-1])
    assert overdue_scan(settings, now=NOW + timedelta(hours=5)).digests_sent == 0
    assert len(smtp_sink.messages) == 3


def test_closing_a_ticket_stops_its_alerts(desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    settings = settings_for(desk["url"], smtp_sink)
    closing = ticket(desk, "TKT-511", assignee="bob", due=timedelta(hours=2))
    assert overdue_scan(settings, now=NOW).digests_sent == 1
    with desk["engine"].begin() as conn:
        conn.execute(sa.update(schema.tickets).where(schema.tickets.c.id == closing)
                     .values(status="resolved"))
    report = overdue_scan(settings, now=NOW + timedelta(days=2))
    assert (report.overdue_tickets, report.digests) == (0, 0)
    assert len(smtp_sink.messages) == 1


# ------------------------------------------------ suppression, preferences, faults


def test_suppressed_and_opted_out_recipients_get_nothing(desk: dict[str, Any],
                                                         smtp_sink: SmtpSink) -> None:
    engine = desk["engine"]
    ticket(desk, "TKT-601", assignee="bob", due=timedelta(days=1))
    ticket(desk, "TKT-602", assignee="carol", due=timedelta(days=1))
    dave = add_user(engine, "dave", first_name="Dave")
    add_ticket(engine, "TKT-603", "Dave's", desk["alice"], assignee_id=dave,
               due_at=NOW - timedelta(days=1))
    add_suppression(engine, "Bob@Example.com", "bounced", NOW)
    set_preference(engine, dave, "overdue", "email", False)
    set_preference(engine, desk["carol"], "ticket_created", "email", False)  # not overdue
    settings = settings_for(desk["url"], smtp_sink, admins="ops@example.com")

    report = overdue_scan(settings, now=NOW)

    assert [m.rcpt_tos for m in smtp_sink.messages] == [["carol@example.com"]]
    assert (report.digests_sent, report.digests_suppressed, report.opted_out) == (1, 1, 1)
    assert report.exit_code == 0
    # An alert is remembered when its digest is written; bob's digest has its delivery
    # row, suppressed (status and the delivery log show it).
    assert {r for _, r in alerts(engine)} == {"bob@example.com", "carol@example.com"}


def test_a_deferred_digest_is_retried_by_send_pending_not_sent_again_by_the_next_scan(
        sqlite_url: str, smtp_sink: SmtpSink) -> None:
    """Digests take the one delivery path: a 4xx is retried with backoff and the same
    Message-ID; a 5xx fails that digest and suppresses the address, once (it is not sent
    again by every scan)."""
    desk = {"engine": create_schema(sqlite_url), "url": sqlite_url}
    engine = desk["engine"]
    desk["alice"] = add_user(engine, "alice")
    desk["bob"] = add_user(engine, "bob", first_name="Bob")
    desk["carol"] = add_user(engine, "carol", first_name="Carol")
    bobs = ticket(desk, "TKT-701", assignee="bob", due=timedelta(days=1))
    carols = ticket(desk, "TKT-702", assignee="carol", due=timedelta(days=1))
    settings = settings_for(sqlite_url, smtp_sink)
    smtp_sink.refuse("bob@example.com", 451, "4.7.1 try again later", times=1)
    smtp_sink.refuse("carol@example.com", 550, "5.1.1 no such user")

    first = overdue_scan(settings, now=NOW)

    assert (first.digests_sent, first.digests_deferred, first.digests_failed) == (0, 1, 1)
    assert first.exit_code == 1
    assert alerts(engine) == {(bobs, "bob@example.com"), (carols, "carol@example.com")}
    with engine.connect() as conn:  # a 5xx refusal suppresses the address
        assert conn.execute(sa.select(schema.suppressions.c.address)).scalars().all() == \
            ["carol@example.com"]
        states = dict(conn.execute(sa.select(schema.deliveries.c.recipient,
                                             schema.deliveries.c.state)).all())
    assert states == {"bob@example.com": "deferred", "carol@example.com": "failed"}
    second = overdue_scan(settings, now=NOW + timedelta(hours=1))
    assert second.digests == 0  # within the re-alert window: no digest written again
    assert smtp_sink.messages == []

    retry = send_pending(settings, clock=lambda: NOW + timedelta(hours=2))
    assert retry.emails_sent == 1
    [message] = smtp_sink.messages
    assert message.rcpt_tos == ["bob@example.com"]
    with engine.connect() as conn:
        planned = conn.execute(sa.select(schema.deliveries.c.message_id).where(
            schema.deliveries.c.recipient == "bob@example.com")).scalar_one()
    assert message.message["Message-ID"] == planned  # the same Message-ID on the retry
    assert overdue_scan(settings, now=NOW + timedelta(hours=3)).digests == 0


def test_digests_count_against_the_hourly_rate_ceiling(desk: dict[str, Any],
                                                       smtp_sink: SmtpSink) -> None:
    ticket(desk, "TKT-301", assignee="bob", due=timedelta(hours=2))
    ticket(desk, "TKT-302", assignee="carol", due=timedelta(hours=2))
    settings = settings_for(desk["url"], smtp_sink, rate_per_hour=1)
    first = overdue_scan(settings, engine=desk["engine"], now=NOW)
    assert (first.digests_sent, first.digests_deferred) == (1, 1)
    # Half an hour later the hour's one email is the digest already sent: nothing goes.
    again = send_pending(settings, engine=desk["engine"],
                         clock=lambda: NOW + timedelta(minutes=30))
    assert again.emails_sent == 0
    assert len(smtp_sink.messages) == 1
    later = send_pending(settings, engine=desk["engine"], clock=lambda: NOW + timedelta(hours=2))
    assert later.emails_sent == 1
    assert len(smtp_sink.messages) == 2


def test_debug_redirect(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    desk = {"engine": create_schema(sqlite_url), "url": sqlite_url}
    desk["alice"] = add_user(desk["engine"], "alice")
    desk["bob"] = add_user(desk["engine"], "bob", first_name="Bob", last_name="Okafor")
    ticket(desk, "TKT-801", assignee="bob", due=timedelta(days=1))
    settings = settings_for(sqlite_url, smtp_sink, debug=True,
                            development_email="dev@example.com")
    assert overdue_scan(settings, now=NOW).digests_sent == 1
    [message] = smtp_sink.messages
    assert message.rcpt_tos == ["dev@example.com"]
    assert message.to == "dev@example.com"
    assert message.message["X-Original-To"] == "Bob Okafor <bob@example.com>"
    assert alerts(desk["engine"]) == {(1, "bob@example.com")}


def test_long_digest_lists_the_most_overdue_and_counts_the_rest(
        sqlite_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scans, "MAX_LISTED", 2)
    desk = {"engine": create_schema(sqlite_url), "url": sqlite_url}
    desk["alice"] = add_user(desk["engine"], "alice")
    desk["bob"] = add_user(desk["engine"], "bob")
    for days in (1, 2, 3):
        ticket(desk, f"TKT-90{days}", assignee="bob", due=timedelta(days=days))
    report = overdue_scan(settings_for(sqlite_url, smtp_sink), now=NOW)
    assert report.tickets_alerted == 3
    [message] = smtp_sink.messages
    assert message.subject == "Overdue Tickets: 3 tickets past due"
    text = text_of(message)
    assert "TKT-903" in text and "TKT-902" in text and "TKT-901" not in text
    assert "and 1 more overdue ticket in" in text
    assert "and 1 more overdue ticket in" in html_of(message)


# ----------------------------------------------------------------- the command


def test_dry_run_changes_nothing(desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    ticket(desk, "TKT-1001", assignee="bob", due=timedelta(days=1))
    ticket(desk, "TKT-1002", assignee="bob", due=timedelta(days=2))
    ticket(desk, "TKT-1003", assignee=None, due=timedelta(days=2))
    # The CLI reads the real clock: these are overdue by then too (NOW is in the past).
    env = smtp_env(desk["url"], smtp_sink, ADMINS="ops@example.com")

    result = run_cli(["overdue-scan", "--dry-run"], env)

    assert result.exit_code == 0, result.output
    assert "bob@example.com tickets=2 'Overdue Tickets: 2 tickets past due'" in result.stdout
    assert "ops@example.com tickets=1 'Overdue Ticket: Title of TKT-1003 (TKT-1003)'" in \
        result.stdout
    assert "Nothing was changed" in result.stderr
    assert smtp_sink.messages == []
    assert alerts(desk["engine"]) == set()
    assert not (Path.cwd() / "logs").exists()


def test_command_sends_then_stays_quiet(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(sqlite_url)
    alice = add_user(engine, "alice")
    bob = add_user(engine, "bob")
    add_ticket(engine, "TKT-1101", "Overdue", alice, assignee_id=bob,
               due_at=helpdesk_now() - timedelta(hours=3))
    env = smtp_env(sqlite_url, smtp_sink)

    first = run_cli(["overdue-scan"], env)
    assert first.exit_code == 0, first.output
    assert [m.subject for m in smtp_sink.messages] == ["Overdue Ticket: Overdue (TKT-1101)"]
    second = run_cli(["overdue-scan"], env)
    assert second.exit_code == 0
    assert second.output == ""  # nothing to send: silent under cron
    assert len(smtp_sink.messages) == 1


def test_command_exits_1_when_the_server_is_down(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(sqlite_url)
    alice = add_user(engine, "alice")
    add_ticket(engine, "TKT-1201", "Overdue", alice, assignee_id=alice,
               due_at=helpdesk_now() - timedelta(hours=3))
    smtp_sink.stop()
    result = run_cli(["overdue-scan"], smtp_env(sqlite_url, smtp_sink))
    assert result.exit_code == 1
    # The digest waits in the outbox for send-pending, its alert remembered.
    assert len(alerts(engine)) == 1
    assert [row["state"] for row in outbox_rows(engine)] == ["pending"]


# ------------------------------------------------------------------ units


@pytest.mark.parametrize(("age", "expected"), [
    (timedelta(days=3, hours=5), "3 days overdue"),
    (timedelta(days=1), "1 day overdue"),
    (timedelta(hours=5, minutes=59), "5 hours overdue"),
    (timedelta(hours=1), "1 hour overdue"),
    (timedelta(minutes=2), "2 minutes overdue"),
    (timedelta(seconds=20), "just overdue"),
])
def test_overdue_for(age: timedelta, expected: str) -> None:
    assert Languages().get().overdue_for(NOW - age, NOW) == expected


def test_query_walks_the_due_date_index(sqlite_url: str) -> None:
    engine = create_schema(sqlite_url)
    source = load_source(load_settings({"database_url": sqlite_url}, environ={},
                                       dotenv_path=None))
    query = source.due_query(NOW, ("resolved", "closed"), past=True)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {sql}"))
    assert "ix_tickets_due_status" in plan
    # The index gives the due-date order: at most ties are sorted (by id), never the whole.
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan
