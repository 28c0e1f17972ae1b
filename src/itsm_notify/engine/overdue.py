"""overdue-scan: one digest per person listing the tickets past their due date.

Who is told (contract §2):

* an overdue ticket goes to its assignee when the assignee is active and has an email
  address. An assignee who turned overdue email off (``notification_preferences``:
  event type ``overdue``, channel ``email``, disabled) gets nothing, and the ticket is
  not passed on: it still has an owner, who chose quiet;
* a ticket with no assignee, or whose assignee is inactive, deleted or has no address,
  goes to ``ADMINS`` (each admin address its own message), since otherwise nobody would
  hear of it. An admin address that belongs to an active user account is that user, as
  in send-pending: greeted by name, given an unsubscribe link, preferences honoured;
* one digest per address per scan: an admin who is also an assignee gets one digest
  holding both kinds of ticket.

A ticket is overdue when ``due_at`` has passed and its status is not one of
``ITSM_CLOSED_STATUSES``. The query walks the ``(due_at, status)`` index over the
range ``due_at < now``, reading the status from the index; the alert history is joined
to the same range and the opt-outs are read for the people found, so a scan costs a few
queries whatever the size of the help desk.

Re-alert window: ``overdue_alerts`` remembers, per (ticket, recipient), the due date
alerted and when. A ticket is listed again for the same recipient only after
``ITSM_OVERDUE_REALERT_HOURS``, or at once when its due date moved (the new date
re-arms the alert). A digest lists only the tickets due for an alert, so an hourly
scan does not repeat what the person was told an hour ago. An alert is recorded only
once the transport accepted the digest, a group at a time as in send-pending (a scan
killed meanwhile sends at most ``pipeline.MAX_UNRECORDED`` plus one per SMTP connection
again, with the same Message-IDs): a deferred or failed digest is tried again by the
next scan.

Run the scan from one host (cron or ``itsm-notify scheduler``); two scans at the same
moment may both send a digest, though with the same Message-ID, which mail systems
commonly treat as one message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, Select, and_, delete, false, func, select, true
from sqlalchemy.engine import Connection

from ..channels import make_transport
from ..channels.base import DEFERRED, FAILED, SENT, Outcome, Outgoing, Transport
from ..compose.headers import one_line
from ..compose.render import (
    RenderedEmail,
    Renderer,
    display_time,
    message_id,
    recipient_variables,
    thread_id,
)
from ..config import Settings
from ..events.addresses import address_problem
from ..events.audience import EmailRecipient
from ..events.model import User
from ..ops.unsubscribe import unsubscribe_url
from ..storage.database import among, database_errors, make_engine, utcnow
from ..storage.deliveries import insert_many, record_outcomes, suppressed_among
from ..storage.schema import EMAIL, overdue_alerts, preferences, tickets, users
from .delivery_log import log_deliveries, setup_delivery_log
from .pipeline import Batch, Pipeline
from .retry import rate_limiter

EVENT_TYPE = "overdue"
TEMPLATE = "overdue_alert"
MAX_LISTED = 100
"""Tickets listed in one digest; the rest are counted ("and 40 more")."""
_CHUNK = 500  # ids per IN list when recording alerts


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
    digests_sent: int = 0
    digests_deferred: int = 0
    digests_failed: int = 0
    digests_suppressed: int = 0
    digests_skipped: int = 0
    tickets_alerted: int = 0
    within_window: int = 0
    opted_out: int = 0
    unrouted: int = 0
    problems: list[str] = field(default_factory=list)
    planned: list[PlannedDigest] = field(default_factory=list)

    @property
    def digests(self) -> int:
        return (self.digests_sent + self.digests_deferred + self.digests_failed
                + self.digests_suppressed + self.digests_skipped)

    @property
    def exit_code(self) -> int:
        """0 when every digest went out; 1 when one was deferred or failed."""
        return 1 if self.digests_deferred or self.digests_failed or self.problems else 0

    def summary(self) -> str:
        text = (f"{self.overdue_tickets} overdue tickets; digests {self.digests_sent} sent, "
                f"{self.digests_deferred} deferred, {self.digests_failed} failed, "
                f"{self.digests_suppressed} suppressed, {self.digests_skipped} skipped; "
                f"{self.tickets_alerted} ticket alerts sent, {self.within_window} within the "
                f"re-alert window, {self.opted_out} opted out")
        if self.unrouted:
            text += f", {self.unrouted} unassigned with no ADMINS to tell"
        return text


# ------------------------------------------------------------------------ reading


def _naive_utc(moment: datetime) -> datetime:
    """Timestamps compare as naive UTC, as the tool's columns store them."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _overdue_filter(now: datetime, closed: Sequence[str]) -> Any:
    """Past due and not closed: a range on ``due_at`` first, so the index does the work."""
    condition = tickets.c.due_at < now
    return and_(condition, tickets.c.status.not_in(list(closed))) if closed else condition


def overdue_query(now: datetime, closed: Sequence[str]) -> Select[Any]:
    """Overdue tickets with their assignees, most overdue first: a walk of the
    ``(due_at, status)`` index over ``due_at < now``."""
    return (
        select(tickets.c.id, tickets.c.number, tickets.c.title, tickets.c.priority,
               tickets.c.status, tickets.c.due_at,
               users.c.id.label("u_id"), users.c.username, users.c.email, users.c.first_name,
               users.c.last_name, users.c.is_active, users.c.is_manager, users.c.locale)
        .select_from(tickets.outerjoin(users, users.c.id == tickets.c.assignee_id))
        .where(_overdue_filter(now, closed))
        .order_by(tickets.c.due_at, tickets.c.id)
    )


def find_overdue(engine: Engine, now: datetime, closed: Sequence[str]) -> list[OverdueTicket]:
    """Every overdue ticket with its assignee, most overdue first (one query)."""
    with engine.connect() as conn:
        rows = conn.execute(overdue_query(now, closed)).all()
    found = []
    for row in rows:
        assignee = None if row.u_id is None else _to_user(row, row.u_id)
        found.append(OverdueTicket(id=row.id, number=row.number, title=row.title,
                                   priority=row.priority, status=row.status,
                                   due_at=_naive_utc(row.due_at), assignee=assignee))
    return found


def _to_user(row: Any, user_id: int) -> User:
    return User(id=user_id, username=row.username, email=row.email,
                first_name=row.first_name or "", last_name=row.last_name or "",
                is_active=bool(row.is_active), is_manager=bool(row.is_manager),
                locale=row.locale)


AlertHistory = dict[tuple[int, str], tuple[datetime, datetime]]
"""(ticket id, recipient) → (due date alerted, when)."""


def load_history(engine: Engine, now: datetime, closed: Sequence[str]) -> AlertHistory:
    """The alert history of the tickets overdue now (joined to the same range)."""
    query = (select(overdue_alerts.c.ticket_id, overdue_alerts.c.recipient,
                    overdue_alerts.c.due_at, overdue_alerts.c.alerted_at)
             .select_from(overdue_alerts.join(tickets,
                                              tickets.c.id == overdue_alerts.c.ticket_id))
             .where(_overdue_filter(now, closed)))
    with engine.connect() as conn:
        return {(r.ticket_id, r.recipient): (_naive_utc(r.due_at), _naive_utc(r.alerted_at))
                for r in conn.execute(query)}


def load_admin_accounts(engine: Engine, settings: Settings) -> dict[str, User]:
    """Active user accounts behind ADMINS addresses, by lower-case address: such an admin
    is greeted by name, gets an unsubscribe link and has their preferences honoured."""
    wanted = sorted({admin.email.lower() for admin in settings.admins})
    if not wanted:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(users).where(func.lower(users.c.email).in_(wanted),
                                                users.c.is_active == true()))
        return {row.email.strip().lower(): _to_user(row, row.id) for row in rows}


def load_opted_out(engine: Engine, user_ids: Iterable[int]) -> set[int]:
    """The users among ``user_ids`` who turned overdue email off."""
    ids = sorted(set(user_ids))
    opted_out: set[int] = set()
    with engine.connect() as conn:
        for start in range(0, len(ids), _CHUNK):
            opted_out.update(conn.execute(select(preferences.c.user_id).where(
                preferences.c.event_type == EVENT_TYPE, preferences.c.channel == EMAIL,
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
    """Contract §3: the ticket's subject for one, a count for several."""
    if len(digest.tickets) == 1:
        ticket = digest.tickets[0]
        return f"Overdue Ticket: {one_line(ticket.title)} ({one_line(ticket.number)})"
    return f"Overdue Tickets: {len(digest.tickets)} tickets past due"


def overdue_for(due_at: datetime, now: datetime) -> str:
    """How long past due, in the largest whole unit: "3 days overdue", "1 hour overdue"."""
    seconds = max(0, int((now - due_at).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            amount = seconds // size
            return f"{amount} {unit}{'s' if amount != 1 else ''} overdue"
    return "just overdue"


# ------------------------------------------------------------------------ the scan


class OverdueScan:
    """One scan: find, plan, and (unless previewing) send and remember."""

    def __init__(self, settings: Settings, engine: Engine, *, now: datetime,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.now = _naive_utc(now)
        self.transport = transport
        self.renderer = Renderer(settings)

    def plan(self, report: OverdueReport) -> tuple[list[Digest], set[str]]:
        """The digests due now and the suppressed addresses among their recipients."""
        closed = self.settings.closed_statuses
        overdue = find_overdue(self.engine, self.now, closed)
        if not overdue:
            return [], set()
        history = load_history(self.engine, self.now, closed)
        accounts = load_admin_accounts(self.engine, self.settings)
        opted_out = load_opted_out(self.engine, [t.assignee.id for t in overdue if t.assignee]
                                   + [user.id for user in accounts.values()])
        digests = plan_digests(overdue, self.settings, history, opted_out, self.now, report,
                               accounts)
        return digests, suppressed_among(self.engine, (d.key for d in digests))

    def preview(self) -> OverdueReport:
        """What a scan would send now, changing nothing."""
        report = OverdueReport()
        digests, suppressed = self.plan(report)
        for digest in digests:
            note = self._skip_reason(digest, suppressed) or ""
            report.planned.append(PlannedDigest(self._shown(digest), len(digest.tickets),
                                                digest_subject(digest), note))
        return report

    def run(self) -> OverdueReport:
        report = OverdueReport()
        setup_delivery_log(self.settings.delivery_log)  # skipped digests are logged too
        digests, suppressed = self.plan(report)
        to_send: list[tuple[Digest, str]] = []
        skipped: list[str] = []
        for digest in digests:
            reason = self._skip_reason(digest, suppressed)
            subject = digest_subject(digest)
            report.planned.append(PlannedDigest(self._shown(digest), len(digest.tickets),
                                                subject, reason or ""))
            if reason:
                report.digests_suppressed += digest.key in suppressed
                report.digests_skipped += digest.key not in suppressed
                skipped.append(self._log_line(digest, reason.split(":")[0], None, reason))
                continue
            to_send.append((digest, subject))
        log_deliveries(skipped)
        if to_send:
            self._deliver(to_send, report)
        return report

    # ---------------------------------------------------------------- messages

    def message(self, digest: Digest, subject: str) -> bytes:
        """The digest's email: the contract's headers; one ticket threads with it."""
        settings = self.settings
        listed = digest.tickets[:MAX_LISTED]
        unsubscribe = unsubscribe_url(settings.site_url, settings.secret_key,
                                      digest.recipient.user_id, EVENT_TYPE)
        variables = {
            "site_name": settings.site_name, "site_url": settings.site_url,
            "event_type": EVENT_TYPE, **recipient_variables(digest.recipient),
            "unsubscribe_url": unsubscribe, "count": len(digest.tickets),
            "tickets": [SimpleNamespace(
                number=t.number, title=t.title, priority=t.priority, status=t.status,
                url=settings.ticket_url(t.id), overdue_for=overdue_for(t.due_at, self.now),
                due_at_display=display_time(t.due_at)) for t in listed],
        }
        text, html = self.renderer.render(TEMPLATE, variables)
        single = digest.tickets[0] if len(digest.tickets) == 1 else None
        return self.renderer.compose(
            RenderedEmail(subject=subject, text=text, html=html), digest.recipient,
            event_type_name=EVENT_TYPE, ticket_number=single.number if single else None,
            msg_id=self._message_id(digest),
            thread=thread_id(single.id, settings.from_domain) if single else None,
            unsubscribe_url=unsubscribe, now=self.now)

    def _message_id(self, digest: Digest) -> str:
        """Stable for the same digest (recipient and tickets) within one re-alert window,
        so a digest retried by the next scan keeps its Message-ID."""
        slot_seconds = max(self.settings.overdue_realert_hours, 1.0) * 3600
        slot = int(self.now.replace(tzinfo=UTC).timestamp() // slot_seconds)
        content = ",".join(f"{t.id}@{t.due_at.isoformat()}" for t in digest.tickets)
        tickets_hash = hashlib.sha256(content.encode()).hexdigest()[:12]
        return message_id(f"overdue-{slot}-{tickets_hash}", digest.key,
                          self.settings.from_domain)

    def _shown(self, digest: Digest) -> str:
        address = digest.recipient.address
        redirect = self.settings.redirect_to
        return f"{redirect} (for {address})" if redirect else address

    @staticmethod
    def _skip_reason(digest: Digest, suppressed: set[str]) -> str | None:
        if digest.key in suppressed:
            return "suppressed: the address is on the suppression list"
        problem = address_problem(digest.recipient.address)
        return f"skipped: {problem}" if problem else None

    # ---------------------------------------------------------------- sending

    def _deliver(self, to_send: list[tuple[Digest, str]], report: OverdueReport) -> None:
        """Render the digests and send them as send-pending sends (engine/pipeline.py): the
        sessions send while the next digests render, and the recorder remembers the
        accepted digests' alerts a group at a time."""
        settings = self.settings
        transport = self.transport or make_transport(settings)
        by_key = {digest.key: digest for digest, _ in to_send}
        with Pipeline[Batch](
                transport, rate_limiter(settings, self.engine, self.now),
                sessions=settings.smtp_connections, route=lambda outcome: outcome.key,
                write=lambda outcomes, _batches, _renew: self._record(outcomes, by_key, report),
                one_cpu=settings.one_cpu) as pipeline:
            pipeline.open(Batch(keys=list(by_key), unanswered=len(to_send)))
            pipeline.send(self._rendered(to_send, pipeline))
        if transport.gave_up:
            report.problems.append(transport.gave_up)

    def _rendered(self, to_send: list[tuple[Digest, str]],
                  pipeline: Pipeline[Batch]) -> Iterator[Outgoing]:
        sender = self.renderer.sender_address
        for digest, subject in to_send:
            try:
                data = self.message(digest, subject)
            except Exception as exc:  # a broken template fails one digest, not the scan
                pipeline.settle(Outcome(digest.key, FAILED, detail=(
                    f"could not render the digest ({type(exc).__name__}: {exc})")))
                continue
            yield Outgoing(key=digest.key, sender=sender,
                           rcpt=self.settings.redirect_to or digest.recipient.address, data=data)

    def _record(self, outcomes: list[Outcome], by_key: dict[str, Digest],
                report: OverdueReport) -> None:
        """Count and log answers; remember the accepted digests' alerts and suppress the
        addresses refused for good, in one transaction (the recorder's thread)."""
        accepted = []
        refused: list[tuple[str, int | None, str]] = []
        lines = []
        for outcome in outcomes:
            digest = by_key[str(outcome.key)]
            self._count(digest, outcome, report)
            lines.append(self._log_line(digest, outcome.status, outcome.code, outcome.detail))
            if outcome.status == SENT:
                accepted.append(digest)
            elif outcome.refused_recipient:
                refused.append((digest.key, outcome.code, outcome.detail))
        if accepted or refused:
            record_outcomes(self.engine, [], refused, self.now,
                            also=lambda conn: record_alerts(conn, accepted, self.now))
        log_deliveries(lines)

    @staticmethod
    def _count(digest: Digest, outcome: Outcome, report: OverdueReport) -> None:
        if outcome.status == SENT:
            report.digests_sent += 1
            report.tickets_alerted += len(digest.tickets)
        elif outcome.status == DEFERRED:
            report.digests_deferred += 1
        else:
            report.digests_failed += 1

    @staticmethod
    def _log_line(digest: Digest, outcome: str, code: int | None, detail: str) -> str:
        numbers = one_line(",".join(t.number for t in digest.tickets), limit=200)
        return (f"overdue digest recipient={digest.key} tickets={len(digest.tickets)} "
                f"({numbers}) outcome={outcome} code={'-' if code is None else code} "
                f"detail={detail!r}")


def _chunks(items: Sequence[OverdueTicket], size: int) -> Iterator[Sequence[OverdueTicket]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def record_alerts(conn: Connection, digests: Sequence[Digest], now: datetime) -> None:
    """Remember that each digest's recipient was told of its tickets (and their due
    dates) now, replacing older records of the same (ticket, recipient)."""
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
