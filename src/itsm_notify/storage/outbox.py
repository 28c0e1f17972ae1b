"""The outbox queue: claims with leases, lease renewal, finishing, status and requeue.

Claims follow the lesson of django-post-office and django-mailer: the database
coordinates the workers. On PostgreSQL and MariaDB a short transaction selects the
next pending rows ``FOR UPDATE SKIP LOCKED`` and stamps them ``processing`` with a
lease; on SQLite every transaction begins ``IMMEDIATE`` (one writer at a time), so the
same select-then-update is atomic across local processes. No transaction is ever held
open across network I/O, and a lease that expires (worker killed) makes its events
claimable again.

``attempts`` counts the claims of an event in a row that did not finish: every claim
adds one, every finish (done, failed or a retry) sets it back to 0. An event whose
claims keep ending without a finish crashed its worker each time (a payload that takes
the process down, an out-of-memory kill); after ``ITSM_MAX_CLAIMS`` of them it ends
``failed`` instead of being claimed forever, and its neighbours go on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ..events.model import OutboxEvent
from ..states import Channel, DeliveryState, EventState
from .database import RowUpdate, among
from .schema import chat_destination_states, deliveries, outbox, suppressions

# ----------------------------------------------------------------- the outbox queue

PENDING, PROCESSING = EventState.PENDING, EventState.PROCESSING


def _row_to_event(row: Any, attempts: int | None = None) -> OutboxEvent:
    return OutboxEvent(id=row.id, event_type=row.event_type, ticket_id=row.ticket_id,
                       actor_id=row.actor_id, payload=row.payload,
                       attempts=row.attempts if attempts is None else attempts,
                       created_at=row.created_at)


_EVENT_COLUMNS = (outbox.c.id, outbox.c.event_type, outbox.c.ticket_id, outbox.c.actor_id,
                  outbox.c.payload, outbox.c.attempts, outbox.c.created_at)


def _claimable(now: datetime) -> Any:
    """Pending rows that are due, and rows whose worker's lease has run out."""
    return or_(
        and_(outbox.c.state == PENDING, outbox.c.available_at <= now),
        and_(outbox.c.state == PROCESSING, outbox.c.locked_until < now),
    )


def claim_events(conn: Connection, *, worker_id: str, limit: int, now: datetime,
                 lease: timedelta, only: Sequence[int] | None = None,
                 max_claims: int | None = None) -> list[OutboxEvent]:
    """Claim up to ``limit`` events in id order for ``worker_id``, for ``lease``, in a
    transaction of their own on ``conn`` (committed on return); ``only``: among these
    ids. Rows another worker holds locked are skipped, not waited for. An event already
    claimed ``max_claims`` times in a row without finishing ends failed here instead
    (and is not returned)."""
    with conn.begin():
        condition = _claimable(now)
        if only is not None:
            condition = and_(condition, among(conn, outbox.c.id, only))
        query = (select(*_EVENT_COLUMNS).where(condition).order_by(outbox.c.id)
                 .limit(limit).with_for_update(skip_locked=True))
        rows = conn.execute(query).all()
        if not rows:
            return []
        crashed = [row for row in rows if max_claims is not None and row.attempts >= max_claims]
        if crashed:
            conn.execute(update(outbox).where(among(conn, outbox.c.id, [r.id for r in crashed]))
                         .values(state=EventState.FAILED, processed_at=now, locked_by=None,
                                 locked_until=None, last_error=(
                                     f"claimed {max_claims} times in a row and never finished: "
                                     "the worker stopped each time (a crash, a kill, out of "
                                     "memory); requeue it once the cause is fixed")))
        claimed = [row for row in rows if row not in crashed]
        if claimed:
            conn.execute(
                update(outbox).where(among(conn, outbox.c.id, [row.id for row in claimed]))
                .values(state=PROCESSING, locked_by=worker_id, locked_until=now + lease,
                        attempts=outbox.c.attempts + 1))
    return [_row_to_event(row, attempts=row.attempts + 1) for row in claimed]


def renew_lease(conn: Connection, event_ids: Sequence[int], *, worker_id: str,
                until: datetime) -> None:
    """Extend this worker's lease on events it still holds (a long batch, a slow relay),
    so no other worker takes them over while they are being sent."""
    if event_ids:
        conn.execute(update(outbox).where(among(conn, outbox.c.id, event_ids),
                                          outbox.c.locked_by == worker_id,
                                          outbox.c.state == PROCESSING)
                     .values(locked_until=until))


def peek_events(engine: Engine, *, limit: int, now: datetime) -> list[OutboxEvent]:
    """The events a claim would take now, without claiming them (for --dry-run)."""
    with engine.connect() as conn:
        rows = conn.execute(select(*_EVENT_COLUMNS).where(_claimable(now))
                            .order_by(outbox.c.id).limit(limit)).all()
    return [_row_to_event(row) for row in rows]


def load_event(engine: Engine, event_id: int) -> OutboxEvent | None:
    """One outbox row by id, whatever its state (for ``preview --event``); None when
    there is none."""
    with engine.connect() as conn:
        row = conn.execute(select(*_EVENT_COLUMNS).where(outbox.c.id == event_id)).first()
    return _row_to_event(row) if row is not None else None


@dataclass(frozen=True)
class EventOutcome:
    """How one claimed event ends this run."""

    event_id: int
    state: EventState  # done, failed or pending (a retry)
    error: str | None = None
    available_at: datetime | None = None


def finish_events(engine: Engine, outcomes: Sequence[EventOutcome], *, worker_id: str,
                  now: datetime) -> int:
    """Record how events ended, in one statement (their claims in a row start again from
    0). Only rows this worker still holds are changed: a worker whose lease ran out must
    not overwrite the new owner's state."""
    if not outcomes:
        return 0
    rows = [{"id": o.event_id, "state": o.state, "last_error": o.error,
             "available_at": o.available_at or now,
             "processed_at": now if o.state in (EventState.DONE, EventState.FAILED) else None}
            for o in outcomes]
    with engine.begin() as conn:
        return _FINISH.run(conn, rows, worker=worker_id)


_FINISH = RowUpdate(
    outbox, keys=["id"], columns=["state", "last_error", "available_at", "processed_at"],
    fixed={"locked_by": None, "locked_until": None, "attempts": 0},
    where=[outbox.c.locked_by == bindparam("worker"), outbox.c.state == PROCESSING])


def outbox_status(engine: Engine, *, now: datetime) -> dict[str, Any]:
    """Counts by state, the age of the oldest pending event, failures in the last 24 h
    (events, and deliveries by channel), recipients skipped in the last 24 h (no address,
    or not an address), suppressed addresses, disabled chat destinations."""
    day_ago = now - timedelta(hours=24)
    with engine.connect() as conn:
        counts = dict.fromkeys(EventState, 0)
        for state, count in conn.execute(
            select(outbox.c.state, func.count()).group_by(outbox.c.state)
        ):
            counts[state] = count
        oldest = conn.execute(
            select(func.min(outbox.c.created_at)).where(outbox.c.state == PENDING)
        ).scalar()
        failed_24h = conn.execute(
            select(func.count()).select_from(outbox).where(
                outbox.c.state == EventState.FAILED, outbox.c.processed_at >= day_ago)
        ).scalar_one()
        skipped_24h = conn.execute(
            select(func.count()).select_from(deliveries).where(
                deliveries.c.state == DeliveryState.SKIPPED, deliveries.c.created_at >= day_ago)
        ).scalar_one()
        suppressed = conn.execute(select(func.count()).select_from(suppressions)).scalar_one()
        failed_deliveries = dict.fromkeys((Channel.EMAIL, Channel.CHAT), 0)
        for channel, count in conn.execute(
            select(deliveries.c.channel, func.count()).where(
                deliveries.c.state == DeliveryState.FAILED, deliveries.c.updated_at >= day_ago)
            .group_by(deliveries.c.channel)
        ):
            failed_deliveries[channel] = count
        disabled = [{"name": row.name, "since": row.disabled_at.isoformat(),
                     "reason": row.reason}
                    for row in conn.execute(select(chat_destination_states)
                                            .order_by(chat_destination_states.c.name))]
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    return {"counts": {str(state): count for state, count in counts.items()},
            "oldest_pending_age_seconds": age, "failed_last_24h": failed_24h,
            "skipped_recipients_last_24h": skipped_24h, "suppressed_addresses": suppressed,
            "failed_deliveries_last_24h": {str(c): n for c, n in failed_deliveries.items()},
            "disabled_chat_destinations": disabled}


def requeue_failed(engine: Engine, *, event_ids: Sequence[int] | None, now: datetime) -> int:
    """Put failed events back to pending (all, or the given ids), and their failed
    deliveries with them, so the next run retries exactly those recipients."""
    with engine.begin() as conn:
        condition = outbox.c.state == EventState.FAILED
        if event_ids is not None:
            condition = and_(condition, outbox.c.id.in_(list(event_ids)))
        ids = list(conn.execute(select(outbox.c.id).where(condition)).scalars())
        if not ids:
            return 0
        conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(
            state=PENDING, attempts=0, available_at=now, last_error=None, processed_at=None,
            locked_by=None, locked_until=None))
        conn.execute(update(deliveries).where(
            deliveries.c.event_id.in_(ids),
            deliveries.c.state.in_([DeliveryState.FAILED, DeliveryState.DEFERRED]))
            .values(state=DeliveryState.DEFERRED, attempts=0, next_attempt_at=now,
                    updated_at=now))
    return len(ids)


def requeue_deferred(engine: Engine, *, now: datetime) -> int:
    """Make every deferred event (pending, waiting for a later ``available_at``: its
    retry) due now; the number of events. ``available_at`` is the one retry clock."""
    with engine.begin() as conn:
        waiting = and_(outbox.c.state == PENDING, outbox.c.available_at > now)
        ids = list(conn.execute(select(outbox.c.id).where(waiting)).scalars())
        if not ids:
            return 0
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            conn.execute(update(outbox).where(among(conn, outbox.c.id, chunk))
                         .values(available_at=now))
            conn.execute(update(deliveries).where(
                among(conn, deliveries.c.event_id, chunk),
                deliveries.c.channel != Channel.IN_APP,
                deliveries.c.state == DeliveryState.DEFERRED).values(next_attempt_at=now))
    return len(ids)


def write_event(conn: Connection, event_type: str, ticket_id: int | None,
                actor_id: int | None, payload: dict[str, Any]) -> int:
    """Write one outbox event inside the caller's transaction, as a producer does (the
    four producer columns; the rest default); its id."""
    result = conn.execute(insert(outbox).values(
        event_type=event_type, ticket_id=ticket_id, actor_id=actor_id,
        payload=json.dumps(payload)))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def event_ticket(conn: Connection, event_id: int) -> int | None:
    """The ticket an outbox event is about (None: no such event, or none named)."""
    return conn.execute(select(outbox.c.ticket_id).where(outbox.c.id == event_id)).scalar()
