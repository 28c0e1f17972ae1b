"""send-pending: claim outbox events in batches and deliver them.

One batch, with a fixed number of database round trips:

1. claim up to ``ITSM_BATCH_SIZE`` events (one short transaction, a lease);
2. load their context (a handful of queries for the whole batch) and the delivery
   records and suppressions already known, in one read transaction;
3. decide each event's recipients (pure rules) and write the new delivery rows and the
   in-app notifications in one transaction (steps 1 to 3 on one connection);
4. render the emails not yet accepted and hand them to the pipeline (engine/pipeline.py): the
   SMTP sessions send them while this thread renders the next ones and claims the next
   batch, and the recorder writes the answers in small groups, so a killed worker
   re-sends at most the messages it had not yet recorded; chat messages go to the
   ``[chat.<name>]`` destinations the event is routed to, through the chat transport
   beside it, their answers written with the same batch;
5. once all its answers are written, finish the batch's events: done, failed with a
   reason, or back to pending for a retry.

An event that can never be delivered fails alone; the batch goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..channels import make_transport
from ..channels.base import Outcome, Outgoing, Transport
from ..channels.chat import ChatOutgoing, ChatTransport, delivery_id
from ..channels.messages import chat_message
from ..channels.routes import destinations_for
from ..compose.i18n import Language
from ..compose.render import (
    RenderedEmail,
    Renderer,
    address_digest,
    in_app_text,
    message_id,
    thread_id,
)
from ..config import Settings
from ..errors import EventError, TransportError
from ..events.addresses import address_problem
from ..events.audience import EmailRecipient, Recipients, locale_of
from ..events.model import EventContext, OutboxEvent
from ..events.types import event_type, parse_payload
from ..inbound.tokens import make_verp_address
from ..ops.unsubscribe import unsubscribe_url
from ..source import Source, load_source, replies_become_comments
from ..states import FINAL_DELIVERY_STATES, Channel, DeliveryState, EventState
from ..storage.database import (
    database_errors,
    describe_exception,
    make_engine,
    raise_if_database_down,
    reads,
    utcnow,
)
from ..storage.deliveries import (
    DeliveryKey,
    DeliveryRecord,
    load_deliveries,
    record_outcomes,
    suppressed_among,
    write_plan,
)
from ..storage.destinations import (
    DisabledDestination,
    disable_destination,
    disabled_destinations,
    url_digest,
)
from ..storage.outbox import EventOutcome, claim_events, finish_events, peek_events, renew_lease
from .delivery_log import log_deliveries, setup_delivery_log
from .pipeline import Batch, Pipeline, SideChannel
from .retry import backoff, rate_limiter
from .schedules import SummaryHold

Clock = Callable[[], datetime]
log = logging.getLogger("itsm_notify")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class PlannedEmail:
    """One row of a dry run, or of a run's record of what it did."""

    event_id: int
    event_type: str
    ticket: str
    channel: str
    recipient: str
    subject: str
    note: str = ""


@dataclass
class RunReport:
    events_done: int = 0
    events_failed: int = 0
    events_retrying: int = 0
    emails_sent: int = 0
    emails_deferred: int = 0
    emails_failed: int = 0
    emails_suppressed: int = 0
    emails_skipped: int = 0
    emails_held: int = 0
    """Emails not sent: their users get them in a summary (engine/summaries.py)."""
    in_app_written: int = 0
    chat_sent: int = 0
    chat_deferred: int = 0
    chat_failed: int = 0
    problems: list[str] = field(default_factory=list)
    planned: list[PlannedEmail] = field(default_factory=list)
    config_error: TransportError | None = None
    """The channel refused the configuration (login, TLS, an API key): the batch in hand
    was left for a later run, and the command exits 2."""

    @property
    def events_handled(self) -> int:
        return self.events_done + self.events_failed + self.events_retrying

    @property
    def exit_code(self) -> int:
        """0 when everything went out; 1 when a delivery was deferred or failed; 2 when the
        channel refused the configuration."""
        if self.config_error is not None:
            return 2
        troubled = self.emails_deferred or self.emails_failed or self.events_failed \
            or self.events_retrying or self.chat_deferred or self.chat_failed or self.problems
        return 1 if troubled else 0

    def summary(self) -> str:
        held = f", {self.emails_held} held for summaries" if self.emails_held else ""
        chat = self.chat_sent + self.chat_deferred + self.chat_failed
        chats = (f"; chat {self.chat_sent} sent, {self.chat_deferred} deferred, "
                 f"{self.chat_failed} failed") if chat else ""
        return (f"{self.events_handled} events: {self.events_done} done, "
                f"{self.events_retrying} to retry, {self.events_failed} failed; "
                f"emails {self.emails_sent} sent, {self.emails_deferred} deferred, "
                f"{self.emails_failed} failed, {self.emails_suppressed} suppressed, "
                f"{self.emails_skipped} skipped{held}; {self.in_app_written} in-app{chats}")


def load_batch(source: Source, conn: Connection, events: list[OutboxEvent]
               ) -> list[tuple[OutboxEvent, EventContext | EventError]]:
    """Each event, in order, with its context, or the reason it can never be delivered
    (unknown type, malformed payload, missing ticket or comment, data the database
    driver cannot read), read in ``conn``'s transaction (``storage.database.reads``).
    When loading the batch raises, each event is loaded alone, so that one event's bad
    data fails that event and not its neighbours (a failed read's transaction is rolled
    back, and the next read begins another)."""
    parsed: list[tuple[OutboxEvent, dict[str, Any]]] = []
    bad: dict[int, EventError] = {}
    for event in events:
        try:
            parsed.append((event, parse_payload(event.event_type, event.payload)))
        except EventError as exc:
            bad[event.id] = exc
    try:
        loaded = source.load_contexts(conn, parsed)
    except Exception:
        conn.rollback()
        raise_if_database_down(conn.engine)
        loaded = {}
        for item in parsed:
            try:
                loaded.update(source.load_contexts(conn, [item]))
            except Exception as exc:
                conn.rollback()
                raise_if_database_down(conn.engine)
                loaded[item[0].id] = EventError(
                    f"its data could not be read ({describe_exception(exc)})")
    return [(event, bad[event.id] if event.id in bad else loaded[event.id])
            for event in events]


# Pure functions called per email; a run meets the same users and addresses again.
_unsubscribe_url = functools.lru_cache(maxsize=4096)(unsubscribe_url)


def compose_email(renderer: Renderer, ctx: EventContext, recipient: EmailRecipient,
                  rendered: RenderedEmail, *, msg_id: str, domain: str,
                  unsubscribe_url: str | None, tags_replies: bool,
                  now: datetime | None = None) -> bytes:
    """The bytes of one event's email to one recipient, as send-pending sends them (and
    ``preview`` shows them): threaded with its ticket when it is about one, with the
    team's Reply-To, else the recipient's signed one where replies become comments
    (``tags_replies``)."""
    spec = event_type(ctx.event.event_type)
    one_ticket = spec.about_one_ticket(ctx)
    team_reply_to = ctx.project.reply_to if ctx.project else None
    return renderer.compose(
        rendered, recipient, event_type_name=ctx.event.event_type,
        ticket_number=ctx.ticket.number if one_ticket else None, msg_id=msg_id,
        thread=thread_id(ctx.ticket.id, domain) if one_ticket else None,
        is_thread_start=spec.starts_thread, unsubscribe_url=unsubscribe_url,
        reply_to=team_reply_to, now=now,
        personal_reply_to=None if team_reply_to else renderer.reply_to_for(
            ctx.ticket.id if one_ticket and tags_replies else None, recipient.user_id))


Slot = tuple[str, str]
"""(channel, recipient) of one of an event's deliveries."""


def _label(slot: Slot) -> str:
    """A delivery as an event's error names it: an address, or ``chat ops``."""
    channel, recipient = slot
    return recipient if channel == Channel.EMAIL else f"{channel} {recipient}"


@dataclass
class _EventWork:
    """The email and chat deliveries of one event as this batch sees them."""

    ctx: EventContext
    states: dict[Slot, str] = field(default_factory=dict)  # → delivery state
    errors: dict[Slot, str] = field(default_factory=dict)
    retry_at: list[datetime] = field(default_factory=list)


@dataclass
class _EventPlan:
    """What planning decided for one event, before it is stored."""

    work: _EventWork
    rows: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    to_send: list[tuple[EventContext, EmailRecipient]] = field(default_factory=list)
    to_chat: list[ChatOutgoing] = field(default_factory=list)
    answered: list[Outcome] = field(default_factory=list)
    """Deliveries decided without sending (to a disabled chat destination)."""
    summary_items: list[dict[str, Any]] = field(default_factory=list)
    suppressed: int = 0
    skipped: int = 0


def _failed(event_id: int, what: str, exc: BaseException) -> EventOutcome:
    """An event that failed alone, with a readable reason."""
    return EventOutcome(event_id, EventState.FAILED, error=f"{what} ({describe_exception(exc)})")


@dataclass(eq=False)
class _SendBatch(Batch):
    """A claimed batch in the pipeline: what its events need to be finished."""

    started: datetime
    works: dict[int, _EventWork]
    """The events with email deliveries to decide, by id."""
    existing: dict[DeliveryKey, DeliveryRecord]
    settled: list[EventOutcome]
    """Events already decided: failed (bad events), or handed back (a collision)."""


@dataclass
class _PlannedBatch:
    """A batch planned and stored, ready to hand to the pipeline."""

    batch: _SendBatch
    to_send: list[tuple[EventContext, EmailRecipient]]
    to_chat: list[ChatOutgoing]
    answered: list[Outcome]
    """Deliveries decided without sending (to a disabled chat destination)."""


class Sender:
    """Delivers the outbox: one per run, holding the renderer and the transport."""

    def __init__(self, settings: Settings, engine: Engine, *,
                 transport: Transport | None = None, clock: Clock = utcnow,
                 worker_id: str | None = None,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.renderer = Renderer(settings)
        self.source = load_source(settings)
        # a signed Reply-To per ticket and user, for inbound mail to match replies by;
        # only where a reply becomes a comment (contract, django-helpdesk)
        self.tags_replies = replies_become_comments(settings)
        self.transport = transport or make_transport(settings)
        self.clock = clock
        self.worker_id = worker_id or new_worker_id()
        self.on_progress = on_progress
        self.domain = settings.from_domain  # parsed once, not twice per message
        self.destinations = settings.chat_destinations
        self.disabled: dict[str, DisabledDestination] = {}

    # ---------------------------------------------------------------- the run

    def run(self, limit: int | None = None, *, only: list[int] | None = None) -> RunReport:
        """Claim and deliver pending events until none is available (or ``limit`` are
        done); ``only``: just these events (the digests a scan wrote)."""
        report = RunReport()
        setup_delivery_log(self.settings.delivery_log)
        limiter = rate_limiter(self.settings, self.engine, self.clock())
        lease = timedelta(seconds=self.settings.lease_seconds)
        claimed = 0
        with Pipeline[_SendBatch](
                self.transport, limiter, sessions=self.settings.smtp_connections,
                route=lambda outcome: cast(tuple[int, str], outcome.key)[0],  # the event id
                write=lambda outcomes, batches, renew: self._record(
                    outcomes, batches, cast(list[int], renew), report),
                finish=lambda batch: self._finish_batch(batch, report),
                renew_every=lease.total_seconds() / 3,
                one_cpu=self.settings.one_cpu) as pipeline, \
                self._chat_channel(pipeline) as chat:
            while limit is None or claimed < limit:
                if limiter.exhausted:
                    log.info("hourly rate ceiling (ITSM_RATE_PER_HOUR=%s) reached; the rest "
                             "waits for a later run", self.settings.rate_per_hour)
                    break
                if not pipeline.ready_for_more():
                    break  # the server is unreachable: the next run tries again
                size = self.settings.batch_size if limit is None else \
                    min(self.settings.batch_size, limit - claimed)
                with self.engine.connect() as conn:  # the batch's claim, reads and plan
                    events = claim_events(conn, worker_id=self.worker_id, limit=size,
                                          now=self.clock(), lease=lease, only=only,
                                          max_claims=self.settings.max_claims)
                    planned = self.plan_batch(conn, events, report) if events else None
                if planned is None:
                    break
                claimed += len(events)
                self.hand_over(planned, pipeline, chat)
                if self.on_progress:
                    self.on_progress(len(events))
        if self.transport.gave_up:
            report.config_error = getattr(self.transport, "last_error", None)
            if report.config_error is None:
                report.problems.append(self.transport.gave_up)
        return report

    def _chat_channel(self, pipeline: Pipeline[_SendBatch]
                      ) -> SideChannel | nullcontext[None]:
        """The chat transport beside the pipeline, when destinations are configured (the
        disabled ones read once per run)."""
        if not self.destinations:
            return nullcontext()
        self.disabled = disabled_destinations(self.engine)
        return SideChannel(ChatTransport(connections=self.settings.smtp_connections),
                           pipeline)

    def plan_batch(self, conn: Connection, events: list[OutboxEvent],
                   report: RunReport) -> _PlannedBatch:
        """Plan a claimed batch: everything the plan reads is read in one transaction on
        ``conn``, and the plan written in a second one."""
        now = self.clock()
        settled: list[EventOutcome] = []
        with reads(conn):
            contexts = self._contexts(conn, events, settled)
            existing = load_deliveries(conn, [ctx.event.id for ctx in contexts])
            resolved = self._resolve(contexts, settled)
            suppressed = suppressed_among(conn, (r.key for _, recipients in resolved.values()
                                                 for r in recipients.email))
            hold = SummaryHold.load(conn, self.settings,
                                    ((ctx, r.email) for ctx, r in resolved.values()),
                                    self.renderer)
        works, to_send, to_chat, answered = self._plan(conn, resolved, existing, suppressed,
                                                       hold, report, now, settled)
        if works is None:
            # Another worker planned some of these events meanwhile (it took them over
            # when this worker's lease ran out): hand back those still ours, unsent, for
            # a later claim (not this run's next one, which would collide again).
            retry_at = now + backoff(1, self.settings)
            settled += [EventOutcome(ctx.event.id, EventState.PENDING, available_at=retry_at,
                                     error="taken over by another worker; retried")
                        for ctx in contexts]
            works = {}
        batch = _SendBatch(keys=[event.id for event in events],
                           unanswered=len(to_send) + len(to_chat) + len(answered),
                           started=now, works=works, existing=existing, settled=settled)
        return _PlannedBatch(batch, to_send, to_chat, answered)

    def hand_over(self, planned: _PlannedBatch, pipeline: Pipeline[_SendBatch],
                  chat: SideChannel | None = None) -> None:
        """Hand a planned batch's emails to the pipeline, rendered one by one (the
        sessions send the first ones while the rest render), and its chat messages to
        the chat transport."""
        pipeline.open(planned.batch)
        for outcome in planned.answered:
            pipeline.settle(outcome)
        if planned.to_chat and chat is not None:
            chat.send(planned.to_chat)
        pipeline.send(self._render_each(planned.to_send, pipeline))

    def _contexts(self, conn: Connection, events: list[OutboxEvent],
                  finished: list[EventOutcome]) -> list[EventContext]:
        """Each event's context; bad events go straight to ``finished`` as failed."""
        contexts = []
        for event, ctx in load_batch(self.source, conn, events):
            if isinstance(ctx, EventError):
                finished.append(EventOutcome(event.id, EventState.FAILED, error=str(ctx)))
            else:
                contexts.append(ctx)
        return contexts

    # ---------------------------------------------------------------- planning

    def _resolve(self, contexts: list[EventContext], settled: list[EventOutcome]
                 ) -> dict[int, tuple[EventContext, Recipients]]:
        """Each event's recipients, by event id. An event whose rule raises (data of a
        shape no rule expected) goes to ``settled`` as failed with the reason."""
        resolved: dict[int, tuple[EventContext, Recipients]] = {}
        for ctx in contexts:
            try:
                resolved[ctx.event.id] = (ctx, self.source.resolve(ctx))
            except Exception as exc:
                settled.append(_failed(ctx.event.id, "its recipients could not be decided",
                                       exc))
        return resolved

    def _plan(self, conn: Connection, resolved: dict[int, tuple[EventContext, Recipients]],
              existing: dict[DeliveryKey, DeliveryRecord], suppressed: set[str],
              hold: SummaryHold, report: RunReport, now: datetime,
              settled: list[EventOutcome]
              ) -> tuple[dict[int, _EventWork] | None,
                         list[tuple[EventContext, EmailRecipient]], list[ChatOutgoing],
                         list[Outcome]]:
        """Decide every delivery of the batch, store the new ones and the in-app rows,
        and list the emails still to send. An event whose planning raises (data of a shape
        no rule expected) goes to ``settled`` as failed with the reason; the rest go on."""
        plans: dict[int, _EventPlan] = {}
        for event_id, (ctx, recipients) in resolved.items():
            try:
                plans[event_id] = self._plan_event(ctx, recipients, existing, suppressed, now,
                                                   hold)
            except Exception as exc:
                settled.append(_failed(event_id, "its deliveries could not be planned", exc))
        try:
            written = self._write_plans(conn, plans, settled)
        except IntegrityError:
            log.warning("another worker took over events %s; leaving them to it",
                        sorted(plans))
            return None, [], [], []
        works: dict[int, _EventWork] = {}
        to_send: list[tuple[EventContext, EmailRecipient]] = []
        to_chat: list[ChatOutgoing] = []
        answered: list[Outcome] = []
        for event_id in written:
            plan = plans[event_id]
            works[event_id] = plan.work
            to_send += plan.to_send
            to_chat += plan.to_chat
            answered += plan.answered
            report.in_app_written += len(plan.notifications)
            report.emails_suppressed += plan.suppressed
            report.emails_skipped += plan.skipped
            report.emails_held += len(plan.summary_items)
        return works, to_send, to_chat, answered

    def _plan_event(self, ctx: EventContext, recipients: Recipients,
                    existing: dict[DeliveryKey, DeliveryRecord], suppressed: set[str],
                    now: datetime, hold: SummaryHold) -> _EventPlan:
        """One event's new delivery rows, in-app rows and emails to send."""
        event_id = ctx.event.id
        plan = _EventPlan(_EventWork(ctx))
        work = plan.work
        texts: dict[Language, tuple[str, str, str]] = {}  # in-app text per language
        for user_id in recipients.in_app:
            if (event_id, Channel.IN_APP, str(user_id)) in existing:
                continue
            user = ctx.users.get(user_id)
            language = self.renderer.language(locale_of(ctx, user),
                                              user.time_zone if user else None)
            if language not in texts:
                texts[language] = in_app_text(ctx, self.renderer.subject(ctx, language),
                                              language)
            title, body, url = texts[language]
            plan.notifications.append({"user_id": user_id, "ticket_id": ctx.ticket.id,
                                       "event_type": ctx.event.event_type, "title": title,
                                       "body": body, "url": url, "created_at": now})
            plan.rows.append(self._row(event_id, Channel.IN_APP, str(user_id), user_id,
                                       DeliveryState.SENT, now, sent_at=now))
        for recipient in recipients.email:
            slot = (Channel.EMAIL, recipient.key)
            record = existing.get((event_id, *slot))
            if record is not None and record.state in FINAL_DELIVERY_STATES:
                work.states[slot] = record.state
                if record.state == DeliveryState.FAILED:  # an earlier attempt: the event fails
                    work.errors[slot] = record.last_error or "failed"
                continue
            if record is None:
                state, error = DeliveryState.PENDING, None
                if recipient.key in suppressed:
                    state, error = DeliveryState.SUPPRESSED, "address is on the suppression list"
                elif problem := address_problem(recipient.address):
                    state, error = DeliveryState.SKIPPED, problem
                elif (item := hold.item(ctx, recipient, now)) is not None:
                    state = DeliveryState.HELD  # the user asked for summaries
                    plan.summary_items.append(item)
                plan.rows.append(self._row(event_id, Channel.EMAIL, recipient.key,
                                           recipient.user_id, state, now, error=error,
                                           msg_id=self._message_id(ctx, recipient)))
                if state != DeliveryState.PENDING:
                    work.states[slot] = state
                    plan.suppressed += state == DeliveryState.SUPPRESSED
                    if state == DeliveryState.SKIPPED:
                        plan.skipped += 1
                        log.warning("event %s: %s is skipped: %s", event_id,
                                    recipient.address, error)
                    continue
            elif recipient.key in suppressed:
                work.states[slot] = DeliveryState.SUPPRESSED
                plan.suppressed += 1
                continue
            # A deferred delivery is retried whenever its event is claimed: the event's
            # available_at is the one retry clock (an operator may set it to now).
            work.states[slot] = DeliveryState.PENDING
            plan.to_send.append((ctx, recipient))
        if self.destinations:
            self._plan_chat(ctx, plan, existing, now)
        return plan

    def _plan_chat(self, ctx: EventContext, plan: _EventPlan,
                   existing: dict[DeliveryKey, DeliveryRecord], now: datetime) -> None:
        """The event's chat messages: one per destination its routes choose (none for an
        internal comment), a disabled destination's recorded as skipped."""
        event = ctx.event
        project = ctx.project.name if ctx.project else None
        chosen = destinations_for(event.event_type,
                                  (ctx.ticket.priority, ctx.ticket.priority_label), project,
                                  self.destinations, debug=self.settings.debug)
        message = chat_message(ctx, self.settings) if chosen else None
        if message is None:
            return
        work = plan.work
        for destination in chosen:
            slot = (Channel.CHAT, destination.name)
            record = existing.get((event.id, *slot))
            if record is not None and record.state in FINAL_DELIVERY_STATES:
                work.states[slot] = record.state
                if record.state == DeliveryState.FAILED:
                    work.errors[slot] = record.last_error or "failed"
                continue
            if record is None:
                plan.rows.append(self._row(event.id, Channel.CHAT, destination.name, None,
                                           DeliveryState.PENDING, now))
            work.states[slot] = DeliveryState.PENDING
            key = (event.id, *slot)
            gone = self.disabled.get(destination.name)
            if gone is not None and gone.url_digest == url_digest(destination.url):
                plan.answered.append(Outcome(key, DeliveryState.SKIPPED, counts_as_attempt=False,
                                             detail=(
                    f"chat destination {destination.name!r} is disabled since "
                    f"{gone.disabled_at:%Y-%m-%d %H:%M} UTC ({gone.reason}): give it a new "
                    f"URL, or run itsm-notify test-channel {destination.name}")))
                continue
            plan.to_chat.append(ChatOutgoing(key=key, destination=destination, message=message,
                                             delivery_id=delivery_id(event.id,
                                                                     destination.name)))

    def _write_plans(self, conn: Connection, plans: dict[int, _EventPlan],
                     settled: list[EventOutcome]) -> list[int]:
        """Store the plans' rows in one transaction; the ids of the events written. When
        the database refuses the batch's rows for a reason other than a collision (a
        value it cannot store), each event is written alone, and those it refuses fail."""
        try:
            write_plan(conn, [r for p in plans.values() for r in p.rows],
                       [n for p in plans.values() for n in p.notifications],
                       self.source.write_in_app,
                       [i for p in plans.values() for i in p.summary_items])
            return list(plans)
        except IntegrityError:
            raise
        except Exception:
            raise_if_database_down(self.engine)
        written = []
        for event_id, plan in plans.items():
            try:
                write_plan(conn, plan.rows, plan.notifications, self.source.write_in_app,
                           plan.summary_items)
            except IntegrityError:
                raise
            except Exception as exc:
                raise_if_database_down(self.engine)
                settled.append(_failed(event_id, "its deliveries could not be stored", exc))
            else:
                written.append(event_id)
        return written

    @staticmethod
    def _row(event_id: int, channel: str, recipient: str, user_id: int | None, state: str,
             now: datetime, *, error: str | None = None, msg_id: str | None = None,
             sent_at: datetime | None = None) -> dict[str, Any]:
        return {"event_id": event_id, "channel": channel, "recipient": recipient,
                "user_id": user_id, "state": state, "attempts": 0, "message_id": msg_id,
                "last_error": error, "created_at": now, "updated_at": now,
                "sent_at": sent_at}

    def _message_id(self, ctx: EventContext, recipient: EmailRecipient) -> str:
        return message_id(ctx.event.id, recipient.key, self.domain)

    def _render_each(self, to_send: list[tuple[EventContext, EmailRecipient]],
                     pipeline: Pipeline[_SendBatch]) -> Iterator[Outgoing]:
        """Each email rendered; one that cannot be (a broken template override, say)
        fails that recipient with the reason, and the batch goes on."""
        renderer, settings = self.renderer, self.settings
        # each email's shape: its event, its reader's language, with or without a link of
        # their own; how many share one is what the slots render once for several readers
        shapes = [(ctx.event.id, renderer.language_of(recipient), recipient.user_id is not None)
                  for ctx, recipient in to_send]
        readers = Counter(shapes)
        # one event's shared parts per language its recipients read: variables, subject
        current_event: int | None = None
        shared: dict[Language, tuple[dict[str, Any], str]] = {}
        for (ctx, recipient), shape in zip(to_send, shapes, strict=True):
            event, language = ctx.event, shape[1]
            key = (event.id, Channel.EMAIL, recipient.key)
            try:
                if current_event != event.id:
                    current_event, shared = event.id, {}
                if language not in shared:
                    shared[language] = (renderer.event_variables(ctx, language),
                                        renderer.subject(ctx, language))
                variables, subject = shared[language]
                unsubscribe = _unsubscribe_url(settings.site_url, settings.secret_key,
                                               recipient.user_id, event.event_type)
                rendered = renderer.render_event(
                    ctx, recipient, variables, unsubscribe_url=unsubscribe,
                    subject=subject, ticket_url=self.source.link(ctx, recipient),
                    alone=readers[shape] == 1)
                data = compose_email(renderer, ctx, recipient, rendered,
                                     msg_id=self._message_id(ctx, recipient),
                                     domain=self.domain, unsubscribe_url=unsubscribe,
                                     tags_replies=self.tags_replies)
            except Exception as exc:  # any template error must fail one email, not the queue
                pipeline.settle(Outcome(key, DeliveryState.FAILED, detail=(
                    f"could not render the email ({describe_exception(exc)})")))
                continue
            yield Outgoing(key=key, sender=self._envelope_sender(event.id, recipient.key),
                           rcpt=settings.redirect_to or recipient.address, data=data)

    def _envelope_sender(self, event_id: int, recipient_key: str) -> str:
        """The MAIL FROM of one delivery: with ITSM_BOUNCE_ADDRESS (and SECRET_KEY), that
        address with a signed tag naming the delivery by its event and the recipient's
        digest (as its Message-ID does), so a bounce names what it is about whatever
        it quotes; else DEFAULT_FROM_EMAIL's address. An event id too long for the tag
        (over 12 digits) falls back to the plain bounce address."""
        bounce = self.settings.bounce_address
        if not bounce or not self.settings.secret_key:
            return self.renderer.sender_address
        try:
            return make_verp_address(self.settings.secret_key, bounce, event_id,
                                     address_digest(recipient_key))
        except ValueError:
            return bounce

    # ---------------------------------------------------------------- recording

    def _record(self, outcomes: list[Outcome], batches: list[_SendBatch], renew: list[int],
                report: RunReport) -> None:
        """Write answers (the recorder's thread), renewing leases in the same transaction."""
        now = self.clock()  # one reading for the group
        rows: list[dict[str, Any]] = []
        refused: list[tuple[str, int | None, str]] = []
        gone: dict[str, str] = {}  # chat destination → why it is disabled
        lines: list[str] = []
        for outcome, batch in zip(outcomes, batches, strict=True):
            event_id, channel, recipient = cast(DeliveryKey, outcome.key)
            record = batch.existing.get((event_id, channel, recipient))
            row = self._answer(batch.works[event_id], (channel, recipient), outcome,
                               record.attempts if record else 0, report, now)
            rows.append(row)
            if outcome.refused_recipient:
                refused.append((recipient, outcome.code, outcome.detail))
            if outcome.destination_gone:
                gone[recipient] = outcome.detail
            code = outcome.code if outcome.code is not None else "-"
            lines.append(f"event={event_id} channel={channel} recipient={recipient} "
                         f"outcome={row['state']} code={code} detail={outcome.detail!r}")
        lease_until = now + timedelta(seconds=self.settings.lease_seconds)

        def alongside(conn: Connection) -> None:
            renew_lease(conn, renew, worker_id=self.worker_id, until=lease_until)
            urls = {d.name: d.url for d in self.destinations}
            for name, reason in gone.items():
                if name in urls:
                    disable_destination(conn, name, urls[name], reason, now)

        try:
            record_outcomes(self.engine, rows, refused, now, also=alongside)
        except Exception:
            raise_if_database_down(self.engine)
            self._record_one_by_one(rows, refused, batches, alongside, now)
        for name, reason in gone.items():
            log.warning("chat destination %r is gone (%s): disabled until its URL changes "
                        "or test-channel reaches it", name, reason)
        log_deliveries(lines)

    def _record_one_by_one(self, rows: list[dict[str, Any]],
                           refused: list[tuple[str, int | None, str]],
                           batches: list[_SendBatch], alongside: Callable[[Connection], None],
                           now: datetime) -> None:
        """The database refused a group of answers for a reason other than being down (a
        value it cannot store): write each alone; the event of one it still refuses
        fails with the reason, and the rest of the batch goes on."""
        record_outcomes(self.engine, [], [], now, also=alongside)
        for row, batch in zip(rows, batches, strict=True):
            mine = [r for r in refused if r[0] == row["recipient"]
                    and row["channel"] == Channel.EMAIL]
            try:
                record_outcomes(self.engine, [row], mine, now)
            except Exception as exc:
                raise_if_database_down(self.engine)
                work = batch.works[row["event_id"]]
                slot = (row["channel"], row["recipient"])
                work.states[slot] = DeliveryState.FAILED
                work.errors[slot] = (f"its answer ({row['state']}) could not be stored "
                                     f"({describe_exception(exc)})")

    def _finish_batch(self, batch: _SendBatch, report: RunReport) -> None:
        """End a batch whose answers are all written (the recorder's thread)."""
        finished = batch.settled + [self._finish(work, batch.started)
                                    for work in batch.works.values()]
        for outcome in finished:
            if outcome.state == EventState.DONE:
                report.events_done += 1
            elif outcome.state == EventState.FAILED:
                report.events_failed += 1
            else:
                report.events_retrying += 1
        finish_events(self.engine, finished, worker_id=self.worker_id, now=self.clock())
        for outcome in finished:
            if outcome.state == EventState.FAILED:
                log.warning("event %s failed: %s", outcome.event_id, outcome.error)

    def _answer(self, work: _EventWork, slot: Slot, outcome: Outcome,
                previous_attempts: int, report: RunReport, now: datetime) -> dict[str, Any]:
        """Turn a transport outcome into the delivery's new state (and its row)."""
        channel, recipient = slot
        attempts = previous_attempts + (1 if outcome.counts_as_attempt else 0)
        state, error, retry_at = DeliveryState(outcome.status), outcome.detail, None
        if state == DeliveryState.DEFERRED:
            if attempts >= self.settings.max_attempts:
                state = DeliveryState.FAILED
                error = f"gave up after {attempts} attempts: {outcome.detail}"
            elif not outcome.counts_as_attempt and self.transport.gave_up \
                    and channel == Channel.EMAIL:
                retry_at = now  # the server was never reached: the next run tries again
                work.retry_at.append(now)
            else:
                delay = max(backoff(max(attempts, 1), self.settings),
                            timedelta(seconds=outcome.retry_after or 0))
                retry_at = now + delay
                work.retry_at.append(retry_at)
        work.states[slot] = state
        if state != DeliveryState.SENT:
            work.errors[slot] = error
        if channel == Channel.CHAT:
            report.chat_sent += state == DeliveryState.SENT
            report.chat_deferred += state == DeliveryState.DEFERRED
            report.chat_failed += state == DeliveryState.FAILED
        else:
            report.emails_sent += state == DeliveryState.SENT
            report.emails_deferred += state == DeliveryState.DEFERRED
            report.emails_failed += state == DeliveryState.FAILED
        return {"event_id": work.ctx.event.id, "channel": channel, "recipient": recipient,
                "state": state, "attempts": attempts, "last_code": outcome.code,
                "last_error": None if state == DeliveryState.SENT else error,
                "next_attempt_at": retry_at, "provider_message_id": outcome.provider_id,
                "sent_at": now if state == DeliveryState.SENT else None, "updated_at": now}

    def _finish(self, work: _EventWork, now: datetime) -> EventOutcome:
        states = work.states.values()
        event_id = work.ctx.event.id
        waiting_states = (DeliveryState.DEFERRED, DeliveryState.PENDING)
        if any(state in waiting_states for state in states):
            retry_at = min(work.retry_at, default=now + backoff(1, self.settings))
            waiting = [f"{_label(r)}: {e}" for r, e in work.errors.items()
                       if work.states[r] in waiting_states]
            return EventOutcome(event_id, EventState.PENDING, error="; ".join(waiting) or None,
                                available_at=retry_at)
        failed = [f"{_label(r)}: {e}" for r, e in work.errors.items()
                  if work.states[r] == DeliveryState.FAILED]
        if failed:
            return EventOutcome(event_id, EventState.FAILED,
                                error=f"{len(failed)} of {len(work.states)} recipients "
                                      f"failed: " + "; ".join(failed))
        return EventOutcome(event_id, EventState.DONE)


# -------------------------------------------------------------------- dry run


def preview_pending(settings: Settings, engine: Engine, *, limit: int | None,
                    clock: Clock = utcnow) -> RunReport:
    """What send-pending would do now, changing nothing."""
    report = RunReport()
    renderer = Renderer(settings)
    events = peek_events(engine, limit=limit or 1000, now=clock())
    source = load_source(settings)
    with engine.connect() as conn, reads(conn):
        loaded = load_batch(source, conn, events)
        existing = load_deliveries(conn, [event.id for event in events])
    for event, ctx in loaded:
        if isinstance(ctx, EventError):
            report.planned.append(PlannedEmail(event.id, event.event_type, "", "-", "-", "",
                                               note=f"would fail: {ctx}"))
            continue
        recipients = source.resolve(ctx)
        for recipient in recipients.email:
            subject = renderer.subject(ctx, renderer.language_of(recipient))
            record = existing.get((event.id, Channel.EMAIL, recipient.key))
            note = f"already {record.state}" if record and \
                record.state in FINAL_DELIVERY_STATES else ""
            shown = recipient.address
            if settings.redirect_to:
                shown = f"{settings.redirect_to} (for {recipient.address})"
            report.planned.append(PlannedEmail(event.id, event.event_type, ctx.ticket.number,
                                               Channel.EMAIL, shown, subject, note))
        for user_id in recipients.in_app:
            user = ctx.users[user_id]
            language = renderer.language(locale_of(ctx, user), user.time_zone)
            report.planned.append(PlannedEmail(event.id, event.event_type, ctx.ticket.number,
                                               Channel.IN_APP, user.username,
                                               renderer.subject(ctx, language)))
    return report


def send_pending(settings: Settings, *, limit: int | None = None, dry_run: bool = False,
                 engine: Engine | None = None, transport: Transport | None = None,
                 clock: Clock = utcnow,
                 on_progress: Callable[[int], None] | None = None) -> RunReport:
    """Claim and deliver pending events until none is available (or ``limit`` done)."""
    engine = engine or make_engine(settings.database_url)
    with database_errors(settings.database_url):
        if dry_run:
            return preview_pending(settings, engine, limit=limit, clock=clock)
        sender = Sender(settings, engine, transport=transport, clock=clock,
                        on_progress=on_progress)
        return sender.run(limit)
