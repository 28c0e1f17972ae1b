"""The source layer: mapping files, views as tables, a custom schema end to end, and a
fixed number of queries per batch whatever its size.

The custom schema ("Acme desk") has nothing in common with the contract's tables: its
people are ``staff``, its tickets incidents read through a **view** that joins their
queue, its comments a ``journal``, its requesters addresses without accounts. The
mapping file is the README's example, read from the README, so that example is tested.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from contract_app import cli_env, run_cli, smtp_env, utcnow
from itsm_notify.config import load_settings
from itsm_notify.errors import ConfigError
from itsm_notify.events.model import OutboxEvent
from itsm_notify.source import load_source
from itsm_notify.source.mapping import fill, parse_mapping
from itsm_notify.storage import schema
from itsm_notify.storage.database import make_engine, reads
from itsm_notify.storage.migrations import init_database
from smtp_server import SmtpSink

SITE = "https://desk.acme.example"

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_mapping() -> str:
    """The README's mapping for a custom schema (the ```toml block of desk.toml)."""
    text = README.read_text()
    start = text.index("```toml\n# desk.toml") + len("```toml\n")
    return text[start:text.index("```", start)]


ACME_MAPPING = readme_mapping()

_metadata = sa.MetaData()
STAFF = sa.Table("staff", _metadata,
                 sa.Column("staff_id", sa.Integer, primary_key=True),
                 sa.Column("login", sa.String(50)), sa.Column("mail", sa.String(254)),
                 sa.Column("given", sa.String(50)), sa.Column("family", sa.String(50)),
                 sa.Column("gone", sa.Integer, nullable=False, server_default="0"))
QUEUES = sa.Table("queues", _metadata,
                  sa.Column("qid", sa.Integer, primary_key=True),
                  sa.Column("code", sa.String(10)), sa.Column("label", sa.String(50)),
                  sa.Column("watchers", sa.String(200)), sa.Column("mailbox", sa.String(254)))
INCIDENTS = sa.Table("incidents", _metadata,
                     sa.Column("inc_id", sa.Integer, primary_key=True),
                     sa.Column("summary", sa.String(200)), sa.Column("details", sa.Text),
                     sa.Column("state", sa.String(10)), sa.Column("sev", sa.Integer),
                     sa.Column("reporter_mail", sa.String(254)),
                     sa.Column("owner", sa.Integer), sa.Column("qid", sa.Integer),
                     sa.Column("due", sa.DateTime), sa.Column("opened", sa.DateTime))
JOURNAL = sa.Table("journal", _metadata,
                   sa.Column("jid", sa.Integer, primary_key=True),
                   sa.Column("inc_id", sa.Integer), sa.Column("by_staff", sa.Integer),
                   sa.Column("note", sa.Text), sa.Column("private_flag", sa.Integer))
VIEW = ("CREATE VIEW v_incidents AS SELECT i.inc_id, i.summary, i.details, i.state, i.sev, "
        "i.reporter_mail, i.owner, i.qid, i.due, i.opened, q.code "
        "FROM incidents i JOIN queues q ON q.qid = i.qid")


def acme_desk(url: str, tmp_path: Path) -> tuple[Engine, Path]:
    """The Acme schema in ``url``'s database, its people and one queue; the mapping file."""
    engine = make_engine(url)
    _metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(VIEW))
        conn.execute(sa.insert(STAFF), [
            {"staff_id": 1, "login": "ada", "mail": "ada@acme.example", "given": "Ada",
             "family": "Byron", "gone": 0},
            {"staff_id": 2, "login": "bo", "mail": "bo@acme.example", "given": "Bo",
             "family": "", "gone": 0},
            {"staff_id": 3, "login": "cy", "mail": "cy@acme.example", "given": "Cy",
             "family": "", "gone": 1}])
        conn.execute(sa.insert(QUEUES).values(
            qid=7, code="NET", label="Network", watchers="noc@acme.example",
            mailbox="network@acme.example"))
    mapping = tmp_path / "acme.toml"
    mapping.write_text(ACME_MAPPING)
    return engine, mapping


def incident(engine: Engine, inc_id: int, summary: str, *, state: str = "new",
             owner: int | None = 1, reporter: str | None = "pat+vpn@customer.example",
             due_in: timedelta | None = None) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.insert(INCIDENTS).values(
            inc_id=inc_id, summary=summary, details="It broke.", state=state, sev=1,
            reporter_mail=reporter, owner=owner, qid=7, opened=now,
            due=now + due_in if due_in is not None else None))


def event(engine: Engine, event_type: str, ticket_id: int, actor_id: int | None,
          **payload: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.outbox).values(
            event_type=event_type, ticket_id=ticket_id, actor_id=actor_id,
            payload=json.dumps(payload)))


def sent(env: dict[str, str], sink: SmtpSink, command: str = "send-pending"
         ) -> dict[str, Any]:
    sink.clear()
    result = run_cli([command], env)
    assert result.exit_code == 0, result.output + result.stderr
    return {address: message for message in sink.messages for address in message.rcpt_tos}


def text_of(message: Any) -> str:
    return str(message.message.get_body(("plain",)).get_content())


# ------------------------------------------------------------ a custom schema


def test_a_custom_schema_through_a_mapping_file(database_url: str, tmp_path: Path,
                                                smtp_sink: SmtpSink) -> None:
    engine, mapping = acme_desk(database_url, tmp_path)
    env = smtp_env(database_url, smtp_sink, ITSM_SOURCE=str(mapping), SITE_URL=SITE)
    before = set(sa.inspect(engine).get_table_names())
    result = run_cli(["db", "init"], env)
    assert result.exit_code == 0, result.output + result.stderr
    made = set(sa.inspect(engine).get_table_names()) - before
    assert "notification_outbox" in made
    assert not made & {"users", "tickets", "comments", "projects", "project_members"}

    incident(engine, 41, "VPN down")
    with engine.begin() as conn:
        conn.execute(sa.insert(JOURNAL), [
            {"jid": 1, "inc_id": 41, "by_staff": 1, "note": "Rebooting the gateway.",
             "private_flag": 0},
            {"jid": 2, "inc_id": 41, "by_staff": 2, "note": "Gateway firmware is old.",
             "private_flag": 1},
            {"jid": 3, "inc_id": 41, "by_staff": None, "note": "Any news?",
             "private_flag": 0}])

    event(engine, "ticket_created", 41, None)
    got = sent(env, smtp_sink)
    # the reporter (an address, no account), the owner, the queue's watchers
    assert set(got) == {"pat+vpn@customer.example", "ada@acme.example", "noc@acme.example"}
    owner_mail = got["ada@acme.example"]
    assert owner_mail.subject == "[NET-41] New Ticket: VPN down (NET-41)"
    assert owner_mail.message["Reply-To"] == "network@acme.example"
    owner_text = text_of(owner_mail)
    assert f"{SITE}/desk/incident/41" in owner_text
    assert "Sev 1" in owner_text and "New" in owner_text
    reporter_text = text_of(got["pat+vpn@customer.example"])
    assert f"{SITE}/portal/NET-41?email=pat%2Bvpn%40customer.example" in reporter_text
    assert "/desk/incident/" not in reporter_text

    event(engine, "comment_added", 41, 1, comment_id=1)
    event(engine, "comment_added", 41, 2, comment_id=2, is_internal=True)
    event(engine, "comment_added", 41, None, comment_id=3)  # no author
    event(engine, "status_changed", 41, 2, old_status="new", new_status="wip")
    smtp_sink.clear()
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.output + result.stderr
    by_subject: dict[str, set[str]] = {}
    for message in smtp_sink.messages:
        by_subject.setdefault(message.subject, set()).update(message.rcpt_tos)
    comments = [m for m in smtp_sink.messages if "Comment" in (m.subject or "")]
    assert not any("Gateway firmware" in text_of(m) for m in comments)  # internal: no email
    assert any("Any news?" in text_of(m) for m in comments)  # authorless: delivered
    status = by_subject.pop("[NET-41] Ticket Status Changed: VPN down → Work in progress")
    assert status == {"pat+vpn@customer.example", "ada@acme.example", "noc@acme.example"}
    with engine.connect() as conn:
        states = conn.execute(sa.select(schema.outbox.c.state)).scalars().all()
    assert states == ["done"] * 5


def test_overdue_scan_reads_through_the_mapping(database_url: str, tmp_path: Path,
                                                smtp_sink: SmtpSink) -> None:
    engine, mapping = acme_desk(database_url, tmp_path)
    env = smtp_env(database_url, smtp_sink, ITSM_SOURCE=str(mapping), SITE_URL=SITE)
    assert run_cli(["db", "init"], env).exit_code == 0
    incident(engine, 1, "Late and open", state="wip", due_in=timedelta(hours=-3))
    incident(engine, 2, "Late but fixed", state="fixed", due_in=timedelta(hours=-3))
    incident(engine, 3, "Not yet due", state="wip", due_in=timedelta(hours=3))
    got = sent(env, smtp_sink, "overdue-scan")
    assert set(got) == {"ada@acme.example"}
    digest = text_of(got["ada@acme.example"])
    assert "NET-1" in digest and "NET-2" not in digest and "NET-3" not in digest


def test_a_mapping_that_does_not_read_is_one_sentence(database_url: str, tmp_path: Path
                                                      ) -> None:
    _, mapping = acme_desk(database_url, tmp_path)
    mapping.write_text(ACME_MAPPING.replace('from = "journal j"', 'from = "jornal j"'))
    env = cli_env(database_url, ITSM_SOURCE=str(mapping), EMAIL_BACKEND="console")
    assert run_cli(["db", "init"], env).exit_code == 0  # the tool's tables only
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "cannot read its comments from 'jornal j'" in message
    assert "check ITSM_SOURCE" in message


def test_views_named_like_the_contracts_tables_are_tables(database_url: str,
                                                          tmp_path: Path,
                                                          smtp_sink: SmtpSink) -> None:
    """The contract source over views (an app exposing its schema the contract's way):
    ``db init`` makes none of the tables the views stand for, and events are delivered."""
    engine, _ = acme_desk(database_url, tmp_path)
    views = {
        "users": "SELECT staff_id AS id, login AS username, mail AS email, given AS "
                 "first_name, family AS last_name, gone = 0 AS is_active, "
                 "1 = 0 AS is_manager, NULL AS locale FROM staff",
        "tickets": "SELECT inc_id AS id, summary AS number, summary AS title, details AS "
                   "description, state AS status, sev AS priority, NULL AS requester_id, "
                   "owner AS assignee_id, NULL AS project_id, due AS due_at, opened AS "
                   "created_at FROM incidents",
        "comments": "SELECT jid AS id, inc_id AS ticket_id, by_staff AS author_id, note "
                    "AS body, private_flag = 1 AS is_internal, NULL AS created_at FROM journal",
        "projects": "SELECT qid AS id, label AS name, 1 = 0 AS notify_team FROM queues",
        "project_members": "SELECT qid AS project_id, qid AS user_id FROM queues",
    }
    with engine.begin() as conn:
        for name, select in views.items():
            conn.execute(sa.text(f"CREATE VIEW {name} AS {select}"))
    env = smtp_env(database_url, smtp_sink)
    result = run_cli(["db", "init"], env)
    assert result.exit_code == 0, result.output + result.stderr
    inspector = sa.inspect(engine)
    assert not set(views) & set(inspector.get_table_names())
    assert set(views) <= set(inspector.get_view_names())
    incident(engine, 5, "Printer")
    event(engine, "ticket_created", 5, None)
    assert set(sent(env, smtp_sink)) == {"ada@acme.example"}


# ------------------------------------------------- a fixed number of queries


def _count_loading_queries(engine: Engine, mapping: Path, events: list[OutboxEvent]) -> int:
    settings = load_settings({"database_url": str(engine.url), "source": str(mapping)},
                             environ={}, dotenv_path=None)
    source = load_source(settings)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        from itsm_notify.engine.sender import load_batch

        with engine.connect() as conn, reads(conn):
            contexts = load_batch(source, conn, events)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert all(not isinstance(c, Exception) for _, c in contexts), contexts
    return len(statements)


def test_loading_is_a_fixed_number_of_queries_whatever_the_batch(database_url: str,
                                                                tmp_path: Path) -> None:
    engine, mapping = acme_desk(database_url, tmp_path)
    init_database(engine, contract_tables=False)  # opt-outs are read with the users
    with engine.begin() as conn:
        conn.execute(sa.insert(INCIDENTS), [
            {"inc_id": i, "summary": f"Incident {i}", "state": "new", "sev": 2, "qid": 7,
             "owner": 1 + i % 2, "reporter_mail": f"r{i}@customer.example"}
            for i in range(1, 41)])
        conn.execute(sa.insert(JOURNAL), [
            {"jid": i, "inc_id": i, "by_staff": 1, "note": "n", "private_flag": 0}
            for i in range(1, 41)])

    def batch(size: int) -> list[OutboxEvent]:
        kinds = [("ticket_created", {}), ("comment_added", {"comment_id": 0}),
                 ("status_changed", {"new_status": "wip"}), ("ticket_assigned", {})]
        events = []
        for i in range(1, size + 1):
            kind, payload = kinds[i % len(kinds)]
            if kind == "comment_added":
                payload = {"comment_id": i}
            events.append(OutboxEvent(i, kind, i, 2, json.dumps(payload)))
        return events

    one_of_each = _count_loading_queries(engine, mapping, batch(4))
    assert _count_loading_queries(engine, mapping, batch(40)) == one_of_each <= 8


# --------------------------------------------------------- mapping mistakes


def _parse(data: dict[str, Any]) -> None:
    parse_mapping("acme", data, "The source mapping acme.toml")


USER = {"from": "staff s", "id": "s.id", "email": "s.mail"}
TICKET = {"from": "incidents i", "id": "i.id", "title": "i.t", "number": "i.n"}


@pytest.mark.parametrize(("data", "words"), [
    ({"ticket": TICKET}, "has no [user] table"),
    ({"user": USER, "ticket": TICKET, "tickets": {}}, "unknown table 'tickets'"),
    ({"user": {"id": "s.id", "email": "s.mail"}, "ticket": TICKET}, "[user] needs from ="),
    ({"user": {"from": "staff", "id": "id"}, "ticket": TICKET}, "[user] needs email ="),
    ({"user": USER, "ticket": {**TICKET, "title ": "x"}}, "'title ' is not a field"),
    ({"user": {**USER, "shoe_size": "s.shoe"}, "ticket": TICKET, "comment": {
        "from": "c", "id": "c.id", "ticket_id": "c.t", "body": "c.b", "mood": "c.m"}},
     "[comment] 'mood' is not a field of a comment"),
    ({"user": USER, "ticket": TICKET, "formats": {"link": "x"}}, "'link' is not a format"),
    ({"user": USER, "ticket": {k: v for k, v in TICKET.items() if k != "number"}},
     "map the ticket's number"),
    ({"user": USER, "ticket": TICKET, "labels": {"status": {"1": 1}}},
     "[labels.status] must map stored values to labels"),
])
def test_a_wrong_mapping_says_what_to_fix(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _parse(data)
    assert words in str(raised.value)
    assert str(raised.value).startswith("The source mapping acme.toml")


def test_a_missing_or_broken_mapping_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="does not exist: set ITSM_SOURCE"):
        load_source(load_settings({"source": str(missing)}, environ={}, dotenv_path=None))
    broken = tmp_path / "broken.toml"
    broken.write_text("[user\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_source(load_settings({"source": str(broken)}, environ={}, dotenv_path=None))
    with pytest.raises(ConfigError, match="use contract, django-helpdesk, django-spire"):
        load_source(load_settings({"source": "django-helpdesc"}, environ={},
                                  dotenv_path=None))


def test_formats_fill_and_url_encode() -> None:
    values = {"id": 7, "number": "it-7", "requester_email": "a+b@x.example", "key": None}
    assert fill("{number}", values) == "it-7"
    assert fill("?email={requester_email:url}&key={key:url}", values) \
        == "?email=a%2Bb%40x.example&key="


def test_settings_override_labels_and_closed_statuses_typed_as_stored() -> None:
    settings = load_settings({"source": "django-helpdesk",
                              "status_labels": {"1": "Neu"}, "closed_statuses": ["4"]},
                             environ={}, dotenv_path=None)
    mapping = load_source(settings).mapping
    assert mapping.status_labels["1"] == "Neu" and mapping.status_labels["2"] == "Reopened"
    assert mapping.closed_statuses == (4,)  # an integer column: an integer
    with pytest.raises(ConfigError, match="ITSM_CLOSED_STATUSES must list"):
        load_source(load_settings({"source": "django-helpdesk", "closed_statuses": ["done"]},
                                  environ={}, dotenv_path=None))
