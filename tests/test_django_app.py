"""itsm-notify's Django app (``itsm_notify.django``) inside the real django-helpdesk 2.6.1.

Each database test runs on SQLite, PostgreSQL and MariaDB (``helpdesk_site``: the app's
schema, ours included, built by the apps' own migrations once per database and
session). Rows are read back with SQLAlchemy, the way the tool reads them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_apps.helpdesk_site import HelpdeskSite
from itsm_notify.config import Settings, load_settings
from itsm_notify.django.helpdesk import TicketState, followup_events
from itsm_notify.django.outbox import PAYLOAD_KEYS, encode_payload
from itsm_notify.engine.sender import send_pending
from itsm_notify.ops.unsubscribe import make_token, unsubscribe_url
from itsm_notify.states import EventState
from itsm_notify.storage import schema
from itsm_notify.storage.database import make_engine, utcnow
from itsm_notify.storage.migrations import init_database

OPEN, REOPENED, RESOLVED, CLOSED = 1, 2, 3, 4
HIGH = 2


# ------------------------------------------------------------------- helpers


@pytest.fixture
def engine(helpdesk_site: HelpdeskSite) -> Iterator[sa.Engine]:
    """The tool's own engine on the site's database (disposed, so the next test's reset
    is not blocked by its connections)."""
    tool_engine = make_engine(helpdesk_site.url)
    yield tool_engine
    tool_engine.dispose()


def outbox_rows(engine: sa.Engine) -> list[tuple[str, int | None, int | None, Any]]:
    """(event_type, ticket_id, actor_id, payload as JSON) of every outbox row, in order."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.outbox.c.event_type, schema.outbox.c.ticket_id,
                                      schema.outbox.c.actor_id, schema.outbox.c.payload)
                            .order_by(schema.outbox.c.id)).all()
    return [(kind, ticket, actor, json.loads(payload)) for kind, ticket, actor, payload in rows]


def tool_settings(url: str, tmp_path: Path) -> Settings:
    return load_settings({"database_url": url, "email_backend": "file",
                          "email_file_path": str(tmp_path / "mail"),
                          "site_url": "https://helpdesk.example.com",
                          "default_from_email": "Help Desk <helpdesk@example.com>",
                          "delivery_log": str(tmp_path / "email.log")},
                         environ={}, dotenv_path=None)


def reply(subject: str, sender: str, message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, "it@example.com", subject
    message["Message-ID"] = message_id
    message.set_content("It is broken again.")
    return message


# ---------------------------------------------------------- the outbox table


def _reference_outbox(engine: sa.Engine) -> sa.Table:
    """``storage.schema.outbox`` as ``db init`` creates it, under another name."""
    metadata = sa.MetaData()
    table = sa.Table("reference_outbox", metadata,
                     *[column._copy() for column in schema.outbox.columns],
                     sa.Index("ix_reference_outbox_state_id", "state", "id"))
    metadata.create_all(engine)
    return table


def _columns(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    """(name, type, nullable, default, autoincrement) as SQLAlchemy's inspector sees them;
    default text without quotes (SQLite keeps ``'0'`` as written by SQLAlchemy, ``0`` by
    Django: the same default) and the id's default left out (PostgreSQL: an identity
    column from Django, a serial's sequence from SQLAlchemy; both autoincrement)."""
    inspector = sa.inspect(engine)
    return [(c["name"], c["type"].compile(dialect=engine.dialect), c["nullable"],
             None if c["name"] == "id" or c.get("default") is None
             else c["default"].replace("'", "").replace("reference_outbox", "TABLE"),
             bool(c.get("autoincrement")) if c["name"] == "id" else None)
            for c in inspector.get_columns(table)]


def test_migrate_creates_the_outbox_db_init_would(helpdesk_site: HelpdeskSite,
                                                   engine: sa.Engine) -> None:
    from django.core.management import call_command
    from django.db import connection

    # the session's database was migrated once: make the table again from this code
    call_command("migrate", "itsm_notify", "zero", verbosity=0)
    call_command("migrate", "itsm_notify", verbosity=0)
    # a managed model: Django's test databases get it from the same migration
    assert "notification_outbox" in connection.introspection.django_table_names()
    reference = _reference_outbox(engine)
    assert _columns(engine, "notification_outbox") == _columns(engine, reference.name)
    indexes = sa.inspect(engine).get_indexes("notification_outbox")
    assert [(index["name"], index["column_names"], bool(index["unique"]))
            for index in indexes] == [("ix_outbox_state_id", ["state", "id"], False)]
    dialect = engine.dialect.name
    timestamp = {"postgresql": "TIMESTAMP WITHOUT TIME ZONE", "mysql": "DATETIME(6)",
                 "mariadb": "DATETIME(6)", "sqlite": "DATETIME"}[dialect]
    assert {name: kind for name, kind, *_ in _columns(engine, "notification_outbox")
            if name.endswith(("_at", "_until"))} == dict.fromkeys(
        ["created_at", "available_at", "locked_until", "processed_at"], timestamp)

    # the tool sees its outbox: db init creates its other tables, not that one
    created = init_database(engine, contract_tables=True)
    assert "notification_outbox" not in created and "notification_preferences" in created

    # a producer's raw INSERT of the four columns gets the same defaults in both tables
    before = utcnow() - timedelta(seconds=2)
    for table in ("notification_outbox", reference.name):
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"INSERT INTO {table} (event_type, ticket_id, actor_id, payload) "
                "VALUES ('ticket_created', 7, NULL, '{}')")
    with engine.connect() as conn:
        made = [conn.execute(sa.select(t.c.state, t.c.attempts, t.c.created_at,
                                       t.c.available_at, t.c.locked_by)).one()
                for t in (schema.outbox, reference)]
    for state, attempts, created_at, available_at, locked_by in made:
        assert (state, attempts, locked_by) == ("pending", 0, None)
        assert created_at.tzinfo is None and before <= created_at <= utcnow() + timedelta(2)
        assert available_at == created_at


def test_timestamps_are_naive_utc_whatever_use_tz(helpdesk_site: HelpdeskSite,
                                                  engine: sa.Engine) -> None:
    from django.core.management import call_command
    from django.test import override_settings

    from itsm_notify.django import notify
    from itsm_notify.django.models import OutboxEvent

    def sql(**overrides: Any) -> str:
        out = io.StringIO()
        with override_settings(**overrides):
            call_command("sqlmigrate", "itsm_notify", "0001", stdout=out)
        return out.getvalue()

    assert sql(USE_TZ=True) == sql(USE_TZ=False, TIME_ZONE="America/New_York")
    if engine.dialect.name == "postgresql":
        assert '"created_at" timestamp DEFAULT' in sql() and "time zone" not in sql()

    new_york = ZoneInfo("America/New_York")
    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        first = notify("ticket_created", 1)
        row = OutboxEvent.objects.get(pk=first)
        assert row.created_at.tzinfo is None  # naive, and UTC, not New York time
        assert abs(row.created_at - utcnow()) < timedelta(seconds=30)
        # a naive value written is UTC; an aware one is converted to UTC
        OutboxEvent.objects.filter(pk=first).update(locked_until=datetime(2030, 1, 1, 12))
    with override_settings(USE_TZ=True):
        second = notify("ticket_created", 2)
        row = OutboxEvent.objects.get(pk=second)
        assert row.created_at.tzinfo is UTC
        assert abs(row.created_at - datetime.now(UTC)) < timedelta(seconds=30)
        OutboxEvent.objects.filter(pk=second).update(
            locked_until=datetime(2030, 1, 1, 7, tzinfo=new_york))
        assert OutboxEvent.objects.get(pk=first).locked_until \
            == datetime(2030, 1, 1, 12, tzinfo=UTC)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(schema.outbox.c.locked_until)
                              .order_by(schema.outbox.c.id)).scalars().all()
    assert stored == [datetime(2030, 1, 1, 12)] * 2


# -------------------------------------------------------------------- notify()


def test_notify_writes_in_the_callers_transaction(helpdesk_site: HelpdeskSite,
                                                  engine: sa.Engine) -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.db import transaction

    from itsm_notify.django import notify

    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    queue = site.queue("it")
    ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00", by=alice)
    start = len(outbox_rows(engine))  # the receivers' ticket_created

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        ticket.status = RESOLVED
        ticket.save()
        notify("status_changed", ticket, alice, old_status=OPEN, new_status=RESOLVED)
        raise Boom
    assert len(outbox_rows(engine)) == start  # the row went with the change
    ticket.refresh_from_db()
    assert ticket.status == OPEN

    with transaction.atomic():
        notify("status_changed", ticket, alice, old_status=OPEN, new_status="prog")
        notify("comment_added", ticket.pk, alice.pk, comment_id=5)
        notify("ticket_assigned", ticket, AnonymousUser(), assignee_id=alice,
               previous_assignee_id=None)
        notify("ticket_created", ticket)
    assert outbox_rows(engine)[start:] == [
        ("status_changed", ticket.pk, alice.pk, {"old_status": OPEN, "new_status": "prog"}),
        ("comment_added", ticket.pk, alice.pk, {"comment_id": 5}),
        ("ticket_assigned", ticket.pk, None,
         {"assignee_id": alice.pk, "previous_assignee_id": None}),
        ("ticket_created", ticket.pk, None, {}),
    ]


def test_send_pending_delivers_rows_written_through_django(
        helpdesk_site: HelpdeskSite, engine: sa.Engine, tmp_path: Path) -> None:
    from itsm_notify.django import notify

    # under the contract source: its users and tickets tables, empty
    init_database(engine, contract_tables=True)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.users), [
            {"id": 1, "username": "req", "email": "req@example.com", "first_name": "Rae"},
            {"id": 2, "username": "agent", "email": "agent@example.com", "first_name": "Al"}])
        conn.execute(sa.insert(schema.tickets).values(
            id=1, number="TKT-001", title="VPN down", requester_id=1, assignee_id=2))
    notify("ticket_created", 1, 2)
    notify("status_changed", 1, 2, old_status="open", new_status="resolved")

    report = send_pending(tool_settings(helpdesk_site.url, tmp_path), engine=engine)
    assert (report.events_done, report.events_failed, report.emails_sent) == (2, 0, 2)
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.outbox.c.state)).scalars().all() == ["done"] * 2
    subjects = sorted(BytesParser(policy=policy.default).parsebytes(path.read_bytes())["Subject"]
                      for path in (tmp_path / "mail").iterdir())
    assert subjects == ["New Ticket: VPN down (TKT-001)",
                        "Ticket Status Changed: VPN down → resolved"]


@pytest.mark.parametrize(("event_type", "payload", "error", "words"), [
    ("status_changed", {"new_status": 3, "old_stauts": 1}, TypeError, "'old_stauts'"),
    ("status_changed", {"old_status": 1}, TypeError, "needs the payload field 'new_status'"),
    ("status_changed", {"new_status": None}, TypeError, "cannot be None"),
    ("status_changed", {"new_status": Decimal("3")}, TypeError, "not Decimal"),
    ("status_changed", {"new_status": 3.0}, TypeError, "not float"),
    ("status_changed", {"new_status": "\ud800"}, TypeError, "cannot be stored as JSON"),
    ("ticket_created", {"status": datetime(2026, 1, 1)}, TypeError, "not datetime"),
    ("ticket_created", {"assignee_id": True}, TypeError, "must be an id"),
    ("ticket_created", {"assignee_id": "7"}, TypeError, "must be an id"),
    ("ticket_created", {"assignee_id": 0}, ValueError, "is not an id"),
    ("comment_added", {"comment_id": 5, "is_internal": 1}, TypeError, "True or False"),
    ("comment_added", {}, TypeError, "'comment_id'"),
    ("ticket_closed", {}, ValueError, "unknown event type 'ticket_closed'"),
])
def test_notify_refuses_a_payload_it_cannot_store(event_type: str, payload: dict[str, Any],
                                                   error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        encode_payload(event_type, payload)


_KINDS = {"id": st.integers(1, 2**63 - 1), "value": st.one_of(st.integers(), st.text()),
          "flag": st.booleans()}


@st.composite
def _payloads(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event_type = draw(st.sampled_from(sorted(PAYLOAD_KEYS)))
    payload = {}
    for key, spec in PAYLOAD_KEYS[event_type].items():
        if spec.required or draw(st.booleans()):
            value = _KINDS[spec.kind] if spec.required or spec.kind == "flag" \
                else st.one_of(st.none(), _KINDS[spec.kind])
            payload[key] = draw(value)
    return event_type, payload


# the first st.text() builds Hypothesis's character tables (about a second)
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_payloads())
def test_every_payload_of_the_documented_keys_round_trips(
        case: tuple[str, dict[str, Any]]) -> None:
    event_type, payload = case
    assert json.loads(encode_payload(event_type, payload)) == payload


@given(st.sampled_from(sorted(PAYLOAD_KEYS)),
       st.one_of(st.floats(), st.decimals(allow_nan=False), st.datetimes(), st.binary(),
                 st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_anything_but_ids_values_and_flags_is_a_type_error(event_type: str,
                                                           value: Any) -> None:
    key = next(iter(PAYLOAD_KEYS[event_type]))
    payload = {k: 1 for k, s in PAYLOAD_KEYS[event_type].items() if s.required} | {key: value}
    with pytest.raises(TypeError, match=f"payload field '{key}'"):
        encode_payload(event_type, payload)


def test_the_tool_runs_without_django() -> None:
    """The runtime core never imports Django (the app is an extra)."""
    code = ("import sys, itsm_notify.cli, itsm_notify.engine.sender, itsm_notify.ops.demo;"
            "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------- django-helpdesk events


@pytest.mark.parametrize(("before", "after", "comment", "public", "expected"), [
    (TicketState(1, None), TicketState(1, None), "text", True,
     [("comment_added", {"comment_id": 9, "is_internal": False})]),
    (TicketState(1, None), TicketState(1, None), "  ", False, []),
    (TicketState(1, 4), TicketState(3, 5), None, False, [
        ("ticket_assigned", {"assignee_id": 5, "previous_assignee_id": 4}),
        ("status_changed", {"old_status": 1, "new_status": 3})]),
    (TicketState(1, 4), TicketState(1, None), "bye", False, [
        ("ticket_assigned", {"assignee_id": None, "previous_assignee_id": 4}),
        ("comment_added", {"comment_id": 9, "is_internal": True})]),
])
def test_one_event_per_fact_of_a_follow_up(before: TicketState, after: TicketState,
                                           comment: str | None, public: bool,
                                           expected: list[Any]) -> None:
    assert followup_events(before, after, followup_id=9, comment=comment,
                           public=public) == expected


def test_its_forms_and_update_ticket_write_the_events(
        helpdesk_site: HelpdeskSite, engine: sa.Engine, tmp_path: Path) -> None:
    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    bob = site.user("bob", email="bob@example.com", staff=True)
    erin = site.user("erin", email="erin@example.com")  # not staff: no author recorded
    queue = site.queue("it", email_address="it@example.com", intake_dir=tmp_path / "in",
                       default_owner=bob)

    ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00", by=alice,
                              submitter_email="sub@example.com", assigned_to=alice,
                              priority=HIGH)
    public = site.comment(ticket, bob, "Looking into it")
    private = site.comment(ticket, bob, "internal: the router again", public=False)
    anonymous = site.comment(ticket, erin, "Any news?")
    resolved = site.change_status(ticket, alice, RESOLVED, comment="Router replaced")
    site.assign(ticket, alice, bob)
    site.assign(ticket, bob, None)
    # one follow-up, two facts: update_ticket saves the ticket twice
    site.update(ticket, alice, owner=alice.pk, new_status=CLOSED)
    web = site.open_public_ticket(queue, title="Printer", body="Jammed",
                                  submitter_email="erin@example.com")
    reopened = site.receive_email(queue, reply(f"Re: [it-{ticket.pk}] VPN down",
                                               "sub@example.com", "<r1@example.com>"))
    mailed = site.receive_email(queue, reply("Scanner", "new@example.com", "<r2@example.com>"))
    assert reopened.consumed and mailed.consumed, reopened.log + mailed.log

    t, w, m = ticket.pk, web.pk, mailed.ticket.pk
    assert outbox_rows(engine) == [
        ("ticket_created", t, alice.pk, {"status": OPEN, "priority": HIGH,
                                         "assignee_id": alice.pk}),
        ("comment_added", t, bob.pk, {"comment_id": public.pk, "is_internal": False}),
        ("comment_added", t, bob.pk, {"comment_id": private.pk, "is_internal": True}),
        ("comment_added", t, None, {"comment_id": anonymous.pk, "is_internal": False}),
        ("status_changed", t, alice.pk, {"old_status": OPEN, "new_status": RESOLVED}),
        ("comment_added", t, alice.pk, {"comment_id": resolved.pk, "is_internal": False}),
        ("ticket_assigned", t, alice.pk, {"assignee_id": bob.pk,
                                          "previous_assignee_id": alice.pk}),
        ("ticket_assigned", t, bob.pk, {"assignee_id": None, "previous_assignee_id": bob.pk}),
        ("ticket_assigned", t, alice.pk, {"assignee_id": alice.pk,
                                          "previous_assignee_id": None}),
        ("status_changed", t, alice.pk, {"old_status": RESOLVED, "new_status": CLOSED}),
        ("ticket_created", w, None, {"status": OPEN, "priority": 3, "assignee_id": bob.pk}),
        # an e-mailed reply reopens the closed ticket (saved before its follow-up)
        ("status_changed", t, None, {"old_status": CLOSED, "new_status": REOPENED}),
        ("comment_added", t, None, {"comment_id": reopened.followup.pk,
                                    "is_internal": False}),
        ("ticket_created", m, None, {"status": OPEN, "priority": 3, "assignee_id": None}),
    ]

    # send-pending over those rows: each one ends done or failed with a readable reason
    # (until the django-helpdesk source lands, the tool reads the contract's tables,
    # which db init creates empty here)
    init_database(engine, contract_tables=True)
    report = send_pending(tool_settings(site.url, tmp_path), engine=engine)
    assert report.events_handled == 14
    with engine.connect() as conn:
        states = conn.execute(sa.select(schema.outbox.c.state, schema.outbox.c.last_error)
                              ).all()
    assert {state for state, _ in states} <= {EventState.DONE, EventState.FAILED}
    for state, error in states:
        assert state == EventState.DONE or (error and "\n" not in error
                                        and "Traceback" not in error), error


@pytest.mark.parametrize("helpdesk_site", ["sqlite"], indirect=True)
def test_the_receivers_follow_the_setting(helpdesk_site: HelpdeskSite,
                                          engine: sa.Engine) -> None:
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from itsm_notify.django import helpdesk

    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    queue = site.queue("it")
    app = apps.get_app_config("itsm_notify")
    helpdesk.disconnect()
    try:
        with override_settings(ITSM_NOTIFY_HELPDESK_SIGNALS=False):
            app.ready()
        site.open_ticket(queue, title="Quiet", body="x", by=alice)
        assert outbox_rows(engine) == []
        app.ready()  # the default: on, because helpdesk is installed
        site.open_ticket(queue, title="Told", body="x", by=alice)
        assert [kind for kind, *_ in outbox_rows(engine)] == ["ticket_created"]
        with override_settings(ITSM_NOTIFY_HELPDESK_SIGNALS=True), \
                pytest.MonkeyPatch.context() as patch:
            patch.setattr(apps, "is_installed", lambda name: False)
            with pytest.raises(ImproperlyConfigured, match="add 'helpdesk'"):
                app.ready()
    finally:
        helpdesk.connect()


def test_the_change_and_its_events_commit_together(helpdesk_site: HelpdeskSite,
                                                   engine: sa.Engine) -> None:
    from django.db import connection
    from django.test import Client
    from helpdesk.signals import update_ticket_done

    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    queue = site.queue("it")
    ticket = site.open_ticket(queue, title="VPN down", body="x", by=alice)
    opened = outbox_rows(engine)
    browser = Client()
    browser.force_login(alice)

    def respond(comment: str, new_status: int) -> Any:
        """django-helpdesk's own staff "respond" form, through its view."""
        return browser.post(f"/helpdesk/tickets/{ticket.pk}/update/", {
            "comment": comment, "new_status": str(new_status), "public": "1",
            "title": "VPN down", "priority": "3", "queue": str(queue.pk), "owner": "-1"})

    class Boom(Exception):
        pass

    seen_in_transaction: list[bool] = []

    def after_ours(sender: str, followup: Any, **_: Any) -> None:
        seen_in_transaction.append(connection.in_atomic_block)
        if followup.comment == "boom":
            raise Boom

    update_ticket_done.connect(after_ours, weak=False)
    try:
        # without ATOMIC_REQUESTS, django-helpdesk has committed when it signals
        assert respond("Looking", OPEN).status_code == 302
        # with it, the follow-up, the ticket and the events are one transaction
        connection.settings_dict["ATOMIC_REQUESTS"] = True
        with pytest.raises(Boom):
            respond("boom", RESOLVED)
        assert respond("Fixed", RESOLVED).status_code == 302
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = False
        update_ticket_done.disconnect(after_ours)

    assert seen_in_transaction == [False, True, True]
    with engine.connect() as conn:
        followups = dict(conn.execute(sa.text("SELECT comment, id FROM helpdesk_followup")
                                      ).all())
    assert set(followups) == {"x", "Looking", "Fixed"}  # "boom" and its status change: gone
    assert [(kind, payload) for kind, _, _, payload in outbox_rows(engine)[len(opened):]] == [
        ("comment_added", {"comment_id": followups["Looking"], "is_internal": False}),
        ("status_changed", {"old_status": OPEN, "new_status": RESOLVED}),
        ("comment_added", {"comment_id": followups["Fixed"], "is_internal": False}),
    ]


# -------------------------------------------------------------- unsubscribe


def test_the_unsubscribe_page(helpdesk_site: HelpdeskSite, engine: sa.Engine) -> None:
    from django.conf import settings as django_settings
    from django.test import Client, override_settings

    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    bob = site.user("bob", email="bob@example.com", staff=True)
    init_database(engine, contract_tables=True)  # the tool's tables: notification_preferences

    def preferences() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.select(
                schema.preferences.c.user_id, schema.preferences.c.event_type,
                schema.preferences.c.channel, schema.preferences.c.enabled))]

    # the link an email carries, signed by the tool with the shared SECRET_KEY
    link = unsubscribe_url("https://helpdesk.example.com", django_settings.SECRET_KEY, alice.pk,
                           "comment_added")
    assert link is not None
    path = urlsplit(link).path
    browser = Client(enforce_csrf_checks=True)

    page = browser.get(path)
    assert page.status_code == 200
    assert b"Stop emails about new comments on tickets?" in page.content
    assert f'<form method="post" action="{path}">'.encode() in page.content
    assert preferences() == []  # a GET changes nothing

    # RFC 8058: a mail client's one-click POST, no cookie, no CSRF token, no login
    for _ in range(2):  # the second click finds the row
        done = browser.post(path, "List-Unsubscribe=One-Click",
                            content_type="application/x-www-form-urlencoded")
        assert done.status_code == 200
        assert b"no longer get emails about new comments" in done.content
    assert [(u, e, c, bool(on)) for u, e, c, on in preferences()] \
        == [(alice.pk, "comment_added", "email", False)]

    forged = path.replace(path.split("/")[-2], path.split("/")[-2][:-2] + "xx")
    other_key = make_token("another key", alice.pk, "status_changed")
    for bad in (forged, f"/notifications/unsubscribe/{other_key}/"):
        refused = browser.post(bad, "List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
        assert refused.status_code == 400
        assert b"This unsubscribe link is not valid" in refused.content

    # bob, logged in, cannot use alice's link; alice can
    theirs = urlsplit(unsubscribe_url("https://x", django_settings.SECRET_KEY, alice.pk,
                                      "ticket_created") or "").path
    browser.force_login(bob)
    assert browser.get(theirs).status_code == 403
    assert browser.post(theirs, {}).status_code == 403
    browser.force_login(alice)
    assert browser.post(theirs, {}).status_code == 200
    assert len(preferences()) == 2

    # a tool with its own key: ITSM_NOTIFY_SECRET_KEY names it
    with override_settings(ITSM_NOTIFY_SECRET_KEY="the tool's key"):
        assert Client().get(path).status_code == 400
        own = make_token("the tool's key", alice.pk, "status_changed")
        assert Client().get(f"/notifications/unsubscribe/{own}/").status_code == 200

    # no preferences table (db init not run): a readable 503, not a crash
    with engine.begin() as conn:
        schema.preferences.drop(conn)
    unavailable = Client().post(path)
    assert unavailable.status_code == 503
    assert b"could not be saved" in unavailable.content
