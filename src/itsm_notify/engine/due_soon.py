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

Each warning goes out at most once per (ticket, threshold, due date): the scan claims
it in ``due_soon_warnings`` in the same transaction that writes the warnings as
``due_soon`` outbox events, one per recipient listing all their tickets (soonest due
first), under the scan's lock row, as overdue-scan does. A due date that moves makes
new keys, which re-arms the warnings; a warning for the new date replaces the ticket's
rows of that threshold for other dates, so a due date moved back is warned about again.
Outside business hours nothing is sent unless the ticket's priority is in
``ITSM_DUE_SOON_ANYTIME_PRIORITIES`` (default critical); the next scan in working time
finds the threshold still crossed and sends it then. A warning is never sent once the
ticket is due: overdue-scan takes over.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, false, insert, select
from sqlalchemy.engine import Connection

from ..channels.base import Transport
from ..compose.headers import one_line
from ..config import Settings
from ..events.addresses import address_problem
from ..events.audience import EmailRecipient
from ..events.types import MAX_LISTED
from ..states import Channel, EventState
from ..storage.database import among, database_errors, hold_lock, make_engine, utcnow
from ..storage.deliveries import insert_many, suppressed_among
from ..storage.schema import (
    due_soon_warnings,
    outbox,
    preferences,
    project_members,
    tickets,
    users,
)
from ..timing.business_hours import BusinessCalendar
from ..timing.thresholds import Threshold, ThresholdHit, due_warnings
from .overdue import PlannedDigest, load_admin_accounts
from .sender import RunReport, Sender

EVENT_TYPE = "due_soon"
LOCK = "due-soon-scan"
_CHUNK = 500


@dataclass(frozen=True)
class Person:
    """A user as the scan needs one: whether they can be mailed, and how."""

    id: int
    email: str | None
    name: str
    first_name: str
    is_active: bool

    @property
    def recipient(self) -> EmailRecipient | None:
        address = (self.email or "").strip()
        if not self.is_active or not address:
            return None
        return EmailRecipient(address=address, name=self.name, first_name=self.first_name,
                              user_id=self.id)


@dataclass(frozen=True)
class OpenTicket:
    """A ticket not yet due and not closed."""

    id: int
    number: str
    title: str
    priority: str
    created_at: datetime | None
    due_at: datetime
    project_id: int | None
    assignee: Person | None


@dataclass
class Warning:
    """The tickets one recipient is warned about in this scan, soonest due first, each
    with the latest threshold it crossed."""

    recipient: EmailRecipient
    tickets: list[tuple[OpenTicket, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.recipient.key


@dataclass
class DueSoonReport:
    open_tickets: int = 0
    crossed: int = 0
    """Tickets with a threshold crossed and not yet warned about."""
    waiting_for_hours: int = 0
    """Tickets that crossed one outside business hours: warned in working time."""
    warnings_queued: int = 0
    opted_out: int = 0
    unrouted: int = 0
    planned: list[PlannedDigest] = field(default_factory=list)
    delivery: RunReport = field(default_factory=RunReport)

    @property
    def problems(self) -> list[str]:
        return self.delivery.problems

    @property
    def exit_code(self) -> int:
        return self.delivery.exit_code

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


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _person(row: Any, prefix: str = "") -> Person:
    def get(name: str) -> Any:
        return getattr(row, prefix + name)

    full = f"{get('first_name') or ''} {get('last_name') or ''}".strip()
    return Person(id=get("id"), email=get("email"), name=full or get("username") or "",
                  first_name=get("first_name") or "", is_active=bool(get("is_active")))


def _not_yet_due(now: datetime, closed: Sequence[str]) -> Any:
    condition = and_(tickets.c.due_at > now, tickets.c.due_at.is_not(None))
    return and_(condition, tickets.c.status.not_in(list(closed))) if closed else condition


def find_open(conn: Connection, now: datetime, closed: Sequence[str]) -> list[OpenTicket]:
    """Tickets not closed and not yet due, soonest due first, with their assignees."""
    query = (select(tickets.c.id, tickets.c.number, tickets.c.title, tickets.c.priority,
                    tickets.c.created_at, tickets.c.due_at, tickets.c.project_id,
                    users.c.id.label("u_id"), users.c.username.label("u_username"),
                    users.c.email.label("u_email"), users.c.first_name.label("u_first_name"),
                    users.c.last_name.label("u_last_name"),
                    users.c.is_active.label("u_is_active"))
             .select_from(tickets.outerjoin(users, users.c.id == tickets.c.assignee_id))
             .where(_not_yet_due(now, closed))
             .order_by(tickets.c.due_at, tickets.c.id))
    return [OpenTicket(id=row.id, number=row.number, title=row.title,
                       priority=str(row.priority),
                       created_at=_naive_utc(row.created_at) if row.created_at else None,
                       due_at=_naive_utc(row.due_at),
                       project_id=row.project_id,
                       assignee=_person(row, "u_") if row.u_id is not None else None)
            for row in conn.execute(query)]


Claimed = set[tuple[int, str, datetime]]
"""(ticket id, threshold text, due date) of the warnings already sent."""


def load_claimed(conn: Connection, now: datetime, closed: Sequence[str]) -> Claimed:
    """The warnings sent for the tickets not yet due (joined to the same range)."""
    query = (select(due_soon_warnings.c.ticket_id, due_soon_warnings.c.threshold,
                    due_soon_warnings.c.due_at)
             .select_from(due_soon_warnings.join(
                 tickets, tickets.c.id == due_soon_warnings.c.ticket_id))
             .where(_not_yet_due(now, closed)))
    return {(row.ticket_id, row.threshold, _naive_utc(row.due_at))
            for row in conn.execute(query)}


def load_teams(conn: Connection, project_ids: Iterable[int]) -> dict[int, list[Person]]:
    """The members of each project, in user id order."""
    ids = sorted(set(project_ids))
    teams: dict[int, list[Person]] = {}
    for start in range(0, len(ids), _CHUNK):
        rows = conn.execute(
            select(project_members.c.project_id, users.c.id, users.c.username, users.c.email,
                   users.c.first_name, users.c.last_name, users.c.is_active)
            .select_from(project_members.join(users, users.c.id == project_members.c.user_id))
            .where(among(conn, project_members.c.project_id, ids[start:start + _CHUNK]))
            .order_by(project_members.c.project_id, users.c.id))
        for row in rows:
            teams.setdefault(row.project_id, []).append(_person(row))
    return teams


def load_opted_out(conn: Connection, user_ids: Iterable[int]) -> set[int]:
    """The users among ``user_ids`` who turned due-soon email off."""
    ids = sorted(set(user_ids))
    opted_out: set[int] = set()
    for start in range(0, len(ids), _CHUNK):
        opted_out.update(conn.execute(select(preferences.c.user_id).where(
            preferences.c.event_type == EVENT_TYPE, preferences.c.channel == Channel.EMAIL,
            preferences.c.enabled == false(),
            among(conn, preferences.c.user_id, ids[start:start + _CHUNK]))).scalars())
    return opted_out


# ----------------------------------------------------------------------- planning


@dataclass
class Crossing:
    """A ticket with thresholds crossed and not yet warned about."""

    ticket: OpenTicket
    hits: list[ThresholdHit]


def find_crossings(open_tickets: Iterable[OpenTicket], claimed: Claimed,
                   thresholds: tuple[Threshold, ...], calendar: BusinessCalendar,
                   anytime: set[str], now: datetime, report: DueSoonReport) -> list[Crossing]:
    """The tickets due for a warning now (pure)."""
    crossings = []
    for ticket in open_tickets:
        report.open_tickets += 1
        critical = ticket.priority.strip().lower() in anytime
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


def plan_warnings(crossings: Iterable[Crossing], settings: Settings,
                  teams: dict[int, list[Person]], admin_accounts: dict[str, Person],
                  opted_out: set[int], report: DueSoonReport) -> tuple[list[Warning],
                                                                      list[Crossing]]:
    """One warning per address (pure); and the crossings someone is told of (those are
    claimed: a ticket nobody could be told of is tried again by the next scan)."""
    admins = [(admin_accounts[a.email.lower()].recipient
               if a.email.lower() in admin_accounts else None)
              or EmailRecipient(address=a.email, name=a.name) for a in settings.admins]
    warnings: dict[str, Warning] = {}
    told: list[Crossing] = []
    for crossing in crossings:
        ticket = crossing.ticket
        assignee = ticket.assignee.recipient if ticket.assignee else None
        team = [r for p in teams.get(ticket.project_id or 0, []) if (r := p.recipient)]
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
            warnings.setdefault(target.key, Warning(target)).tickets.append((ticket, latest))
            reached = True
        if reached:
            told.append(crossing)
    return list(warnings.values()), told


def warning_subject(warning: Warning) -> str:
    """What the warning's event will be sent with (shown by a dry run)."""
    if len(warning.tickets) == 1:
        ticket = warning.tickets[0][0]
        return f"Due Soon: {one_line(ticket.title)} ({one_line(ticket.number)})"
    return f"Due Soon: {len(warning.tickets)} tickets"


def warning_event(warning: Warning, now: datetime) -> dict[str, Any]:
    """The outbox row of one warning: a ``due_soon`` event for its one recipient."""
    recipient = warning.recipient
    target: dict[str, Any] = {"user_id": recipient.user_id} if recipient.user_id is not None \
        else {"address": recipient.address, "name": recipient.name}
    listed = warning.tickets[:MAX_LISTED]
    return {"event_type": EVENT_TYPE, "ticket_id": listed[0][0].id, "actor_id": None,
            "payload": json.dumps({"recipient": target,
                                   "ticket_ids": [t.id for t, _ in listed],
                                   "thresholds": [text for _, text in listed],
                                   "total": len(warning.tickets)}),
            "created_at": now, "available_at": now, "state": EventState.PENDING,
            "attempts": 0}


# ------------------------------------------------------------------------ the scan


class DueSoonScan:
    """One scan: find, plan, and (unless previewing) claim the warnings, write them as
    events and send them through the engine."""

    def __init__(self, settings: Settings, engine: Engine, *, now: datetime,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.now = _naive_utc(now)
        self.transport = transport

    def plan(self, conn: Connection,
             report: DueSoonReport) -> tuple[list[Warning], list[Crossing]]:
        thresholds = self.settings.due_soon_thresholds
        if not thresholds:
            return [], []
        closed = self.settings.closed_statuses
        open_tickets = find_open(conn, self.now, closed)
        if not open_tickets:
            return [], []
        anytime = {p.lower() for p in self.settings.due_soon_anytime_priorities}
        crossings = find_crossings(open_tickets, load_claimed(conn, self.now, closed),
                                   thresholds, self.settings.business_calendar, anytime,
                                   self.now, report)
        if not crossings:
            return [], []
        teams = load_teams(conn, {c.ticket.project_id for c in crossings
                                  if c.ticket.project_id is not None
                                  and (c.ticket.assignee is None
                                       or c.ticket.assignee.recipient is None)})
        admin_accounts = {email: Person(id=user.id, email=user.email,
                                        name=user.display_name, first_name=user.first_name,
                                        is_active=user.is_active)
                          for email, user in load_admin_accounts(conn, self.settings).items()}
        people = [c.ticket.assignee.id for c in crossings if c.ticket.assignee] + \
            [p.id for team in teams.values() for p in team] + \
            [p.id for p in admin_accounts.values()]
        return plan_warnings(crossings, self.settings, teams, admin_accounts,
                             load_opted_out(conn, people), report)

    def preview(self) -> DueSoonReport:
        """What a scan would send now, changing nothing."""
        report = DueSoonReport()
        with self.engine.connect() as conn:
            warnings, _ = self.plan(conn, report)
        report.warnings_queued = len(warnings)  # what a run would queue
        suppressed = suppressed_among(self.engine, (w.key for w in warnings))
        redirect = self.settings.redirect_to
        for warning in warnings:
            address = warning.recipient.address
            problem = address_problem(address)
            note = ("suppressed: the address is on the suppression list"
                    if warning.key in suppressed else f"skipped: {problem}" if problem else "")
            shown = f"{redirect} (for {address})" if redirect else address
            report.planned.append(PlannedDigest(shown, len(warning.tickets),
                                                warning_subject(warning), note))
        return report

    def run(self) -> DueSoonReport:
        """Claim the warnings and write them in one transaction under the scan's lock,
        then send them."""
        report = DueSoonReport()
        with self.engine.begin() as conn:
            hold_lock(conn, LOCK, self.now)
            warnings, told = self.plan(conn, report)
            claim_warnings(conn, told, self.now)
            ids = []
            for warning in warnings:
                key = conn.execute(insert(outbox).values(
                    warning_event(warning, self.now))).inserted_primary_key
                assert key is not None
                ids.append(int(key[0]))
        report.warnings_queued = len(ids)
        for warning in warnings:
            report.planned.append(PlannedDigest(warning.recipient.address,
                                                len(warning.tickets), warning_subject(warning)))
        if ids:
            sender = Sender(self.settings, self.engine, transport=self.transport,
                            clock=lambda: self.now)
            report.delivery = sender.run(only=ids)
        return report


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


def due_soon_scan(settings: Settings, *, dry_run: bool = False, engine: Engine | None = None,
                  transport: Transport | None = None, now: datetime | None = None
                  ) -> DueSoonReport:
    """Send (or, with ``dry_run``, show) the due-soon warnings due at ``now`` (default:
    the current time)."""
    engine = engine or make_engine(settings.database_url)
    with database_errors(settings.database_url):
        scan = DueSoonScan(settings, engine, now=now or utcnow(), transport=transport)
        return scan.preview() if dry_run else scan.run()

