"""What the due-date scans share (overdue-scan, due-soon-scan).

A scan reads tickets by due date through the source, plans one digest per recipient
(pure), and then, in **one transaction under its lock row** (``itsm_notify_locks``),
remembers what it told whom and writes each digest as an outbox event; scans on several
hosts at once take turns, and each alert is written once. The digests then go through
the one delivery path every event takes (engine/sender.py): delivery rows, retries,
suppression, the same Message-ID on every retry, ``status``, ``requeue``, the delivery
log. A dry run plans the same digests and changes nothing.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, insert

from ..channels.base import Transport
from ..compose.render import Renderer
from ..config import Settings
from ..events.addresses import address_problem
from ..events.audience import EmailRecipient
from ..events.model import EventContext, OutboxEvent, Ticket, User
from ..events.types import MAX_LISTED, parse_payload
from ..source import Source, load_source
from ..source.base import naive_utc
from ..states import EventState
from ..storage.database import hold_lock
from ..storage.deliveries import suppressed_among
from ..storage.schema import outbox
from .sender import RunReport, Sender

Item = TypeVar("Item")


@dataclass
class Digest(Generic[Item]):
    """What one recipient is told in this scan: its items, in the order listed."""

    recipient: EmailRecipient
    tickets: list[Item] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.recipient.key


@dataclass
class PlannedDigest:
    """One row of a dry run, or of a scan's record of what it did."""

    recipient: str
    tickets: int
    subject: str
    note: str = ""


@dataclass
class ScanReport:
    """What every scan reports: its digests, and how sending them went."""

    digests_queued: int = 0
    opted_out: int = 0
    unrouted: int = 0
    planned: list[PlannedDigest] = field(default_factory=list)
    delivery: RunReport = field(default_factory=RunReport)
    """How the digests went: the engine's report of sending them."""

    @property
    def problems(self) -> list[str]:
        return self.delivery.problems

    @property
    def exit_code(self) -> int:
        """0 when every digest went out; 1 when one was deferred or failed; 2 when the
        channel refused the configuration."""
        return self.delivery.exit_code


def recipient_of(user: User | None) -> EmailRecipient | None:
    """A user as a digest's recipient, or None when they cannot be mailed."""
    address = (user.email or "").strip() if user is not None else ""
    if user is None or not user.is_active or not address:
        return None
    return EmailRecipient(address=address, name=user.display_name,
                          first_name=user.first_name, user_id=user.id, locale=user.locale,
                          time_zone=user.time_zone)


def admin_recipients(settings: Settings, accounts: dict[str, User]) -> list[EmailRecipient]:
    """``ADMINS``, each the user with that address when there is one."""
    return [recipient_of(accounts.get(a.email.lower())) or
            EmailRecipient(address=a.email, name=a.name) for a in settings.admins]


def load_admin_accounts(source: Source, conn: Connection) -> dict[str, User]:
    """Active user accounts behind ADMINS addresses, by lower-case address: such an admin
    is greeted by name, gets an unsubscribe link and has their preferences honoured."""
    return source.admin_accounts(source.admin_users(conn))


def digest_event(event_type: str, recipient: EmailRecipient, ticket_ids: Sequence[int],
                 total: int, now: datetime, **extra: Any) -> dict[str, Any]:
    """The outbox row of one digest: an event for its one recipient (a user, or an
    address with no account), listing at most ``MAX_LISTED`` tickets and counting all."""
    target: dict[str, Any] = {"user_id": recipient.user_id} if recipient.user_id is not None \
        else {"address": recipient.address, "name": recipient.name}
    return {"event_type": event_type, "ticket_id": ticket_ids[0], "actor_id": None,
            "payload": json.dumps({"recipient": target,
                                   "ticket_ids": list(ticket_ids[:MAX_LISTED]),
                                   "total": total, **extra}),
            "created_at": now, "available_at": now, "state": EventState.PENDING,
            "attempts": 0}


Report = TypeVar("Report", bound=ScanReport)


class DigestScan(ABC, Generic[Item, Report]):
    """One scan: plan the digests, then preview them or (under the lock) remember them,
    write them as events and send them."""

    lock: str
    """The scan's lock row."""

    def __init__(self, settings: Settings, engine: Engine, *, now: datetime,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.now = naive_utc(now) or now
        self.transport = transport
        self.source = load_source(settings)
        self.renderer = Renderer(settings)

    @abstractmethod
    def new_report(self) -> Report: ...

    @abstractmethod
    def plan(self, conn: Connection, report: Report) -> list[Digest[Item]]:
        """The digests due now."""

    @abstractmethod
    def remember(self, conn: Connection, digests: Sequence[Digest[Item]]) -> None:
        """Record what the digests tell, in the transaction that writes them."""

    @abstractmethod
    def event_row(self, digest: Digest[Item]) -> dict[str, Any]:
        """The outbox row of one digest."""

    @abstractmethod
    def listed(self, digest: Digest[Item]) -> list[Ticket]:
        """The digest's tickets, in the order it lists them."""

    def subject(self, digest: Digest[Item]) -> str:
        """What the digest's event will be sent with (shown by a dry run and in the
        scan's record): its event type's subject, in its reader's language."""
        row = self.event_row(digest)
        tickets = self.listed(digest)[:MAX_LISTED]
        ctx = EventContext(
            event=OutboxEvent(0, row["event_type"], row["ticket_id"], None, row["payload"]),
            payload=parse_payload(row["event_type"], row["payload"]), ticket=tickets[0],
            tickets=tuple(tickets), users={})
        return self.renderer.subject(ctx, self.renderer.language_of(digest.recipient))

    def preview(self) -> Report:
        """What a scan would send now, changing nothing."""
        report = self.new_report()
        with self.engine.connect() as conn:
            digests = self.plan(conn, report)
            suppressed = suppressed_among(conn, (d.key for d in digests))
        report.digests_queued = len(digests)
        redirect = self.settings.redirect_to
        for digest in digests:
            address = digest.recipient.address
            problem = address_problem(address)
            note = ("suppressed: the address is on the suppression list"
                    if digest.key in suppressed else f"skipped: {problem}" if problem else "")
            shown = f"{redirect} (for {address})" if redirect else address
            report.planned.append(PlannedDigest(shown, len(digest.tickets),
                                                self.subject(digest), note))
        return report

    def run(self) -> Report:
        """Remember and write the digests in one transaction under the scan's lock, then
        send them."""
        report = self.new_report()
        with self.engine.begin() as conn:
            hold_lock(conn, self.lock, self.now)
            digests = self.plan(conn, report)
            self.remember(conn, digests)
            ids = []
            for digest in digests:
                key = conn.execute(insert(outbox).values(self.event_row(digest))
                                   ).inserted_primary_key
                assert key is not None
                ids.append(int(key[0]))
        report.digests_queued = len(ids)
        for digest in digests:
            report.planned.append(PlannedDigest(digest.recipient.address,
                                                len(digest.tickets), self.subject(digest)))
        if ids:
            sender = Sender(self.settings, self.engine, transport=self.transport,
                            clock=lambda: self.now)
            report.delivery = sender.run(only=ids)
        return report
