"""overdue-scan: one digest per person listing the tickets past their due date.

Who is told (contract §2):

* an overdue ticket goes to its assignee when the assignee is active and has an email
  address. An assignee who turned overdue email off (``notification_preferences``:
  event type ``overdue``, channel ``email``, disabled) gets nothing, and the ticket is
  not passed on: it still has an owner, who chose quiet;
* a ticket with no assignee, or whose assignee is inactive, deleted or has no address,
  goes to ``ADMINS`` (each admin address its own message), since otherwise nobody would
  hear of it. An admin address that belongs to an active user account is that user:
  greeted by name, given an unsubscribe link, preferences honoured;
* one digest per address per scan: an admin who is also an assignee gets one digest
  holding both kinds of ticket.

A ticket is overdue when ``due_at`` has passed and its status is not one of
``ITSM_CLOSED_STATUSES``. The query walks the ``(due_at, status)`` index over the
range ``due_at < now``; the alert history is joined to the same range and the opt-outs
are read for the people found, so a scan costs a few queries whatever the size of the
help desk.

A scan plans its digests and, in the same transaction, remembers each (ticket,
recipient) alert (``overdue_alerts``: the due date alerted, and when) and writes each
digest as an ``overdue`` outbox event. The transaction holds the scan's lock row
(``itsm_notify_locks``), so scans on several hosts at once take turns and each alert is
written once. The digests then go through the one delivery path every event takes
(engine/sender.py): delivery rows, 4xx retries with backoff and ``ITSM_MAX_ATTEMPTS``,
5xx refusals suppressed, the same Message-ID on every retry, ``status``, ``requeue`` and
the delivery log. A digest deferred by the server is retried by send-pending, not sent
again by the next scan.

Re-alert window: a ticket is listed again for the same recipient only after
``ITSM_OVERDUE_REALERT_HOURS``, or at once when its due date moved (the new date re-arms
the alert). A digest lists only the tickets due for an alert, so an hourly scan does not
repeat what the person was told an hour ago.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, false, insert, select
from sqlalchemy.engine import Connection

from ..channels.base import Transport
from ..compose.headers import one_line
from ..config import Settings
from ..events.addresses import address_problem
from ..events.audience import EmailRecipient
from ..events.model import User
from ..events.types import MAX_LISTED
from ..source import Source, load_source
from ..states import Channel, EventState
from ..storage.database import among, database_errors, hold_lock, make_engine, utcnow
from ..storage.deliveries import insert_many, suppressed_among
from ..storage.schema import outbox, overdue_alerts, preferences
from .sender import RunReport, Sender

EVENT_TYPE = "overdue"
_CHUNK = 500  # ids per IN list when recording alerts
LOCK = "overdue-scan"


@dataclass(frozen=True)
class OverdueTicket:
    id: int
    number: str
    title: str
    priority: str
    status: str
    due_at: datetime
    assignee: User | None


@dataclass
class Digest:
    """The tickets one recipient is told about in this scan, most overdue first."""

    recipient: EmailRecipient
    tickets: list[OverdueTicket] = field(default_factory=list)

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
class OverdueReport:
    overdue_tickets: int = 0
    digests_queued: int = 0
    tickets_alerted: int = 0
    within_window: int = 0
    opted_out: int = 0
    unrouted: int = 0
    planned: list[PlannedDigest] = field(default_factory=list)
    delivery: RunReport = field(default_factory=RunReport)
    """How the digests went: the engine's report of sending them."""

    @property
    def digests_sent(self) -> int:
        return self.delivery.emails_sent

    @property
    def digests_deferred(self) -> int:
        return self.delivery.emails_deferred

    @property
    def digests_failed(self) -> int:
        return self.delivery.emails_failed

    @property
    def digests_suppressed(self) -> int:
        return self.delivery.emails_suppressed

    @property
    def digests_skipped(self) -> int:
        return self.delivery.emails_skipped

    @property
    def problems(self) -> list[str]:
        return self.delivery.problems

    @property
    def digests(self) -> int:
        return self.digests_queued

    @property
    def exit_code(self) -> int:
        """0 when every digest went out; 1 when one was deferred or failed; 2 when the
        channel refused the configuration."""
        return self.delivery.exit_code

    def summary(self) -> str:
        text = (f"{self.overdue_tickets} overdue tickets; {self.digests_queued} digests "
                f"({self.tickets_alerted} ticket alerts): {self.digests_sent} sent, "
                f"{self.digests_deferred} deferred, {self.digests_failed} failed, "
                f"{self.digests_suppressed} suppressed, {self.digests_skipped} skipped; "
                f"{self.within_window} within the re-alert window, {self.opted_out} opted out")
        if self.unrouted:
            text += f", {self.unrouted} unassigned with no ADMINS to tell"
        return text


# ------------------------------------------------------------------------ reading


def _naive_utc(moment: datetime) -> datetime:
    """Timestamps compare as naive UTC, as the tool's columns store them."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def find_overdue(source: Source, conn: Connection, now: datetime) -> list[OverdueTicket]:
    """Every overdue ticket with its assignee, most overdue first (two queries: the
    tickets past due and not closed, by the due-date index; their assignees)."""
    found = source.overdue(conn, now, source.mapping.closed_statuses)
    assignees = source.users(conn, {t.assignee_id for t in found if t.assignee_id})
    return [OverdueTicket(id=t.id, number=t.number, title=t.title,
                          priority=t.priority_label or t.priority,
                          status=t.status_label or t.status, due_at=t.due_at,
                          assignee=assignees.get(t.assignee_id) if t.assignee_id else None)
            for t in found if t.due_at is not None]


AlertHistory = dict[tuple[int, str], tuple[datetime, datetime]]
"""(ticket id, recipient) → (due date alerted, when)."""


def load_history(conn: Connection, ticket_ids: Sequence[int]) -> AlertHistory:
    """The alert history of the tickets overdue now."""
    history: AlertHistory = {}
    ids = sorted(set(ticket_ids))
    for start in range(0, len(ids), _CHUNK):
        for r in conn.execute(select(overdue_alerts).where(
                among(conn, overdue_alerts.c.ticket_id, ids[start:start + _CHUNK]))):
            history[(r.ticket_id, r.recipient)] = (_naive_utc(r.due_at),
                                                   _naive_utc(r.alerted_at))
    return history


def load_admin_accounts(source: Source, conn: Connection) -> dict[str, User]:
    """Active user accounts behind ADMINS addresses, by lower-case address: such an admin
    is greeted by name, gets an unsubscribe link and has their preferences honoured."""
    admins = [admin.email for admin in source.settings.admins]
    return source.admin_accounts(source.users(conn, (), emails=admins)) if admins else {}


def load_opted_out(conn: Connection, user_ids: Iterable[int]) -> set[int]:
    """The users among ``user_ids`` who turned overdue email off."""
    ids = sorted(set(user_ids))
    opted_out: set[int] = set()
    for start in range(0, len(ids), _CHUNK):
        opted_out.update(conn.execute(select(preferences.c.user_id).where(
            preferences.c.event_type == EVENT_TYPE, preferences.c.channel == Channel.EMAIL,
            preferences.c.enabled == false(),
            among(conn, preferences.c.user_id, ids[start:start + _CHUNK]))).scalars())
    return opted_out


# ----------------------------------------------------------------------- planning


def _user_recipient(user: User | None) -> EmailRecipient | None:
    if user is None or not user.is_active or not (user.email or "").strip():
        return None
    return EmailRecipient(address=(user.email or "").strip(), name=user.display_name,
                          first_name=user.first_name, user_id=user.id)


def alert_due(history: AlertHistory, ticket: OverdueTicket, recipient: str, now: datetime,
              window: timedelta) -> bool:
    """Whether ``recipient`` should hear of ``ticket`` now: never told, told before the
    window, or told of a different due date."""
    seen = history.get((ticket.id, recipient))
    if seen is None:
        return True
    due_at, alerted_at = seen
    return due_at != ticket.due_at or alerted_at <= now - window


def plan_digests(overdue: Iterable[OverdueTicket], settings: Settings, history: AlertHistory,
                 opted_out: set[int], now: datetime, report: OverdueReport,
                 admin_accounts: dict[str, User] | None = None) -> list[Digest]:
    """Group the overdue tickets into one digest per address (pure)."""
    window = timedelta(hours=settings.overdue_realert_hours)
    accounts = admin_accounts or {}
    admins = [_user_recipient(accounts.get(a.email.lower())) or
              EmailRecipient(address=a.email, name=a.name) for a in settings.admins]
    digests: dict[str, Digest] = {}
    for ticket in overdue:
        report.overdue_tickets += 1
        assignee = ticket.assignee
        recipient = _user_recipient(assignee)
        targets = [recipient] if recipient is not None else admins
        if not targets:
            report.unrouted += 1
        for target in targets:
            if target.user_id in opted_out:
                report.opted_out += 1
            elif not alert_due(history, ticket, target.key, now, window):
                report.within_window += 1
            else:
                digests.setdefault(target.key, Digest(target)).tickets.append(ticket)
    return list(digests.values())


def digest_subject(digest: Digest) -> str:
    """Contract §3: the ticket's subject for one, a count for several (what the digest's
    event will be sent with; shown by a dry run)."""
    if len(digest.tickets) == 1:
        ticket = digest.tickets[0]
        return f"Overdue Ticket: {one_line(ticket.title)} ({one_line(ticket.number)})"
    return f"Overdue Tickets: {len(digest.tickets)} tickets past due"


def digest_event(digest: Digest, now: datetime) -> dict[str, Any]:
    """The outbox row of one digest: an ``overdue`` event for its one recipient, listing
    the most overdue tickets (``MAX_LISTED``) and counting them all."""
    recipient = digest.recipient
    target: dict[str, Any] = {"user_id": recipient.user_id} if recipient.user_id is not None \
        else {"address": recipient.address, "name": recipient.name}
    listed = digest.tickets[:MAX_LISTED]
    return {"event_type": EVENT_TYPE, "ticket_id": listed[0].id, "actor_id": None,
            "payload": json.dumps({"recipient": target, "ticket_ids": [t.id for t in listed],
                                   "total": len(digest.tickets)}),
            "created_at": now, "available_at": now, "state": EventState.PENDING,
            "attempts": 0}


# ------------------------------------------------------------------------ the scan


class OverdueScan:
    """One scan: find, plan, and (unless previewing) remember the alerts, write the
    digests as events, and send them through the engine."""

    def __init__(self, settings: Settings, engine: Engine, *, now: datetime,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.now = _naive_utc(now)
        self.transport = transport
        self.source = load_source(settings)

    def plan(self, conn: Connection, report: OverdueReport) -> list[Digest]:
        """The digests due now (pure planning over a few queries)."""
        overdue = find_overdue(self.source, conn, self.now)
        if not overdue:
            return []
        history = load_history(conn, [t.id for t in overdue])
        accounts = load_admin_accounts(self.source, conn)
        opted_out = load_opted_out(conn, [t.assignee.id for t in overdue if t.assignee]
                                   + [user.id for user in accounts.values()])
        return plan_digests(overdue, self.settings, history, opted_out, self.now, report,
                            accounts)

    def preview(self) -> OverdueReport:
        """What a scan would send now, changing nothing."""
        report = OverdueReport()
        with self.engine.connect() as conn:
            digests = self.plan(conn, report)
        suppressed = suppressed_among(self.engine, (d.key for d in digests))
        redirect = self.settings.redirect_to
        for digest in digests:
            address = digest.recipient.address
            problem = address_problem(address)
            note = ("suppressed: the address is on the suppression list"
                    if digest.key in suppressed else f"skipped: {problem}" if problem else "")
            shown = f"{redirect} (for {address})" if redirect else address
            report.planned.append(PlannedDigest(shown, len(digest.tickets),
                                                digest_subject(digest), note))
        return report

    def run(self) -> OverdueReport:
        """Remember the alerts and write the digests in one transaction under the scan's
        lock, then send them."""
        report = OverdueReport()
        with self.engine.begin() as conn:
            hold_lock(conn, LOCK, self.now)
            digests = self.plan(conn, report)
            record_alerts(conn, digests, self.now)
            ids = write_digests(conn, digests, self.now)
        report.digests_queued = len(ids)
        report.tickets_alerted = sum(len(d.tickets) for d in digests)
        for digest in digests:
            report.planned.append(PlannedDigest(digest.recipient.address, len(digest.tickets),
                                                digest_subject(digest)))
        if ids:
            sender = Sender(self.settings, self.engine, transport=self.transport,
                            clock=lambda: self.now)
            report.delivery = sender.run(only=ids)
        return report


def write_digests(conn: Connection, digests: Sequence[Digest], now: datetime) -> list[int]:
    """Insert one outbox event per digest; their ids."""
    ids = []
    for digest in digests:
        key = conn.execute(insert(outbox).values(digest_event(digest, now))).inserted_primary_key
        assert key is not None
        ids.append(int(key[0]))
    return ids


def _chunks(items: Sequence[OverdueTicket], size: int) -> Iterator[Sequence[OverdueTicket]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def record_alerts(conn: Connection, digests: Sequence[Digest], now: datetime) -> None:
    """Remember that each digest's recipient is told of its tickets (and their due dates)
    now, replacing older records of the same (ticket, recipient)."""
    if not digests:
        return
    for digest in digests:
        for chunk in _chunks(digest.tickets, _CHUNK):
            conn.execute(delete(overdue_alerts).where(
                overdue_alerts.c.recipient == digest.key,
                among(conn, overdue_alerts.c.ticket_id, [t.id for t in chunk])))
    insert_many(conn, overdue_alerts, [
        {"ticket_id": t.id, "recipient": digest.key, "due_at": t.due_at, "alerted_at": now}
        for digest in digests for t in digest.tickets])


def overdue_scan(settings: Settings, *, dry_run: bool = False, engine: Engine | None = None,
                 transport: Transport | None = None, now: datetime | None = None
                 ) -> OverdueReport:
    """Send (or, with ``dry_run``, show) the overdue digests due at ``now`` (default: the
    current time)."""
    engine = engine or make_engine(settings.database_url)
    with database_errors(settings.database_url):
        scan = OverdueScan(settings, engine, now=now or utcnow(), transport=transport)
        return scan.preview() if dry_run else scan.run()
