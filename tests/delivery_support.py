"""Helpers for the delivery-guarantee tests (concurrency, faults, operations).

A bulk help desk (many tickets, each with one ``ticket_created`` event), the expected
(Message-ID, recipient) of every email, what an ``SmtpSink`` received keyed the same
way, and real ``send-pending`` worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from contract_app import utcnow
from itsm_notify.compose.render import message_id
from itsm_notify.states import Channel, DeliveryState
from itsm_notify.storage import schema
from smtp_server import SmtpSink

ADMIN = "ops@example.com"
#: the domain of the default DEFAULT_FROM_EMAIL, which Message-IDs are made with
MESSAGE_ID_DOMAIN = "localhost"

EmailKey = tuple[str, str]  # (Message-ID, envelope recipient)


@dataclass(frozen=True)
class BulkDesk:
    """What ``seed_bulk`` created: event ids and the emails they must produce."""

    event_ids: list[int]
    #: event id → the addresses that must get that event's email
    recipients: dict[int, tuple[str, ...]]
    #: event id → the user ids that must get an in-app row
    in_app: dict[int, tuple[int, ...]]

    @property
    def expected_emails(self) -> set[EmailKey]:
        return {(message_id(event_id, address, MESSAGE_ID_DOMAIN), address)
                for event_id, addresses in self.recipients.items() for address in addresses}

    @property
    def expected_in_app(self) -> int:
        return sum(len(users) for users in self.in_app.values())


def seed_bulk(engine: Engine, events: int, *, users: int = 40) -> BulkDesk:
    """``events`` tickets, each with one ``ticket_created`` event (actor None).

    Every ticket has a requester; every other one an assignee too. With ``ADMINS`` set
    to ``ADMIN`` each event mails 2 or 3 addresses, and gives each user an in-app row.
    """
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.users), [
            {"username": f"user{i}", "email": f"user{i}@example.com", "first_name": f"U{i}"}
            for i in range(users)])
        user_rows = conn.execute(sa.select(schema.users.c.id, schema.users.c.email)
                                 .order_by(schema.users.c.id)).all()
        ids = [row.id for row in user_rows]
        email = {row.id: row.email for row in user_rows}
        now = utcnow()
        conn.execute(sa.insert(schema.tickets), [
            {"number": f"BULK-{i:05d}", "title": f"Printer {i} is jammed",
             "requester_id": ids[i % users],
             "assignee_id": ids[(i + 1) % users] if i % 2 == 0 else None,
             "created_at": now}
            for i in range(events)])
        tickets = conn.execute(sa.select(schema.tickets.c.id, schema.tickets.c.requester_id,
                                         schema.tickets.c.assignee_id)
                               .order_by(schema.tickets.c.id)).all()
        conn.execute(sa.insert(schema.outbox), [
            {"event_type": "ticket_created", "ticket_id": t.id, "actor_id": None,
             "payload": "{}"} for t in tickets])
        event_rows = conn.execute(sa.select(schema.outbox.c.id, schema.outbox.c.ticket_id)
                                  .order_by(schema.outbox.c.id)).all()
    by_ticket = {t.id: t for t in tickets}
    recipients: dict[int, tuple[str, ...]] = {}
    in_app: dict[int, tuple[int, ...]] = {}
    for row in event_rows:
        ticket = by_ticket[row.ticket_id]
        people = [ticket.requester_id] + ([ticket.assignee_id] if ticket.assignee_id else [])
        recipients[row.id] = (*(email[p] for p in people), ADMIN)
        in_app[row.id] = tuple(people)
    return BulkDesk(event_ids=[row.id for row in event_rows], recipients=recipients,
                    in_app=in_app)


def received(sink: SmtpSink) -> Counter[EmailKey]:
    """How many times the sink accepted each (Message-ID, recipient)."""
    return Counter((str(m.message["Message-ID"]), rcpt) for m in sink.messages
                   for rcpt in m.rcpt_tos)


def duplicates(counts: Counter[EmailKey]) -> int:
    """Extra copies beyond the first, over all emails."""
    return sum(n - 1 for n in counts.values() if n > 1)


def count_by_state(engine: Engine, table: sa.Table) -> dict[str, int]:
    with engine.connect() as conn:
        return {state: count for state, count in conn.execute(
            sa.select(table.c.state, sa.func.count()).group_by(table.c.state))}


def sent_deliveries(engine: Engine) -> set[EmailKey]:
    """(Message-ID, recipient) of every email delivery the database records as sent."""
    with engine.connect() as conn:
        return {(row.message_id, row.recipient) for row in conn.execute(
            sa.select(schema.deliveries.c.message_id, schema.deliveries.c.recipient)
            .where(schema.deliveries.c.channel == Channel.EMAIL,
                   schema.deliveries.c.state == DeliveryState.SENT))}


WORKER = [sys.executable, "-m", "itsm_notify", "send-pending"]


def worker_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """The process environment plus the tool's settings (by environment name)."""
    env = dict(os.environ)
    env.update({name: str(value) for name, value in settings.items()})
    return env


def start_workers(count: int, settings: Mapping[str, Any], cwd: Path,
                  args: Sequence[str] = ()) -> list[subprocess.Popen[str]]:
    """``count`` real ``itsm-notify send-pending`` processes, started together."""
    env = worker_env(settings)
    return [subprocess.Popen([*WORKER, *args], env=env, cwd=cwd, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(count)]


def finish(workers: Sequence[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    """Wait for every worker; return their stderr. Fails loudly on a crash."""
    outputs = []
    for proc in workers:
        _, stderr = proc.communicate(timeout=timeout)
        assert "Traceback" not in stderr, stderr
        outputs.append(stderr)
    return outputs
