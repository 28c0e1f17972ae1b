"""Test helpers that play the ITSM web application: schema, help-desk rows, outbox events.

Everything is a plain SQLAlchemy insert into the tables of ``itsm_notify.storage.schema``, so the
rows look exactly like the ones a producer writes; ids come from the database (no
hard-coded ids, which would leave PostgreSQL's sequences behind).

Typical use::

    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    add_event(engine, "comment_added", ids["vpn"], ids["bob"], {"comment_id": ids["c_bob"]})
    ... run send-pending ...
    assert set(outbox_states(engine).values()) == {"done"}

Also here: ``cli_env`` / ``smtp_env`` (the environment for a CLI run) and ``run_cli``
(Typer's runner on the real ``itsm_notify.cli.app``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from itsm_notify.cli import app
from itsm_notify.storage import database, schema
from itsm_notify.storage.migrations import init_database

__all__ = [
    "HELPDESK_USERS",
    "add_comment",
    "add_event",
    "add_member",
    "add_project",
    "add_ticket",
    "add_user",
    "app_notifications",
    "cli_env",
    "create_schema",
    "deliveries",
    "outbox_rows",
    "outbox_states",
    "run_cli",
    "seed_helpdesk",
    "set_preference",
    "smtp_env",
]


def utcnow() -> datetime:
    """Naive UTC, as the tool's timestamp columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


# ------------------------------------------------------------------------- schema


def create_schema(url: str) -> Engine:
    """An engine on ``url`` with every table created (``itsm-notify db init``'s work)."""
    engine = database.make_engine(url)
    init_database(engine, contract_tables=True)
    return engine


def _insert(engine: Engine, table: sa.Table, values: Mapping[str, Any]) -> int:
    with engine.begin() as conn:
        result = conn.execute(sa.insert(table).values(**values))
        return int(result.inserted_primary_key[0])


# ------------------------------------------------------------- the ITSM app's rows


def add_user(engine: Engine, username: str, email: str | None = "", *, first_name: str = "",
             last_name: str = "", is_active: bool = True, is_manager: bool = False) -> int:
    """A user; ``email=""`` (the default) means ``<username>@example.com``, None none."""
    address = f"{username}@example.com" if email == "" else email
    return _insert(engine, schema.users, {
        "username": username, "email": address, "first_name": first_name,
        "last_name": last_name, "is_active": is_active, "is_manager": is_manager})


def add_project(engine: Engine, name: str, *, notify_team: bool = False,
                members: tuple[int, ...] | list[int] = ()) -> int:
    project_id = _insert(engine, schema.projects, {"name": name, "notify_team": notify_team})
    for user_id in members:
        add_member(engine, project_id, user_id)
    return project_id


def add_member(engine: Engine, project_id: int, user_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.project_members).values(project_id=project_id,
                                                          user_id=user_id))


def add_ticket(engine: Engine, number: str, title: str, requester_id: int, *,
               assignee_id: int | None = None, project_id: int | None = None,
               description: str = "", status: str = "open", priority: str = "medium",
               due_at: datetime | None = None) -> int:
    return _insert(engine, schema.tickets, {
        "number": number, "title": title, "description": description, "status": status,
        "priority": priority, "requester_id": requester_id, "assignee_id": assignee_id,
        "project_id": project_id, "due_at": due_at, "created_at": utcnow()})


def add_comment(engine: Engine, ticket_id: int, author_id: int, body: str, *,
                is_internal: bool = False) -> int:
    return _insert(engine, schema.comments, {
        "ticket_id": ticket_id, "author_id": author_id, "body": body,
        "is_internal": is_internal, "created_at": utcnow()})


def add_event(engine: Engine, event_type: str, ticket_id: int | None, actor_id: int | None,
              payload: Mapping[str, Any] | str | None = None) -> int:
    """An outbox row as a producer writes it: only the four producer columns.

    ``payload`` may be a dict (stored as JSON), a raw string (stored as is, e.g.
    malformed JSON) or None.
    """
    raw = json.dumps(dict(payload)) if isinstance(payload, Mapping) else payload
    return _insert(engine, schema.outbox, {"event_type": event_type, "ticket_id": ticket_id,
                                       "actor_id": actor_id, "payload": raw})


def set_preference(engine: Engine, user_id: int, event_type: str, channel: str,
                   enabled: bool) -> None:
    """A user's choice for one event type on one channel (``email`` or ``in_app``)."""
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.preferences).values(
            user_id=user_id, event_type=event_type, channel=channel, enabled=enabled,
            updated_at=utcnow()))


#: username → (first name, last name, is_manager); see ``seed_helpdesk``
HELPDESK_USERS: dict[str, tuple[str, str, bool]] = {
    "alice": ("Alice", "Lopez", False),    # requester of both tickets
    "bob": ("Bob", "Okafor", False),       # agent: assignee of the VPN ticket, team member
    "carol": ("Carol", "Nguyen", False),   # team member
    "dave": ("Dave", "Schmidt", True),     # manager: in-app only on new tickets
    "erin": ("Erin", "Kowalski", False),   # a colleague who comments publicly
    "frank": ("Frank", "Meyer", False),    # an agent outside the team (internal notes)
}


def seed_helpdesk(engine: Engine) -> dict[str, int]:
    """A small help desk; returns the ids by name.

    * users ``alice bob carol dave erin frank`` (``<name>@example.com``; dave is a
      manager), ``gina`` (inactive) and ``hank`` (no email address);
    * project ``network`` (notify_team) with members bob and carol;
    * ticket ``vpn`` (TKT-001, requester alice, assignee bob, project network, high),
      ticket ``laptop`` (TKT-002, requester alice, unassigned, no project);
    * comments on vpn: ``c_bob`` (public, bob), ``c_erin`` (public, erin),
      ``c_frank_internal`` (internal, frank), ``c_carol_internal`` (internal, carol).
    """
    ids: dict[str, int] = {}
    for username, (first, last, manager) in HELPDESK_USERS.items():
        ids[username] = add_user(engine, username, first_name=first, last_name=last,
                                 is_manager=manager)
    ids["gina"] = add_user(engine, "gina", first_name="Gina", is_active=False)
    ids["hank"] = add_user(engine, "hank", None, first_name="Hank")
    ids["network"] = add_project(engine, "Network", notify_team=True,
                                 members=(ids["bob"], ids["carol"]))
    ids["vpn"] = add_ticket(
        engine, "TKT-001", "VPN drops every 10 minutes", ids["alice"],
        assignee_id=ids["bob"], project_id=ids["network"], priority="high",
        description="Since this morning the VPN disconnects every ten minutes.")
    ids["laptop"] = add_ticket(engine, "TKT-002", "New laptop for onboarding", ids["alice"],
                               description="Erin starts Monday.")
    ids["c_bob"] = add_comment(engine, ids["vpn"], ids["bob"],
                               "Could you send the VPN client log?")
    ids["c_erin"] = add_comment(engine, ids["vpn"], ids["erin"], "Same here since 9am.")
    ids["c_frank_internal"] = add_comment(engine, ids["vpn"], ids["frank"],
                                          "SECRET-NOTE firewall idle-timeout is 600s",
                                          is_internal=True)
    ids["c_carol_internal"] = add_comment(engine, ids["vpn"], ids["carol"],
                                          "SECRET-NOTE raising the timeout tonight",
                                          is_internal=True)
    return ids


# ------------------------------------------------------------------------ reading


def outbox_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every outbox row as a dict, in id order."""
    with engine.connect() as conn:
        return [dict(row._mapping) for row in
                conn.execute(sa.select(schema.outbox).order_by(schema.outbox.c.id))]


def outbox_states(engine: Engine) -> dict[int, str]:
    """event id → state."""
    return {row["id"]: row["state"] for row in outbox_rows(engine)}


def app_notifications(engine: Engine) -> list[dict[str, Any]]:
    """Every in-app notification row as a dict, in id order."""
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(
            sa.select(schema.app_notifications).order_by(schema.app_notifications.c.id))]


def deliveries(engine: Engine) -> list[dict[str, Any]]:
    """Every per-recipient delivery record as a dict, in id order."""
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(
            sa.select(schema.deliveries).order_by(schema.deliveries.c.id))]


# ---------------------------------------------------------------------- the CLI


def cli_env(database_url: str, **settings: Any) -> dict[str, str]:
    """Environment for a CLI run: DATABASE_URL plus settings by environment name,
    e.g. ``cli_env(url, EMAIL_BACKEND="file", ADMINS="ops@example.com")``."""
    env = {"DATABASE_URL": database_url}
    env.update({name: str(value) for name, value in settings.items()})
    return env


def smtp_env(database_url: str, sink: Any, **settings: Any) -> dict[str, str]:
    """``cli_env`` sending to an ``SmtpSink`` over plain SMTP on loopback."""
    return cli_env(database_url, EMAIL_BACKEND="smtp", EMAIL_HOST=sink.host,
                   EMAIL_PORT=sink.port, EMAIL_TIMEOUT=10, **settings)


def run_cli(args: list[str], env: Mapping[str, str] | None = None, *,
            input: bytes | None = None) -> Result:
    """Run the real ``itsm-notify`` Typer app in-process; stdout and stderr separate;
    ``input``: its stdin (a message for ``receive``)."""
    return CliRunner().invoke(app, args, env=dict(env or {}), input=input,
                              catch_exceptions=False)
