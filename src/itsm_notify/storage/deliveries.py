"""Per-recipient delivery records and the suppression list.

One row per (event, channel, recipient), unique. A retry reads them and sends only to
recipients not yet accepted; an in-app notification is written in the same
transaction as its delivery row, so it is written exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    and_,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..states import Channel, DeliveryState, EventState
from . import schema
from .database import RowUpdate, among, in_lists
from .schema import app_notifications, deliveries, outbox, suppressions

DeliveryKey = tuple[int, str, str]  # (event id, channel, recipient)


@dataclass(frozen=True)
class DeliveryRecord:
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None = None


def load_deliveries(conn: Connection, event_ids: Sequence[int]
                    ) -> dict[DeliveryKey, DeliveryRecord]:
    """The delivery rows already recorded for these events, by their key."""
    if not event_ids:
        return {}
    rows = conn.execute(select(deliveries.c.event_id, deliveries.c.channel,
                               deliveries.c.recipient, deliveries.c.state,
                               deliveries.c.attempts, deliveries.c.next_attempt_at,
                               deliveries.c.last_error)
                        .where(among(conn, deliveries.c.event_id, event_ids)))
    return {(r.event_id, r.channel, r.recipient): DeliveryRecord(
                r.state, r.attempts, r.next_attempt_at, r.last_error)
            for r in rows}


def suppressed_among(conn: Connection, addresses: Iterable[str]) -> set[str]:
    """The addresses among these (lower case) on the suppression list."""
    wanted = sorted({a.lower() for a in addresses})
    if not wanted:
        return set()
    return {a.lower() for a in conn.execute(
        select(suppressions.c.address).where(among(conn, suppressions.c.address, wanted))
    ).scalars()}


def load_opted_out(conn: Connection, event_type: str, user_ids: Iterable[int]) -> set[int]:
    """The users among ``user_ids`` who turned ``event_type`` email off."""
    opted_out: set[int] = set()
    for ids in in_lists(user_ids):
        opted_out.update(conn.execute(select(schema.preferences.c.user_id).where(
            schema.preferences.c.event_type == event_type,
            schema.preferences.c.channel == Channel.EMAIL,
            schema.preferences.c.enabled == false(),
            among(conn, schema.preferences.c.user_id, ids))).scalars())
    return opted_out


def write_plan(conn: Connection, new_deliveries: Sequence[dict[str, Any]],
               notifications: Sequence[dict[str, Any]],
               write_in_app: Callable[[Connection, Sequence[dict[str, Any]]], None] | None = None,
               summary_items: Sequence[dict[str, Any]] = ()) -> None:
    """Insert the batch's new delivery rows, in-app notifications and the items held for
    summaries (beside their ``held`` delivery rows) in one transaction (the notifications
    with ``write_in_app``, the source's, into ``app_notifications`` without one). Raises
    IntegrityError when another worker already planned one of these deliveries (its
    lease on the event ran out while this worker held it)."""
    with conn.begin():
        if new_deliveries:
            insert_many(conn, deliveries, new_deliveries)
        if notifications:
            if write_in_app is None:
                insert_many(conn, app_notifications, notifications)
            else:
                write_in_app(conn, notifications)
        if summary_items:
            insert_many(conn, schema.summary_items, summary_items)


def uses_copy(conn: Connection) -> bool:
    """Whether ``insert_many`` writes by COPY on this connection: PostgreSQL, psycopg."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def insert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys). On PostgreSQL with psycopg, by COPY: a
    batch writes about ten rows per email, and COPY costs a fraction of an INSERT per row,
    on both ends. Errors come out as SQLAlchemy's (IntegrityError on a duplicate)."""
    if not rows:
        return
    if not uses_copy(conn):
        conn.execute(insert(table), list(rows))
        return
    columns = tuple(rows[0])
    preparer = conn.dialect.identifier_preparer
    statement = (f"COPY {preparer.format_table(table)} "
                 f"({', '.join(map(preparer.quote, columns))}) FROM STDIN")
    driver: Any = conn.connection.driver_connection
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[column] for column in columns])
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) \
            from None


_ANSWERS = RowUpdate(
    deliveries, keys=["event_id", "channel", "recipient"],
    columns=["state", "attempts", "last_code", "last_error", "next_attempt_at", "sent_at",
             "provider_message_id", "updated_at"],
    # A late answer (this worker's lease ran out and another worker finished the
    # delivery meanwhile) never overwrites a final state.
    where=[or_(deliveries.c.state == DeliveryState.PENDING,
               deliveries.c.state == DeliveryState.DEFERRED)])


def record_outcomes(engine: Engine, outcomes: Sequence[dict[str, Any]],
                    refused: Sequence[tuple[str, int | None, str]], now: datetime, *,
                    also: Callable[[Connection], None] | None = None) -> None:
    """Store answered deliveries (dicts of ``_ANSWERS``' keys and columns) and suppress the
    addresses the server refused for good, in one transaction, with ``also`` (the sender
    renews its lease there)."""
    with engine.begin() as conn:
        _ANSWERS.run(conn, outcomes)
        for address, code, reason in refused:
            suppress(conn, address, reason, code, now)
        if also is not None:
            also(conn)


def suppress(conn: Connection, address: str, reason: str, code: int | None,
             now: datetime) -> bool:
    """Add ``address`` unless it is there, inside the caller's transaction; safe when
    another worker adds it meanwhile. True when it was added."""
    key = address.strip().lower()
    exists = conn.execute(select(suppressions.c.address)
                          .where(suppressions.c.address == key)).first()
    if exists:
        return False
    try:
        with conn.begin_nested():
            conn.execute(insert(suppressions).values(address=key, reason=reason, code=code,
                                                     created_at=now))
    except IntegrityError:
        return False
    return True


def add_suppression(engine: Engine, address: str, reason: str, now: datetime) -> bool:
    with engine.begin() as conn:
        return suppress(conn, address, reason, None, now)


@dataclass(frozen=True)
class EmailDelivery:
    """One email delivery row, as a delivery report is matched against it."""

    id: int
    event_id: int
    recipient: str
    state: str
    message_id: str | None


def email_deliveries_of_event(conn: Connection, event_id: int) -> list[EmailDelivery]:
    """The email deliveries of one event (a VERP address names one of them by digest)."""
    return [EmailDelivery(r.id, r.event_id, r.recipient, r.state, r.message_id)
            for r in conn.execute(select(deliveries.c.id, deliveries.c.event_id,
                                         deliveries.c.recipient, deliveries.c.state,
                                         deliveries.c.message_id)
                                  .where(deliveries.c.event_id == event_id,
                                         deliveries.c.channel == Channel.EMAIL))]


def fail_delivery(conn: Connection, delivery_id: int, error: str, code: int | None,
                  now: datetime) -> None:
    """Mark a delivery failed for good (a bounce came back for it), with the reason."""
    conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
        state=DeliveryState.FAILED, last_error=error, last_code=code, next_attempt_at=None,
        updated_at=now))


def remove_suppression(engine: Engine, address: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(delete(suppressions)
                              .where(suppressions.c.address == address.strip().lower()))
    return bool(result.rowcount)


def list_suppressions(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(
            select(suppressions).order_by(suppressions.c.created_at, suppressions.c.address))]


def emails_sent_since(engine: Engine, since: datetime) -> int:
    """Emails accepted since ``since`` (digests included: they are events too): seeds the
    hourly rate ceiling across runs and commands."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(deliveries).where(
            and_(deliveries.c.channel == Channel.EMAIL,
                 deliveries.c.state == DeliveryState.SENT,
                 deliveries.c.sent_at >= since))).scalar_one())


def purge_finished(engine: Engine, older_than: timedelta, now: datetime) -> tuple[int, int]:
    """Delete events that ended (done or failed) more than ``older_than`` ago, with their
    delivery records and summary items, and the summaries made before then; return
    (events, delivery records) deleted. In-app notifications stay: they belong to the
    web application's users."""
    cutoff = now - older_than
    finished = select(outbox.c.id).where(
        outbox.c.state.in_((EventState.DONE, EventState.FAILED)),
        outbox.c.processed_at < cutoff)
    with engine.begin() as conn:
        ids = list(conn.execute(finished).scalars())
        removed = 0
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            removed += conn.execute(delete(deliveries).where(
                among(conn, deliveries.c.event_id, chunk))).rowcount or 0
            # items already in a summary go with their event; open ones wait for theirs
            conn.execute(delete(schema.summary_items).where(
                among(conn, schema.summary_items.c.event_id, chunk),
                schema.summary_items.c.summary_id.is_not(None)))
            conn.execute(delete(outbox).where(among(conn, outbox.c.id, chunk)))
        # a window's key names its instants, so an old summary's key never recurs
        conn.execute(delete(schema.summaries).where(schema.summaries.c.created_at < cutoff))
    return len(ids), removed
