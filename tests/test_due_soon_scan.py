"""due-soon-scan against a real SMTP server on SQLite, PostgreSQL and MariaDB, with the
clock pinned: warnings in and outside business hours, across the spring change of the
clocks, grouped per recipient, routed to the assignee, the team or ADMINS, once per
(ticket, threshold, due date), and re-armed when the due date moves."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from contract_app import (
    add_project,
    add_user,
    create_schema,
    run_cli,
    set_preference,
    smtp_env,
    utcnow,
)
from itsm_notify.config import Settings, load_settings
from itsm_notify.engine.due_soon import due_soon_scan
from itsm_notify.errors import ConfigError
from itsm_notify.storage import schema
from smtp_server import ReceivedMessage, SmtpSink

SITE = "https://helpdesk.example.com"
H = timedelta(hours=1)
# Berlin's clocks go forward on Sunday 29 March 2026 (CET, UTC+1 -> CEST, UTC+2).
CREATED = datetime(2026, 3, 26, 7)         # Thursday 08:00 CET
FRIDAY_EVENING = datetime(2026, 3, 27, 17)  # 18:00 CET: closed
MONDAY_OPENING = datetime(2026, 3, 30, 6)   # 08:00 CEST: open (a week earlier, 07:00 CET)


def settings_for(url: str, sink: SmtpSink, **overrides: Any) -> Settings:
    values = {"database_url": url, "email_backend": "smtp", "email_host": sink.host,
              "email_port": sink.port, "email_timeout": 10, "site_url": SITE,
              "default_from_email": "Help Desk <helpdesk@example.com>",
              "admins": "Ops <ops@example.com>", "due_soon": "4h, 50%",
              "business_hours": "mon-fri 08:00-17:00", "business_time_zone": "Europe/Berlin",
              **overrides}
    return load_settings(values, environ={}, dotenv_path=None)


def add_ticket(engine: sa.Engine, number: str, requester: int, *, due_at: datetime,
               assignee: int | None = None, project: int | None = None,
               priority: str = "medium", created_at: datetime = CREATED) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.insert(schema.tickets).values(
            number=number, title=f"Title of {number}", requester_id=requester,
            assignee_id=assignee, project_id=project, priority=priority, status="open",
            due_at=due_at, created_at=created_at)).inserted_primary_key[0])


def move_due(engine: sa.Engine, ticket_id: int, due_at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(schema.tickets).where(schema.tickets.c.id == ticket_id)
                     .values(due_at=due_at))


def text_of(message: ReceivedMessage) -> str:
    part = message.message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def received(sink: SmtpSink) -> list[tuple[str, str]]:
    return sorted((m.rcpt_tos[0], m.subject or "") for m in sink.messages)


def claims(engine: sa.Engine) -> set[tuple[int, str, datetime]]:
    with engine.connect() as conn:
        return {(r.ticket_id, r.threshold, r.due_at) for r in conn.execute(
            sa.select(schema.due_soon_warnings))}


@pytest.fixture
def desk(database_url: str) -> dict[str, Any]:
    engine = create_schema(database_url)
    ids: dict[str, Any] = {"engine": engine, "url": database_url}
    for name in ("alice", "bob", "carol", "dave", "erin"):
        ids[name] = add_user(engine, name, first_name=name.title())
    ids["network"] = add_project(engine, "Network", members=(ids["dave"], ids["erin"]))
    return ids


def test_warnings_in_business_hours_across_the_change_of_the_clocks(
        desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    engine, alice = desk["engine"], desk["alice"]
    # Working time from Thursday 08:00 CET: 9 h a day, Monday's in CEST.
    # T1 due Monday 12:00 CEST (22 h): 50 % crossed Friday 10:00 CET, 4h Monday 08:00 CEST.
    t1 = add_ticket(engine, "TKT-1", alice, assignee=desk["bob"],
                    due_at=datetime(2026, 3, 30, 10))
    # T2 critical, due Sunday evening (18 h): both crossed on Friday, in working time.
    t2 = add_ticket(engine, "TKT-2", alice, assignee=desk["carol"], priority="critical",
                    due_at=datetime(2026, 3, 29, 20))
    # T3 unassigned in a project: its team is told. T4 unassigned, no project: ADMINS.
    t3 = add_ticket(engine, "TKT-3", alice, project=desk["network"],
                    due_at=datetime(2026, 3, 30, 10))
    t4 = add_ticket(engine, "TKT-4", alice, due_at=datetime(2026, 3, 30, 10))
    # T5 due Tuesday 17:00 CEST (36 h): 50 % crossed on Monday at 08:00 CEST.
    t5 = add_ticket(engine, "TKT-5", alice, assignee=desk["bob"], priority="low",
                    due_at=datetime(2026, 3, 31, 15))
    add_ticket(engine, "TKT-6", alice, assignee=desk["bob"], due_at=datetime(2026, 4, 20, 10))
    settings = settings_for(desk["url"], smtp_sink)

    # Friday evening, closed: only the critical ticket is warned of, at once.
    friday = due_soon_scan(settings, engine=engine, now=FRIDAY_EVENING)
    assert friday.exit_code == 0
    assert received(smtp_sink) == [("carol@example.com", "Due Soon: Title of TKT-2 (TKT-2)")]
    assert friday.waiting_for_hours == 3  # T1, T3 and T4 crossed 50 % in working time
    carol = text_of(smtp_sink.messages[0])
    assert carol.startswith("Hi Carol,") and "due in 2 days" in carol

    # Monday 07:59 CEST is still closed; 08:00 CEST opens (06:00 UTC, after the change).
    smtp_sink.clear()
    assert due_soon_scan(settings, engine=engine, now=MONDAY_OPENING - timedelta(minutes=1)
                         ).warnings_queued == 0
    monday = due_soon_scan(settings, engine=engine, now=MONDAY_OPENING)
    assert monday.exit_code == 0
    assert received(smtp_sink) == [
        ("bob@example.com", "Due Soon: 2 tickets"),
        ("dave@example.com", "Due Soon: Title of TKT-3 (TKT-3)"),
        ("erin@example.com", "Due Soon: Title of TKT-3 (TKT-3)"),
        ("ops@example.com", "Due Soon: Title of TKT-4 (TKT-4)")]
    [to_bob] = smtp_sink.messages_to("bob@example.com")
    bob = text_of(to_bob)
    assert bob.index("TKT-1") < bob.index("TKT-5"), "soonest due first"
    assert "due in 4 hours" in bob and "due in 1 day" in bob
    assert "TKT-6" not in bob
    assert to_bob.message["X-ITSM-Event"] == "due_soon"
    # T2's warnings are forgotten: its due date has passed, they can never recur
    assert t2 not in {ticket for ticket, _, _ in claims(engine)}
    assert claims(engine) == {
        (t1, "50%", datetime(2026, 3, 30, 10)), (t1, "4h", datetime(2026, 3, 30, 10)),
        (t3, "50%", datetime(2026, 3, 30, 10)), (t3, "4h", datetime(2026, 3, 30, 10)),
        (t4, "50%", datetime(2026, 3, 30, 10)), (t4, "4h", datetime(2026, 3, 30, 10)),
        (t5, "50%", datetime(2026, 3, 31, 15))}

    # Five minutes later: nothing new. T2 is past due: overdue-scan's business now.
    smtp_sink.clear()
    again = due_soon_scan(settings, engine=engine, now=MONDAY_OPENING + timedelta(minutes=5))
    assert (again.warnings_queued, smtp_sink.messages) == (0, [])
    with engine.connect() as conn:
        states = conn.execute(sa.select(schema.outbox.c.state)
                              .where(schema.outbox.c.event_type == "due_soon")).scalars().all()
    assert states == ["done"] * 5


def test_a_due_date_moved_back_and_forth_rearms_the_warning(
        desk: dict[str, Any], smtp_sink: SmtpSink) -> None:
    """Round the clock (no business hours): the scans of timing's pure test, for real."""
    engine = desk["engine"]
    first, later = datetime(2026, 4, 15, 17), datetime(2026, 4, 16, 17)
    ticket = add_ticket(engine, "TKT-9", desk["alice"], assignee=desk["bob"], due_at=first,
                        created_at=datetime(2026, 4, 13, 8))
    settings = settings_for(desk["url"], smtp_sink, business_hours="", business_time_zone="")

    def scan(now: datetime) -> list[str]:
        smtp_sink.clear()
        due_soon_scan(settings, engine=engine, now=now)
        return [text_of(m).split("Title of TKT-9")[0].rsplit("\n", 1)[-1] for m in
                smtp_sink.messages]

    assert len(scan(datetime(2026, 4, 15, 14))) == 1  # 50 % and 4h at once: one email
    assert scan(datetime(2026, 4, 15, 14, 5)) == []
    move_due(engine, ticket, later)
    assert len(scan(datetime(2026, 4, 15, 14, 10))) == 1  # 50 % for the later date
    assert claims(engine) == {(ticket, "4h", first), (ticket, "50%", later)}
    move_due(engine, ticket, first)
    # 50 % re-armed (its last warning was for the later date); 4h was warned for this date
    assert len(scan(datetime(2026, 4, 15, 14, 15))) == 1
    assert claims(engine) == {(ticket, "4h", first), (ticket, "50%", first)}
    assert scan(datetime(2026, 4, 15, 14, 20)) == []
    # Once due, the warnings are forgotten with the date.
    assert scan(datetime(2026, 4, 15, 17, 1)) == []
    assert claims(engine) == set()


def test_opted_out_assignee_and_dry_run(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(sqlite_url)
    alice, bob, carol = (add_user(engine, n, first_name=n.title()) for n in
                         ("alice", "bob", "carol"))
    add_ticket(engine, "TKT-1", alice, assignee=bob, due_at=datetime(2026, 3, 30, 10))
    add_ticket(engine, "TKT-2", alice, assignee=carol, due_at=datetime(2026, 3, 30, 10))
    set_preference(engine, carol, "due_soon", "email", False)
    settings = settings_for(sqlite_url, smtp_sink)

    preview = due_soon_scan(settings, engine=engine, now=MONDAY_OPENING, dry_run=True)
    assert [(p.recipient, p.tickets, p.subject) for p in preview.planned] == [
        ("bob@example.com", 1, "Due Soon: Title of TKT-1 (TKT-1)")]
    assert (preview.opted_out, preview.warnings_queued) == (1, 1)
    assert claims(engine) == set() and smtp_sink.messages == []

    report = due_soon_scan(settings, engine=engine, now=MONDAY_OPENING)
    assert received(smtp_sink) == [("bob@example.com", "Due Soon: Title of TKT-1 (TKT-1)")]
    assert report.opted_out == 1  # carol chose quiet: not passed on to ADMINS


def test_the_command_and_its_settings(sqlite_url: str, smtp_sink: SmtpSink,
                                      tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    alice = add_user(engine, "alice")
    now = utcnow()  # the command reads the real clock: 90 % of 11 hours passed 6 min ago
    add_ticket(engine, "TKT-1", alice, assignee=alice, due_at=now + H,
               created_at=now - 10 * H)
    env = smtp_env(sqlite_url, smtp_sink, ITSM_DUE_SOON="90%")
    assert run_cli(["due-soon-scan"], env).exit_code == 0
    assert smtp_sink.wait_for(1) and smtp_sink.messages[0].subject == \
        "Due Soon: Title of TKT-1 (TKT-1)"
    quiet = run_cli(["due-soon-scan"], env)
    assert quiet.exit_code == 0 and quiet.stderr == ""

    unset = run_cli(["due-soon-scan"], smtp_env(sqlite_url, smtp_sink))
    assert unset.exit_code == 2 and "ITSM_DUE_SOON is not set" in unset.stderr
    for setting, value, named in [("ITSM_DUE_SOON", "4 hours", "ITSM_DUE_SOON has '4 hours'"),
                                  ("ITSM_BUSINESS_HOURS", "weekdays", "ITSM_BUSINESS_HOURS"),
                                  ("ITSM_HOLIDAYS", str(tmp_path / "none.txt"),
                                   "ITSM_HOLIDAYS")]:
        extra = {"ITSM_BUSINESS_HOURS": "mon-fri 08:00-17:00"} \
            if setting == "ITSM_HOLIDAYS" else {}
        result = run_cli(["due-soon-scan"], smtp_env(sqlite_url, smtp_sink,
                                                     **{setting: value, **extra}))
        assert result.exit_code == 2, setting
        assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_settings_refuse_a_day_of_working_time() -> None:
    with pytest.raises(ConfigError, match="ITSM_DUE_SOON has '1d'"):
        load_settings({"due_soon": "1d", "business_hours": "mon-fri 08:00-17:00"},
                      environ={}, dotenv_path=None)
