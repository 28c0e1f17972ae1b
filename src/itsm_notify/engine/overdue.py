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

A scan (engine/scans.py) plans its digests and, in the same transaction, remembers each
(ticket, recipient) alert (``overdue_alerts``: the due date alerted, and when) and
writes each digest as an ``overdue`` outbox event, under the scan's lock row; the
digests then go through the one delivery path every event takes. A digest deferred by
the server is retried by send-pending, not sent again by the next scan.

Re-alert window: a ticket is listed again for the same recipient only after
``ITSM_OVERDUE_REALERT_HOURS``, or at once when its due date moved (the new date re-arms
the alert). A digest lists only the tickets due for an alert, so an hourly scan does not
repeat what the person was told an hour ago.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.engine import Connection

from ..channels.base import Transport
from ..config import Settings
from ..events.model import Ticket, User
from ..source import Source
from ..source.base import naive_utc
from ..storage.database import among, database_errors, in_lists, make_engine, utcnow
from ..storage.deliveries import insert_many, load_opted_out
from ..storage.schema import overdue_alerts
from .scans import (
    Digest,
    DigestScan,
    ScanReport,
    admin_recipients,
    digest_event,
    load_admin_accounts,
    recipient_of,
)

EVENT_TYPE = "overdue"
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


OverdueDigest = Digest[OverdueTicket]


@dataclass
class OverdueReport(ScanReport):
    overdue_tickets: int = 0
    tickets_alerted: int = 0
    within_window: int = 0

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
    def digests(self) -> int:
        return self.digests_queued

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


def find_overdue(source: Source, conn: Connection, now: datetime) -> list[OverdueTicket]:
    """Every overdue ticket with its assignee, most overdue first (two queries: the
    tickets past due and not closed, by the due-date index; their assignees)."""
    found = source.due_tickets(conn, now, past=True)
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
    for ids in in_lists(ticket_ids):
        for r in conn.execute(select(overdue_alerts).where(
                among(conn, overdue_alerts.c.ticket_id, ids))):
            history[(r.ticket_id, r.recipient)] = (naive_utc(r.due_at) or r.due_at,
                                                   naive_utc(r.alerted_at) or r.alerted_at)
    return history


# ----------------------------------------------------------------------- planning


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
                 admin_accounts: dict[str, User] | None = None) -> list[OverdueDigest]:
    """Group the overdue tickets into one digest per address (pure)."""
    window = timedelta(hours=settings.overdue_realert_hours)
    admins = admin_recipients(settings, admin_accounts or {})
    digests: dict[str, OverdueDigest] = {}
    for ticket in overdue:
        report.overdue_tickets += 1
        recipient = recipient_of(ticket.assignee)
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



def record_alerts(conn: Connection, digests: Sequence[OverdueDigest], now: datetime) -> None:
    """Remember that each digest's recipient is told of its tickets (and their due dates)
    now, replacing older records of the same (ticket, recipient)."""
    if not digests:
        return
    for digest in digests:
        for ids in in_lists(t.id for t in digest.tickets):
            conn.execute(delete(overdue_alerts).where(
                overdue_alerts.c.recipient == digest.key,
                among(conn, overdue_alerts.c.ticket_id, ids)))
    insert_many(conn, overdue_alerts, [
        {"ticket_id": t.id, "recipient": digest.key, "due_at": t.due_at, "alerted_at": now}
        for digest in digests for t in digest.tickets])


# ------------------------------------------------------------------------ the scan


class OverdueScan(DigestScan[OverdueTicket, OverdueReport]):
    lock = LOCK

    def new_report(self) -> OverdueReport:
        return OverdueReport()

    def plan(self, conn: Connection, report: OverdueReport) -> list[OverdueDigest]:
        overdue = find_overdue(self.source, conn, self.now)
        if not overdue:
            return []
        history = load_history(conn, [t.id for t in overdue])
        accounts = load_admin_accounts(self.source, conn)
        opted_out = load_opted_out(conn, EVENT_TYPE,
                                   [t.assignee.id for t in overdue if t.assignee]
                                   + [user.id for user in accounts.values()])
        return plan_digests(overdue, self.settings, history, opted_out, self.now, report,
                            accounts)

    def remember(self, conn: Connection, digests: Sequence[OverdueDigest]) -> None:
        record_alerts(conn, digests, self.now)

    def event_row(self, digest: OverdueDigest) -> dict[str, Any]:
        return digest_event(EVENT_TYPE, digest.recipient, [t.id for t in digest.tickets],
                            len(digest.tickets), self.now)

    def listed(self, digest: OverdueDigest) -> list[Ticket]:
        return [Ticket(t.id, t.number, t.title, "", t.status, t.priority, None,
                       t.assignee.id if t.assignee else None, None, t.due_at, None)
                for t in digest.tickets]

    def run(self) -> OverdueReport:
        report = super().run()
        report.tickets_alerted = sum(p.tickets for p in report.planned)
        return report


def overdue_scan(settings: Settings, *, dry_run: bool = False, engine: Engine | None = None,
                 transport: Transport | None = None, now: datetime | None = None
                 ) -> OverdueReport:
    """Send (or, with ``dry_run``, show) the overdue digests due at ``now`` (default: the
    current time)."""
    engine = engine or make_engine(settings.database_url)
    with database_errors(settings.database_url):
        scan = OverdueScan(settings, engine, now=now or utcnow(), transport=transport)
        return scan.preview() if dry_run else scan.run()
