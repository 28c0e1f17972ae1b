"""The outbox queue: claims with leases, lease renewal, finishing, status and requeue.

Claims follow the lesson of django-post-office and django-mailer: the database
coordinates the workers. On PostgreSQL and MariaDB a short transaction selects the
next pending rows ``FOR UPDATE SKIP LOCKED`` and stamps them ``processing`` with a
lease; on SQLite every transaction begins ``IMMEDIATE`` (one writer at a time), so the
same select-then-update is atomic across local processes. No transaction is ever held
open across network I/O, and a lease that expires (worker killed) makes its events
claimable again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ..events.model import OutboxEvent
from .database import RowUpdate, among
from .schema import (
    DEFERRED,
    DONE,
    EVENT_STATES,
    FAILED,
    PENDING,
    PROCESSING,
    deliveries,
    outbox,
    suppressions,
)

# ----------------------------------------------------------------- the outbox queue


def _row_to_event(row: Any, attempts: int | None = None) -> OutboxEvent:
    return OutboxEvent(id=row.id, event_type=row.event_type, ticket_id=row.ticket_id,
                       actor_id=row.actor_id, payload=row.payload,
                       attempts=row.attempts if attempts is None else attempts)


_EVENT_COLUMNS = (outbox.c.id, outbox.c.event_type, outbox.c.ticket_id, outbox.c.actor_id,
                  outbox.c.payload, outbox.c.attempts)


def _claimable(now: datetime) -> Any:
    """Pending rows that are due, and rows whose worker's lease has run out."""
    return or_(
        and_(outbox.c.state == PENDING, outbox.c.available_at <= now),
        and_(outbox.c.state == PROCESSING, outbox.c.locked_until < now),
    )


def claim_events(engine: Engine, *, worker_id: str, limit: int, now: datetime,
                 lease: timedelta) -> list[OutboxEvent]:
    """Claim up to ``limit`` events in id order for ``worker_id``, for ``lease``.

    Rows another worker holds locked are skipped, not waited for.
    """
    with engine.begin() as conn:
        query = (select(*_EVENT_COLUMNS).where(_claimable(now)).order_by(outbox.c.id)
                 .limit(limit).with_for_update(skip_locked=True))
        rows = conn.execute(query).all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        conn.execute(
            update(outbox).where(among(conn, outbox.c.id, ids))
            .values(state=PROCESSING, locked_by=worker_id, locked_until=now + lease,
                    attempts=outbox.c.attempts + 1)
        )
    return [_row_to_event(row, attempts=row.attempts + 1) for row in rows]


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


@dataclass(frozen=True)
class EventOutcome:
    """How one claimed event ends this run."""

    event_id: int
    state: str  # done, failed or pending (a retry)
    error: str | None = None
    available_at: datetime | None = None


def finish_events(engine: Engine, outcomes: Sequence[EventOutcome], *, worker_id: str,
                  now: datetime) -> int:
    """Record how events ended, in one statement. Only rows this worker still holds are
    changed: a worker whose lease ran out must not overwrite the new owner's state."""
    if not outcomes:
        return 0
    rows = [{"id": o.event_id, "state": o.state, "last_error": o.error,
             "available_at": o.available_at or now,
             "processed_at": now if o.state in (DONE, FAILED) else None}
            for o in outcomes]
    with engine.begin() as conn:
        return _FINISH.run(conn, rows, worker=worker_id)


_FINISH = RowUpdate(
    outbox, keys=["id"], columns=["state", "last_error", "available_at", "processed_at"],
    fixed={"locked_by": None, "locked_until": None},
    where=[outbox.c.locked_by == bindparam("worker"), outbox.c.state == PROCESSING])


def outbox_status(engine: Engine, *, now: datetime) -> dict[str, Any]:
    """Counts by state, the age of the oldest pending event, failures in the last 24 h."""
    with engine.connect() as conn:
        counts = dict.fromkeys(EVENT_STATES, 0)
        for state, count in conn.execute(
            select(outbox.c.state, func.count()).group_by(outbox.c.state)
        ):
            counts[state] = count
        oldest = conn.execute(
            select(func.min(outbox.c.created_at)).where(outbox.c.state == PENDING)
        ).scalar()
        failed_24h = conn.execute(
            select(func.count()).select_from(outbox).where(
                outbox.c.state == FAILED, outbox.c.processed_at >= now - timedelta(hours=24))
        ).scalar_one()
        suppressed = conn.execute(select(func.count()).select_from(suppressions)).scalar_one()
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    return {"counts": counts, "oldest_pending_age_seconds": age,
            "failed_last_24h": failed_24h, "suppressed_addresses": suppressed}


def requeue_failed(engine: Engine, *, event_ids: Sequence[int] | None, now: datetime) -> int:
    """Put failed events back to pending (all, or the given ids), and their failed
    email deliveries with them, so the next run retries exactly those recipients."""
    with engine.begin() as conn:
        condition = outbox.c.state == FAILED
        if event_ids is not None:
            condition = and_(condition, outbox.c.id.in_(list(event_ids)))
        ids = list(conn.execute(select(outbox.c.id).where(condition)).scalars())
        if not ids:
            return 0
        conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(
            state=PENDING, attempts=0, available_at=now, last_error=None, processed_at=None,
            locked_by=None, locked_until=None))
        conn.execute(update(deliveries).where(deliveries.c.event_id.in_(ids),
                                              deliveries.c.state.in_([FAILED, DEFERRED]))
                     .values(state=DEFERRED, attempts=0, next_attempt_at=now, updated_at=now))
    return len(ids)
