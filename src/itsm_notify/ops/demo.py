"""``itsm-notify demo``: a small, realistic help desk on a local SQLite file.

It plays the ITSM web application's part — users, a project team, tickets, comments,
status changes — writing outbox rows exactly as an app would, then runs send-pending
with the console backend so a newcomer sees real emails in seconds.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, insert, select

from ..channels.local import ConsoleTransport
from ..config import load_settings
from ..engine.overdue import overdue_scan
from ..engine.sender import send_pending
from ..storage.database import make_engine, utcnow
from ..storage.migrations import init_database
from ..storage.schema import (
    app_notifications,
    comments,
    outbox,
    project_members,
    projects,
    tickets,
    users,
)

USERS = [
    # id, username, email, first, last, is_manager, locale
    (1, "alice", "alice@example.com", "Alice", "Lopez", False, None),   # requester
    (2, "bob", "bob@example.com", "Bob", "Okafor", False, None),        # agent / assignee
    (3, "carol", "carol@example.com", "Carol", "Nguyen", False, "de"),  # network team, reads German
    (4, "dave", "dave@example.com", "Dave", "Schmidt", True, None),     # service-desk manager
    (5, "erin", "erin@example.com", "Erin", "Kowalski", False, None),   # another requester
]


def seed(engine: Engine) -> None:
    """Write the help desk and its events the way the ITSM app would."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(users), [
            {"id": i, "username": u, "email": e, "first_name": f, "last_name": last,
             "is_manager": m, "locale": locale} for i, u, e, f, last, m, locale in USERS])
        conn.execute(insert(projects), [{"id": 1, "name": "Network", "notify_team": True}])
        conn.execute(insert(project_members), [{"project_id": 1, "user_id": 2},
                                                  {"project_id": 1, "user_id": 3}])
        conn.execute(insert(tickets), [
            {"id": 1, "number": "TKT-001", "title": "VPN drops every 10 minutes",
             "description": "Since this morning the VPN disconnects every ten minutes.\n"
                            "Reconnecting works, but calls drop.",
             "status": "open", "priority": "high", "requester_id": 1, "assignee_id": 2,
             "project_id": 1, "due_at": now + timedelta(days=1), "created_at": now},
            {"id": 2, "number": "TKT-002", "title": "New laptop for onboarding",
             "description": "Erin starts Monday and needs a laptop with the standard image.",
             "status": "open", "priority": "medium", "requester_id": 5, "assignee_id": 2,
             "project_id": None, "due_at": now - timedelta(days=3), "created_at": now},
        ])
        conn.execute(insert(comments), [
            {"id": 1, "ticket_id": 1, "author_id": 2, "is_internal": False,
             "body": "Could you send the VPN client log from %APPDATA%\\vpn\\logs?"},
            {"id": 2, "ticket_id": 1, "author_id": 3, "is_internal": True,
             "body": "Firewall shows idle-timeout 600s on the concentrator; raising it."},
        ])
        events: list[tuple[str, int, int | None, dict[str, Any]]] = [
            ("ticket_created", 1, 1, {}),
            ("ticket_assigned", 1, 4, {"assignee_id": 2}),
            ("comment_added", 1, 2, {"comment_id": 1}),
            ("comment_added", 1, 3, {"comment_id": 2}),
            ("status_changed", 1, 2, {"old_status": "open", "new_status": "in_progress"}),
            ("ticket_created", 2, 5, {}),
        ]
        conn.execute(insert(outbox), [
            {"event_type": kind, "ticket_id": ticket, "actor_id": actor,
             "payload": json.dumps(payload)} for kind, ticket, actor, payload in events])


def run_demo(path: Path, console: Console) -> int:
    """Run the demo; return its exit status."""
    if path.exists():
        path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    settings = load_settings({"database_url": f"sqlite:///{path}", "email_backend": "console",
                              "admins": "Service Desk Admins <admins@example.com>",
                              "site_url": "http://localhost:8000",
                              "delivery_log": str(path.with_suffix(".email.log"))},
                             dotenv_path=None, environ={})
    engine = make_engine(settings.database_url)
    init_database(engine, contract_tables=True)
    seed(engine)
    console.rule(f"[bold]itsm-notify demo[/]: {path} — 6 outbox events, mail to the console")
    console.rule("[bold]send-pending")
    report = send_pending(settings, engine=engine, transport=ConsoleTransport(console.file))
    console.rule("[bold]overdue-scan[/]: TKT-002 is three days past due")
    overdue = overdue_scan(settings, engine=engine, transport=ConsoleTransport(console.file))
    console.rule("[bold]in-app notifications written")
    table = Table()
    for column in ("user", "event", "title", "url"):
        table.add_column(column, overflow="fold")
    with engine.connect() as conn:
        rows = conn.execute(select(users.c.username, app_notifications.c.event_type,
                                   app_notifications.c.title, app_notifications.c.url)
                            .join(users, users.c.id == app_notifications.c.user_id)
                            .order_by(app_notifications.c.id)).all()
        states: dict[str, int] = dict(conn.execute(select(outbox.c.state, func.count())
                                   .group_by(outbox.c.state)).all())
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
    console.print(f"send-pending: {report.summary()}\noverdue-scan: {overdue.summary()}\n"
                  f"outbox: {states}\n"
                  f"Next: point DATABASE_URL at your help desk's database, run "
                  f"'itsm-notify db init', then 'itsm-notify send-pending' from cron.")
    return max(report.exit_code, overdue.exit_code)
