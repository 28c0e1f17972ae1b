"""Summaries instead of one email per change, on SQLite, PostgreSQL and MariaDB, through
the real SMTP test server with the clock pinned: emails held for users on hourly or
daily, one summary when the window closes (grouped by ticket, newest first, internal
comments never), critical tickets at once, a held delivery never sent on its own, a
user changing frequency mid-window, and the preference command."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from contract_app import (
    add_ticket,
    cli_env,
    create_schema,
    run_cli,
    seed_helpdesk,
    set_preference,
    smtp_env,
)
from itsm_notify.config import Settings, load_settings
from itsm_notify.engine.schedules import set_frequency
from itsm_notify.engine.sender import send_pending
from itsm_notify.engine.summaries import send_summaries
from itsm_notify.errors import EventError
from itsm_notify.events.types import parse_payload
from itsm_notify.storage import schema
from itsm_notify.storage.deliveries import purge_finished
from itsm_notify.timing.windows import Frequency
from smtp_server import ReceivedMessage, SmtpSink

SITE = "https://helpdesk.example.com"
MONDAY = datetime(2026, 6, 1, 9)  # 11:00 in Berlin (CEST)
M = timedelta(minutes=1)


def settings_for(url: str, sink: SmtpSink, **overrides: Any) -> Settings:
    values = {"database_url": url, "email_backend": "smtp", "email_host": sink.host,
              "email_port": sink.port, "email_timeout": 10, "site_url": SITE,
              "default_from_email": "Help Desk <helpdesk@example.com>",
              "time_zone": "Europe/Berlin", "smtp_connections": 1, **overrides}
    return load_settings(values, environ={}, dotenv_path=None)


def event(engine: sa.Engine, event_type: str, ticket_id: int, actor_id: int | None,
          at: datetime, **payload: Any) -> int:
    """An outbox row written at ``at`` (the app's clock)."""
    with engine.begin() as conn:
        return int(conn.execute(sa.insert(schema.outbox).values(
            event_type=event_type, ticket_id=ticket_id, actor_id=actor_id,
            payload=json.dumps(payload), created_at=at, available_at=at)
        ).inserted_primary_key[0])


def text_of(message: ReceivedMessage) -> str:
    part = message.message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def bob_deliveries(engine: sa.Engine, bob: str = "bob@example.com") -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(schema.deliveries.c.event_id,
                                           schema.deliveries.c.state)
                                 .where(schema.deliveries.c.recipient == bob)).all())


def rows(engine: sa.Engine, table: sa.Table) -> list[Mapping[str, Any]]:
    with engine.connect() as conn:
        return [row._mapping for row in conn.execute(sa.select(table).order_by(table.c.id))]


def test_a_daily_summary_grouped_by_ticket_newest_first(database_url: str,
                                                         smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    bob = ids["bob"]
    printer = add_ticket(engine, "TKT-003", "Printer offline", ids["alice"], assignee_id=bob)
    outage = add_ticket(engine, "TKT-004", "Mail is down", ids["alice"], assignee_id=bob,
                        priority="critical")
    set_frequency(engine, bob, Frequency.DAILY, daily_hour=8, now=MONDAY)
    settings = settings_for(database_url, smtp_sink)
    assigned = event(engine, "ticket_assigned", ids["vpn"], ids["alice"], MONDAY,
                     assignee_id=bob)
    commented = event(engine, "comment_added", ids["vpn"], ids["erin"], MONDAY + 10 * M,
                      comment_id=ids["c_erin"])
    internal = event(engine, "comment_added", ids["vpn"], ids["frank"], MONDAY + 20 * M,
                     comment_id=ids["c_frank_internal"])
    status = event(engine, "status_changed", printer, ids["alice"], MONDAY + 30 * M,
                   old_status="open", new_status="waiting")
    critical = event(engine, "ticket_created", outage, ids["alice"], MONDAY + 40 * M)
    smtp_sink.refuse("alice@example.com", 451, "try later", times=1)

    first = send_pending(settings, clock=lambda: MONDAY + 45 * M)

    assert first.emails_held == 3
    # bob: only the critical ticket now, the rest waits; alice's 451 is retried later
    assert [(m.rcpt_tos[0], m.subject) for m in smtp_sink.messages] == [
        ("bob@example.com", "New Ticket: Mail is down (TKT-004)")]
    assert bob_deliveries(engine) == {assigned: "held", commented: "held", status: "held",
                                      critical: "sent"}
    items = rows(engine, schema.summary_items)
    assert [(i["event_id"], i["user_id"], i["summary_id"]) for i in items] == [
        (assigned, bob, None), (commented, bob, None), (status, bob, None)]
    assert internal not in {i["event_id"] for i in items}
    # in-app rows are not held: the internal note reached bob's in-app list at once
    with engine.connect() as conn:
        in_app = set(conn.execute(sa.select(schema.app_notifications.c.event_type).where(
            schema.app_notifications.c.user_id == bob)).scalars())
    assert in_app == {"ticket_assigned", "comment_added", "status_changed", "ticket_created"}

    # The retry of the comment's event mails alice, never bob: a held delivery is final.
    smtp_sink.clear()
    retry = send_pending(settings, clock=lambda: MONDAY + 5 * 60 * M)
    assert [(m.rcpt_tos[0]) for m in smtp_sink.messages] == ["alice@example.com"]
    assert retry.emails_held == 0 and bob_deliveries(engine)[commented] == "held"
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(schema.outbox.c.state)).scalars()) == {"done"}

    # Bob's day runs from 08:00 to 08:00 in Berlin: nothing at 07:59, one summary at 08:00.
    smtp_sink.clear()
    tomorrow_eight = datetime(2026, 6, 2, 6)
    assert send_summaries(settings, now=tomorrow_eight - M).summaries_made == 0
    report = send_summaries(settings, now=tomorrow_eight)
    assert (report.summaries_made, report.items_summarized, report.exit_code) == (1, 3, 0)
    [summary] = smtp_sink.messages
    assert summary.rcpt_tos == ["bob@example.com"]
    assert summary.subject == "Daily summary: 3 updates on 2 tickets"
    assert summary.message["X-ITSM-Event"] == "summary"
    assert summary.message["X-ITSM-Ticket"] is None
    text = text_of(summary)
    assert text.startswith("Hi Bob,")
    # the ticket with the newest update first, and its updates newest first
    order = [text.index(s) for s in ("TKT-003", "waiting", "TKT-001", "Same here since 9am",
                                     "was assigned")]
    assert order == sorted(order), text
    assert "SECRET-NOTE" not in text and "internal" not in text
    assert "SECRET-NOTE" not in "".join(text_of(m) for m in smtp_sink.messages)
    [made] = rows(engine, schema.summaries)
    assert made["window_key"] == "daily:20260601T060000Z/20260602T060000Z"
    assert made["item_count"] == 3
    assert {i["summary_id"] for i in rows(engine, schema.summary_items)} == {made["id"]}

    # Nothing more to send; the metrics count the held deliveries as the database does.
    smtp_sink.clear()
    assert send_summaries(settings, now=tomorrow_eight + 60 * M).summaries_made == 0
    assert send_pending(settings, clock=lambda: tomorrow_eight + 61 * M).emails_sent == 0
    assert smtp_sink.messages == []
    exposition = run_cli(["metrics"], cli_env(database_url))
    assert exposition.exit_code == 0, exposition.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(exposition.stdout)
               for s in family.samples}
    assert samples[("itsm_notify_deliveries_total",
                    (("channel", "email"), ("outcome", "held")))] == 3
    with engine.connect() as conn:
        sent = conn.execute(sa.select(sa.func.count()).select_from(schema.deliveries).where(
            schema.deliveries.c.channel == "email",
            schema.deliveries.c.state == "sent")).scalar_one()
    assert samples[("itsm_notify_deliveries_total",
                    (("channel", "email"), ("outcome", "sent")))] == sent

    # purge takes the summarized items and the summaries with the events they came from
    purge_finished(engine, timedelta(days=30), now=tomorrow_eight + timedelta(days=31))
    assert rows(engine, schema.summary_items) == rows(engine, schema.summaries) == []


def test_a_user_changing_frequency_mid_window(database_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    bob, vpn = ids["bob"], ids["vpn"]
    settings = settings_for(database_url, smtp_sink)

    def status(at: datetime, new: str) -> None:
        event(engine, "status_changed", vpn, ids["alice"], at, new_status=new)
        send_pending(settings, clock=lambda: at)

    def to_bob() -> list[str]:
        subjects = [m.subject or "" for m in smtp_sink.messages_to("bob@example.com")]
        smtp_sink.clear()
        return subjects

    set_frequency(engine, bob, Frequency.DAILY, now=MONDAY)
    status(MONDAY, "waiting")                     # held for the daily summary
    set_frequency(engine, bob, Frequency.HOURLY, now=MONDAY + 30 * M)
    status(MONDAY + 40 * M, "in_progress")       # held for the hourly one
    assert to_bob() == []
    # The hourly window 09:00-10:00 closes: one summary of both, the daily one's too.
    assert send_summaries(settings, now=MONDAY + 59 * M).summaries_made == 0
    assert send_summaries(settings, now=MONDAY + 60 * M).items_summarized == 2
    assert to_bob() == ["Hourly summary: 2 updates on 1 ticket"]

    status(MONDAY + 80 * M, "testing")           # held (hourly)
    set_frequency(engine, bob, Frequency.IMMEDIATE, now=MONDAY + 90 * M)
    status(MONDAY + 95 * M, "resolved")          # immediate again: sent at once
    assert to_bob() == ["Ticket Status Changed: VPN drops every 10 minutes → resolved"]
    # What was collected goes out at the next run, without waiting for a window.
    assert send_summaries(settings, now=MONDAY + 96 * M).items_summarized == 1
    assert to_bob() == ["Summary: 1 update on 1 ticket"]
    assert send_summaries(settings, now=MONDAY + 200 * M).summaries_made == 0
    newest_item = rows(engine, schema.summary_items)[-1]["id"]
    assert [row["window_key"] for row in rows(engine, schema.summaries)] == [
        "hourly:20260601T090000Z/20260601T100000Z", f"flush:{newest_item}"]


def test_the_preference_command(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    bob = str(ids["bob"])
    env = smtp_env(sqlite_url, smtp_sink)

    daily = run_cli(["preference", "frequency", bob, "Daily", "--hour", "7",
                     "--time-zone", "Europe/Berlin"], env)
    assert daily.exit_code == 0, daily.stderr
    assert daily.stderr.strip() == f"User {bob} now gets one summary a day at 07:00 " \
                                   "(Europe/Berlin)."
    [row] = rows_by_user(engine)
    assert (row["frequency"], row["daily_hour"], row["time_zone"]) == \
        ("daily", 7, "Europe/Berlin")

    event(engine, "status_changed", ids["vpn"], ids["alice"], MONDAY, new_status="waiting")
    assert run_cli(["send-pending"], env).exit_code == 0
    assert smtp_sink.messages_to("bob@example.com") == []
    back = run_cli(["preference", "frequency", bob, "immediate"], env)
    assert back.stderr.strip() == (f"User {bob} now gets every email at once; the update "
                                   "collected so far goes out with the next send-summaries run.")
    assert run_cli(["send-summaries"], env).exit_code == 0
    assert [m.subject for m in smtp_sink.messages_to("bob@example.com")] == [
        "Summary: 1 update on 1 ticket"]

    for args, words in [([bob, "weekly"], "The delivery frequency 'weekly' is not one of"),
                        (["999", "daily"], "There is no user with id 999"),
                        ([bob, "daily", "--time-zone", "Mars/Olympus"],
                         "--time-zone names an unknown time zone 'Mars/Olympus'")]:
        refused = run_cli(["preference", "frequency", *args], env)
        assert refused.exit_code == 2, args
        assert words in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert run_cli(["preference", "frequency", bob, "daily", "--hour", "24"], env
                   ).exit_code == 2


def test_a_user_who_unsubscribed_from_summaries_gets_each_email_at_once(
        sqlite_url: str, smtp_sink: SmtpSink) -> None:
    """The summary's unsubscribe link turns summary emails off: holding the user's emails
    then would lose them, so they go out one by one again."""
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    set_frequency(engine, ids["bob"], Frequency.DAILY, now=MONDAY)
    set_preference(engine, ids["bob"], "summary", "email", False)
    event(engine, "status_changed", ids["vpn"], ids["alice"], MONDAY, new_status="waiting")
    report = send_pending(settings_for(sqlite_url, smtp_sink), clock=lambda: MONDAY)
    assert report.emails_held == 0
    assert [m.subject for m in smtp_sink.messages_to("bob@example.com")] == [
        "Ticket Status Changed: VPN drops every 10 minutes → waiting"]


def rows_by_user(engine: sa.Engine) -> list[Mapping[str, Any]]:
    with engine.connect() as conn:
        return [row._mapping for row in conn.execute(sa.select(schema.schedules))]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
ids = st.integers(-5, 2**64) | json_values
item = st.fixed_dictionaries({}, optional={
    "ticket_id": ids, "event_type": json_values, "text": json_values,
    "at": st.datetimes().map(datetime.isoformat) | st.text() | json_values}) | json_values
hostile_payload = st.fixed_dictionaries({}, optional={
    "recipient": st.fixed_dictionaries({}, optional={"user_id": ids, "address": json_values,
                                                    "name": json_values}) | json_values,
    "kind": st.sampled_from(["hourly", "daily", "flush", "weekly"]) | json_values,
    "items": st.lists(item, max_size=4) | json_values,
    "ticket_ids": st.lists(ids, max_size=4) | json_values,
    "thresholds": st.lists(st.text() | json_values, max_size=4) | json_values,
    "total": ids})


@settings(max_examples=300, deadline=None)
@given(hostile_payload)
def test_a_hostile_summary_or_warning_payload_is_one_error(payload: dict[str, Any]) -> None:
    """The app can write any outbox row: a summary's or a warning's payload is read or
    refused with an EventError (the event fails alone), never anything else."""
    for kind in ("summary", "due_soon"):
        try:
            parsed = parse_payload(kind, json.dumps(payload))
        except EventError:
            continue
        listed = parsed["items"] if kind == "summary" else parsed["ticket_ids"]
        assert 0 < len(listed) <= parsed["total"]
