"""due-soon-scan: warn before a ticket's due date passes, not only after.

Thresholds come from ``ITSM_DUE_SOON`` (``4h``: that long before due; ``80%``: when that
share of the time from creation to due has passed), counted in working time when
``ITSM_BUSINESS_HOURS`` is set (timing/thresholds.py, timing/business_hours.py).

Who is told:

* the assignee, when active with an email address;
* else (unassigned, or an assignee who cannot be reached) the ticket's team: the
  members of its project who are active with an address;
* else ``ADMINS`` (an admin address that belongs to an active user is that user).

A user who turned ``due_soon`` email off gets nothing, and the ticket is not passed on.

Each warning goes out at most once per (ticket, threshold, due date): the scan
(engine/scans.py) claims it in ``due_soon_warnings`` in the same transaction that
writes the warnings as ``due_soon`` outbox events, one per recipient listing all their
tickets (soonest due first), under the scan's lock row, as overdue-scan does. A due
date that moves makes new keys, which re-arms the warnings; a warning for the new date
replaces the ticket's rows of that threshold for other dates, so a due date moved back
is warned about again. Outside business hours nothing is sent unless the ticket's
priority (as stored, or its label) is in ``ITSM_DUE_SOON_ANYTIME_PRIORITIES`` (default
critical); the next scan in working time finds the threshold still crossed and sends it
then. A warning is never sent once the
ticket is due: overdue-scan takes over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.engine import Connection

from ..channels.base import Transport
from ..config import Settings
from ..events.model import Ticket, User
from ..events.types import MAX_LISTED
from ..source.base import naive_utc
from ..storage.database import among, database_errors, in_lists, make_engine, utcnow
from ..storage.deliveries import insert_many, load_opted_out
from ..storage.schema import due_soon_warnings
from ..timing.business_hours import BusinessCalendar
from ..timing.thresholds import Threshold, ThresholdHit, due_warnings
from .scans import (
    Digest,
    DigestScan,
    ScanReport,
    admin_recipients,
    digest_event,
    load_admin_accounts,
    recipient_of,
)

EVENT_TYPE = "due_soon"
LOCK = "due-soon-scan"

Warned = tuple[Ticket, str]
"""A ticket and the latest threshold it crossed."""
Warning = Digest[Warned]


@dataclass
class DueSoonReport(ScanReport):
    open_tickets: int = 0
    crossed: int = 0
    """Tickets with a threshold crossed and not yet warned about."""
    waiting_for_hours: int = 0
    """Tickets that crossed one outside business hours: warned in working time."""

    @property
    def warnings_queued(self) -> int:
        return self.digests_queued

    def summary(self) -> str:
        text = (f"{self.open_tickets} open tickets with a due date; {self.crossed} crossed a "
                f"threshold; {self.warnings_queued} warnings: {self.delivery.emails_sent} "
                f"sent, {self.delivery.emails_deferred} deferred, {self.delivery.emails_failed}"
                f" failed; {self.waiting_for_hours} wait for business hours, "
                f"{self.opted_out} opted out")
        if self.unrouted:
            text += f", {self.unrouted} with nobody to tell"
        return text


# ------------------------------------------------------------------------ reading


Claimed = set[tuple[int, str, datetime]]
"""(ticket id, threshold text, due date) of the warnings already sent."""


def load_claimed(conn: Connection, ticket_ids: Sequence[int]) -> Claimed:
    """The warnings sent for these tickets."""
    claimed: Claimed = set()
    for ids in in_lists(ticket_ids):
        for row in conn.execute(select(due_soon_warnings).where(
                among(conn, due_soon_warnings.c.ticket_id, ids))):
            claimed.add((row.ticket_id, row.threshold, naive_utc(row.due_at) or row.due_at))
    return claimed


# ----------------------------------------------------------------------- planning


@dataclass
class Crossing:
    """A ticket with thresholds crossed and not yet warned about."""

    ticket: Ticket
    hits: list[ThresholdHit]


def _anytime(ticket: Ticket, anytime: set[str]) -> bool:
    """Whether the ticket's priority, as stored or as its label, is warned at any time."""
    return bool({ticket.priority.strip().lower(), ticket.priority_label.strip().lower()}
                & anytime)


def find_crossings(open_tickets: Iterable[Ticket], claimed: Claimed,
                   thresholds: tuple[Threshold, ...], calendar: BusinessCalendar,
                   anytime: set[str], now: datetime, report: DueSoonReport) -> list[Crossing]:
    """The tickets due for a warning now (pure)."""
    crossings = []
    for ticket in open_tickets:
        report.open_tickets += 1
        critical = _anytime(ticket, anytime)
        hits = [hit for hit in due_warnings(ticket, now, thresholds, calendar,
                                            critical=critical)
                if (ticket.id, *hit.key) not in claimed]
        if hits:
            crossings.append(Crossing(ticket, hits))
        elif not critical and any((ticket.id, *hit.key) not in claimed for hit in due_warnings(
                ticket, now, thresholds, calendar, critical=True)):
            report.waiting_for_hours += 1
    report.crossed = len(crossings)
    return crossings


def plan_warnings(crossings: Iterable[Crossing], settings: Settings, users: dict[int, User],
                  teams: dict[int, list[int]], admin_accounts: dict[str, User],
                  opted_out: set[int], report: DueSoonReport
                  ) -> tuple[list[Warning], list[Crossing]]:
    """One warning per address (pure); and the crossings someone is told of (those are
    claimed: a ticket nobody could be told of is tried again by the next scan)."""
    admins = admin_recipients(settings, admin_accounts)
    warnings: dict[str, Warning] = {}
    told: list[Crossing] = []
    for crossing in crossings:
        ticket = crossing.ticket
        assignee = recipient_of(users.get(ticket.assignee_id)) \
            if ticket.assignee_id is not None else None
        team = [r for member in teams.get(ticket.project_id or 0, [])
                if (r := recipient_of(users.get(member)))]
        targets = [assignee] if assignee else team or admins
        if not targets:
            report.unrouted += 1
            continue
        reached = False
        for target in targets:
            if target.user_id in opted_out:
                report.opted_out += 1
                continue
            latest = crossing.hits[-1].threshold.text
            warnings.setdefault(target.key, Digest(target)).tickets.append((ticket, latest))
            reached = True
        if reached:
            told.append(crossing)
    return list(warnings.values()), told



def claim_warnings(conn: Connection, told: Sequence[Crossing], now: datetime) -> None:
    """Remember the warnings sent (ticket, threshold, due date), replacing the rows of
    the same ticket and threshold for other due dates; forget those of dates passed."""
    conn.execute(delete(due_soon_warnings).where(due_soon_warnings.c.due_at <= now))
    for crossing in told:
        conn.execute(delete(due_soon_warnings).where(
            due_soon_warnings.c.ticket_id == crossing.ticket.id,
            due_soon_warnings.c.threshold.in_([hit.threshold.text for hit in crossing.hits]),
            due_soon_warnings.c.due_at != crossing.ticket.due_at))
    insert_many(conn, due_soon_warnings, [
        {"ticket_id": crossing.ticket.id, "threshold": hit.threshold.text,
         "due_at": crossing.ticket.due_at, "warned_at": now}
        for crossing in told for hit in crossing.hits])


# ------------------------------------------------------------------------ the scan


class DueSoonScan(DigestScan[Warned, DueSoonReport]):
    lock = LOCK

    def __init__(self, settings: Settings, engine: Engine, *, now: datetime,
                 transport: Transport | None = None) -> None:
        super().__init__(settings, engine, now=now, transport=transport)
        self._told: list[Crossing] = []

    def new_report(self) -> DueSoonReport:
        return DueSoonReport()

    def plan(self, conn: Connection, report: DueSoonReport) -> list[Warning]:
        self._told = []
        thresholds = self.settings.due_soon_thresholds
        if not thresholds:
            return []
        open_tickets = self.source.due_tickets(conn, self.now, past=False)
        if not open_tickets:
            return []
        anytime = {p.lower() for p in self.settings.due_soon_anytime_priorities}
        crossings = find_crossings(open_tickets, load_claimed(conn, [t.id for t in open_tickets]),
                                   thresholds, self.settings.business_calendar, anytime,
                                   self.now, report)
        if not crossings:
            return []
        assignees = {c.ticket.assignee_id for c in crossings if c.ticket.assignee_id}
        users = self.source.users(conn, assignees)
        teams = self.source.team_members(conn, {
            c.ticket.project_id for c in crossings if c.ticket.project_id is not None
            and recipient_of(users.get(c.ticket.assignee_id or 0)) is None})
        users |= self.source.users(conn, {m for team in teams.values() for m in team} - set(users))
        accounts = load_admin_accounts(self.source, conn)
        people = set(users) | {user.id for user in accounts.values()}
        warnings, self._told = plan_warnings(crossings, self.settings, users, teams, accounts,
                                             load_opted_out(conn, EVENT_TYPE, people), report)
        return warnings

    def remember(self, conn: Connection, digests: Sequence[Warning]) -> None:
        claim_warnings(conn, self._told, self.now)

    def event_row(self, digest: Warning) -> dict[str, Any]:
        return digest_event(EVENT_TYPE, digest.recipient, [t.id for t, _ in digest.tickets],
                            len(digest.tickets), self.now,
                            thresholds=[text for _, text in digest.tickets[:MAX_LISTED]])

    def listed(self, digest: Warning) -> list[Ticket]:
        return [ticket for ticket, _ in digest.tickets]


def due_soon_scan(settings: Settings, *, dry_run: bool = False, engine: Engine | None = None,
                  transport: Transport | None = None, now: datetime | None = None
                  ) -> DueSoonReport:
    """Send (or, with ``dry_run``, show) the due-soon warnings due at ``now`` (default:
    the current time)."""
    engine = engine or make_engine(settings.database_url)
    with database_errors(settings.database_url):
        scan = DueSoonScan(settings, engine, now=now or utcnow(), transport=transport)
        return scan.preview() if dry_run else scan.run()
