"""The django-spire harness works, and django-spire 1.3.0 behaves as docs/sources says.

spire runs in its own Python >= 3.12 virtualenv (``spire_python``; skipped with the
reason where there is none). Its schema is built by its own migrations in the test's
database (``database_url``: SQLite, PostgreSQL, MariaDB), its ticket made by its own
service, and what its bell shows is read by its own querysets. In between, this test
process reads and writes spire's tables with the draft SQL of ``preset_sql``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from django_apps import preset_sql
from django_apps.spire import run_spire


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def write_in_app(url: str, user_id: int, ticket_id: int, title: str, url_path: str) -> None:
    """One in-app notification, the way the django-spire preset would write it."""
    engine = sa.create_engine(url)
    # timestamps in UTC: aware for PostgreSQL, naive (as Django stores them) elsewhere
    now = datetime.now(UTC) if engine.dialect.name == "postgresql" \
        else datetime.now(UTC).replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            content_type_id = conn.execute(sa.text(preset_sql.SPIRE_TICKET_CONTENT_TYPE)).scalar()
            notification_id = conn.execute(
                sa.text(preset_sql.SPIRE_INSERT_NOTIFICATION + " RETURNING id"),
                {"now": now, "user_id": user_id, "title": title, "body": "Priority: High",
                 "url": url_path, "content_type_id": content_type_id,
                 "ticket_id": ticket_id}).scalar()
            conn.execute(sa.text(preset_sql.SPIRE_INSERT_APP_NOTIFICATION),
                         {"now": now, "notification_id": notification_id,
                          "context_data": json.dumps({})})
    finally:
        engine.dispose()


def test_new_ticket_notifications_and_the_bell(database_url: str, spire_python: Path) -> None:
    facts = run_spire(spire_python, database_url, "scenario")
    assert (facts["django"], facts["django_spire"]) == ("6.0.9", "1.3.0")
    people, ticket_id = facts["people"], facts["ticket_id"]
    assert facts["has_create_service"] is False  # seed 001's ticket.services.create
    assert facts["detail_path"] == f"/django_spire/help_desk/page/detail/{ticket_id}/"
    row = facts["ticket_row"]
    assert (row["purpose"], row["priority"], row["status"]) == ("app", "high", "read")

    made = facts["notifications_after_create"]
    by_kind = sorted((note["user_id"], note["type"]) for note in made)
    developers = [people["developer"], people["developer_inactive"]]
    if database_url.startswith("mysql"):  # '=' ignores case in MariaDB's collation
        developers.append(people["developer_uppercase"])
    managers = [people["group_manager"], people["two_group_manager"],
                people["two_group_manager"],  # in two such groups: told twice
                people["developer"]]  # a developer in the group: told twice in-app
    assert by_kind == sorted([(user, "app") for user in developers + managers]
                             + [(user, "email") for user in developers])
    assert people["direct_permission_manager"] not in {user for user, _ in by_kind}
    assert people["superuser"] not in {user for user, _ in by_kind}
    email = next(note for note in made if note["type"] == "email")
    app = next(note for note in made if note["type"] == "app")
    assert email["url"] == f"spire.example.com{facts['detail_path']}"  # no scheme
    assert app["url"] == facts["detail_path"]
    assert (app["title"], app["body"]) == ("A new help desk ticket has been created",
                                           "Priority: High - Purpose: App")
    assert {note["status"] for note in made} == {"pending"}  # until spire's processor runs
    assert len(facts["notifications_after_edit"]) == 2 * len(made)  # told again on an edit

    # the draft SQL finds the same people spire does
    users = {user["id"]: user for user in rows(
        database_url, preset_sql.SPIRE["user"].select())}
    assert {uid for uid, user in users.items() if user["is_manager"]} \
        == set(managers)
    [ticket] = rows(database_url, preset_sql.SPIRE["ticket"].select("t.id = :t"), t=ticket_id)
    assert (ticket["status"], ticket["priority"], ticket["requester_id"]) \
        == ("read", "high", people["requester"])

    # a row written by that SQL is what the bell shows; spire's own pending rows are not
    manager = people["group_manager"]
    write_in_app(database_url, manager, ticket_id, "New Ticket: Ticket #1", app["url"])
    bell = run_spire(spire_python, database_url, "bell", str(manager))
    assert bell["has_new_notifications"] is True
    assert [(note["title"], note["url"]) for note in bell["notifications"]] \
        == [("New Ticket: Ticket #1", app["url"])]


def test_switched_off_and_with_django6_admins(sqlite_url: str, spire_python: Path) -> None:
    off = run_spire(spire_python, sqlite_url, "scenario", "--spire-notifications", "off")
    assert off["notifications_after_create"] == off["notifications_after_edit"] == []

    fresh = sqlite_url.replace("itsm.db", "admins.db")
    strings = run_spire(spire_python, fresh, "scenario", "--admins", "strings")
    # ADMINS as Django 6 wants it (addresses): spire's admin[1] is a letter, no developer
    assert {note["type"] for note in strings["notifications_after_create"]} == {"app"}
    assert strings["people"]["developer"] in {
        note["user_id"] for note in strings["notifications_after_create"]}  # as a manager
