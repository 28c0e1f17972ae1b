"""Schema (SQLAlchemy 2 Core), engines, and the outbox queue: claims with leases.

Claims follow the lesson of django-post-office and django-mailer: the database
coordinates the workers. On PostgreSQL and MariaDB a short transaction selects the
next pending rows ``FOR UPDATE SKIP LOCKED`` and stamps them ``processing`` with a
lease; on SQLite every transaction begins ``IMMEDIATE`` (one writer at a time), so the
same select-then-update is atomic across local processes. No transaction is ever held
open across network I/O, and a lease that expires (worker killed) makes its events
claimable again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from .models import OutboxEvent

# --------------------------------------------------------------------------- types


class utc_now(FunctionElement[datetime]):
    """The database's current UTC time, as a column default the producer never sets."""

    type = DateTime()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"  # SQLite: already UTC


@compiles(utc_now, "postgresql")
def _utc_now_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "(now() AT TIME ZONE 'utc')"


@compiles(utc_now, "mysql")
@compiles(utc_now, "mariadb")
def _utc_now_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    return "(UTC_TIMESTAMP(6))"


class _SQLiteTimestamp(sqlite.DATETIME):
    """SQLite's DATETIME, written with ``isoformat``: the same text as SQLAlchemy's own
    storage format (``2026-11-30 09:15:04.000123``) at a fraction of its cost, which
    builds a dict per value; send-pending writes several timestamps per email."""

    def bind_processor(self, dialect: Any) -> Any:
        general = super().bind_processor(dialect)

        def process(value: Any) -> Any:
            if type(value) is datetime and value.tzinfo is None:
                return value.isoformat(" ", "microseconds")
            return general(value) if general else value

        return process


Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb") \
    .with_variant(_SQLiteTimestamp(), "sqlite")
Id = BigInteger().with_variant(Integer(), "sqlite")
Address = String(320)

metadata = MetaData()

# ------------------------------------------------- tables the ITSM application owns

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(150), nullable=False, unique=True),
    Column("email", Address),
    Column("first_name", String(150), nullable=False, server_default=""),
    Column("last_name", String(150), nullable=False, server_default=""),
    Column("is_active", Boolean, nullable=False, server_default="1"),
    Column("is_manager", Boolean, nullable=False, server_default="0"),
    Column("locale", String(16)),
)

projects = Table(
    "projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("notify_team", Boolean, nullable=False, server_default="0"),
)

project_members = Table(
    "project_members", metadata,
    Column("project_id", ForeignKey("projects.id"), primary_key=True),
    Column("user_id", ForeignKey("users.id"), primary_key=True),
)

tickets = Table(
    "tickets", metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(64), nullable=False, unique=True),
    Column("title", String(500), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("status", String(64), nullable=False, server_default="open"),
    Column("priority", String(16), nullable=False, server_default="medium"),
    Column("requester_id", ForeignKey("users.id"), nullable=False),
    Column("assignee_id", ForeignKey("users.id")),
    Column("project_id", ForeignKey("projects.id")),
    Column("due_at", Timestamp),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    # overdue-scan: tickets past due, by due date (the status is filtered in the index).
    Index("ix_tickets_due_status", "due_at", "status"),
)

# overdue-scan on PostgreSQL: most of a help desk's tickets are closed and long past due,
# so ``due_at < now`` covers nearly all of the index above and the planner reads the whole
# table instead. This partial index holds only tickets that can be overdue under the
# default ITSM_CLOSED_STATUSES (and any list that includes them): the scan reads just
# those (bench/README.md has the plans). SQLite keeps using the index above; MariaDB has
# no partial indexes.
Index("ix_tickets_open_due", tickets.c.due_at,
      postgresql_where=and_(tickets.c.due_at.is_not(None),
                            tickets.c.status.not_in(["resolved", "closed"]))
      ).ddl_if(dialect="postgresql")

comments = Table(
    "comments", metadata,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", ForeignKey("tickets.id"), nullable=False, index=True),
    Column("author_id", ForeignKey("users.id"), nullable=False),
    Column("body", Text, nullable=False),
    Column("is_internal", Boolean, nullable=False, server_default="0"),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
)

# ------------------------------------------------------------------------ the outbox

PENDING, PROCESSING, DONE, FAILED = "pending", "processing", "done", "failed"
EVENT_STATES = (PENDING, PROCESSING, DONE, FAILED)

outbox = Table(
    "notification_outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_type", String(64), nullable=False),
    Column("ticket_id", Integer),
    Column("actor_id", Integer),
    Column("payload", Text),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("state", String(16), nullable=False, server_default=PENDING),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("available_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("locked_by", String(128)),
    Column("locked_until", Timestamp),
    Column("last_error", Text),
    Column("processed_at", Timestamp),
    # The claim walks pending rows in id order.
    Index("ix_outbox_state_id", "state", "id"),
)

# ---------------------------------------------------------------- tables the tool owns

app_notifications = Table(
    "app_notifications", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("ticket_id", Integer),
    Column("event_type", String(64), nullable=False),
    Column("title", String(500), nullable=False),
    Column("body", Text, nullable=False),
    Column("url", String(500), nullable=False),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("read_at", Timestamp),
    Index("ix_app_notifications_user_read", "user_id", "read_at"),
)

EMAIL, IN_APP = "email", "in_app"
# Delivery states: pending (planned, not yet answered), deferred (4xx or connection
# lost; retried), sent (accepted by the server / written), failed (5xx or retries
# exhausted), suppressed (address on the suppression list), skipped (no valid address).
SENT, DEFERRED, SUPPRESSED, SKIPPED = "sent", "deferred", "suppressed", "skipped"
FINAL_DELIVERY_STATES = (SENT, FAILED, SUPPRESSED, SKIPPED)

deliveries = Table(
    "notification_deliveries", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", Address, nullable=False),
    Column("user_id", Integer),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("message_id", String(255)),
    Column("last_code", Integer),
    Column("last_error", Text),
    Column("next_attempt_at", Timestamp),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("updated_at", Timestamp),
    Column("sent_at", Timestamp),
    UniqueConstraint("event_id", "channel", "recipient", name="uq_delivery"),
    Index("ix_deliveries_sent_at", "channel", "sent_at"),
)

suppressions = Table(
    "email_suppressions", metadata,
    Column("address", Address, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("code", Integer),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
)

preferences = Table(
    "notification_preferences", metadata,
    Column("user_id", Integer, primary_key=True),
    Column("event_type", String(64), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", Timestamp, nullable=False, server_default=utc_now()),
)

overdue_alerts = Table(
    "overdue_alerts", metadata,
    Column("ticket_id", Integer, primary_key=True),
    Column("recipient", Address, primary_key=True),
    Column("due_at", Timestamp, nullable=False),
    Column("alerted_at", Timestamp, nullable=False),
)

# ----------------------------------------------------------------------- engines


def utcnow() -> datetime:
    """Naive UTC, as every timestamp column stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used; the message says what to fix."""


def make_engine(url: str) -> Engine:
    """An engine tuned for short claim transactions on each supported database."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            _make_sqlite_transactions_immediate(engine)
        elif url.startswith(("mysql", "mariadb")):
            engine = create_engine(url, isolation_level="READ COMMITTED", pool_pre_ping=True)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError:
        raise DatabaseUnavailable(
            f"DATABASE_URL names a database driver that is not installed ({url.split(':')[0]}): "
            "install the extra, e.g. pip install 'itsm-notify[postgresql]' or '[mariadb]'."
        ) from None
    except (ArgumentError, ValueError):
        raise DatabaseUnavailable(
            "DATABASE_URL is not a valid SQLAlchemy URL: use e.g. sqlite:///itsm-notify.db or "
            "postgresql+psycopg://user@host/dbname."
        ) from None
    return engine


def _make_sqlite_transactions_immediate(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions, and begin them IMMEDIATE so a
    claim's select and update run under one write lock (the recipe from SQLAlchemy's
    SQLite dialect documentation)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def describe_db_error(exc: BaseException, url: str) -> str:
    """One sentence about a database failure, without the password in the URL."""
    from sqlalchemy.engine import make_url

    try:
        safe = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        safe = "DATABASE_URL"
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else ""
    if isinstance(exc, OperationalError | DBAPIError):
        return (f"Cannot use the database at {safe} ({reason}): check DATABASE_URL and that the "
                "server is running, then run 'itsm-notify db init' if the tables are missing.")
    return f"Database error at {safe} ({reason}): check DATABASE_URL."


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn driver errors raised while reaching the database into DatabaseUnavailable."""
    try:
        yield
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable(describe_db_error(exc, url)) from None


def init_db(engine: Engine) -> list[str]:
    """Create the tables that do not exist yet; return their names. Safe to run again."""
    with engine.connect() as conn:
        existing = set(_table_names(conn))
    created = [t.name for t in metadata.sorted_tables if t.name not in existing]
    metadata.create_all(engine, checkfirst=True)
    return created


def _table_names(conn: Connection) -> list[str]:
    from sqlalchemy import inspect

    return inspect(conn).get_table_names()


def missing_tables(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        existing = set(_table_names(conn))
    return [t.name for t in metadata.sorted_tables if t.name not in existing]


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


def among(conn: Connection, column: ColumnElement[Any],
          values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``, one parameter.

    An IN list is one parameter per value (a batch's users: hundreds), and psycopg
    parses a statement with more than 50 parameters anew every time, in Python, then
    PostgreSQL parses and plans its new text; the array keeps the statement's text the
    same from batch to batch."""
    values = list(values)
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


class RowUpdate:
    """An UPDATE of many rows, each with its own values, in one round trip: each row (a
    dict of ``keys`` and ``columns``) sets its ``columns`` and the ``fixed`` values on the
    row of ``table`` its ``keys`` name, where ``where`` holds too (its bind parameters
    are given to ``run``). Built once, run many times.

    SQLite runs an ``executemany`` in C within the process, and psycopg pipelines one,
    each row's UPDATE on a prepared plan by the key. PyMySQL though sends it a row at a
    time, a round trip each, so MariaDB gets the rows as a derived table of ``UNION
    ALL`` selects joined by ``keys``. (One PostgreSQL statement ``FROM unnest(arrays)``
    saved a little client CPU and cost more server CPU, and its plan depends on the
    table's statistics: on a table not yet analyzed it scanned every email row.)"""

    def __init__(self, table: Table, *, keys: Sequence[str], columns: Sequence[str],
                 fixed: Mapping[str, Any] | None = None,
                 where: Sequence[ColumnElement[bool]] = ()) -> None:
        self.table, self.keys, self.columns = table, list(keys), list(columns)
        self.fixed, self.where = dict(fixed or {}), list(where)
        self._sent = self.keys + self.columns  # what each row carries
        self._executemany = self._statement({c: bindparam(f"u_{c}") for c in self._sent})

    def run(self, conn: Connection, rows: Sequence[Mapping[str, Any]],
            **params: Any) -> int:
        """Update ``rows``; return the number of rows changed."""
        if not rows:
            return 0
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            result = conn.execute(self._statement(union_all(*[
                select(*[literal(row[c], self.table.c[c].type).label(c) for c in self._sent])
                for row in rows]).subquery("v")), params)
        else:
            result = conn.execute(self._executemany, [
                {**{f"u_{c}": row[c] for c in self._sent}, **params} for row in rows])
        return result.rowcount if result.rowcount is not None and result.rowcount >= 0 \
            else len(rows)

    def _statement(self, source: Any) -> Any:
        """``source``: a FROM clause with the columns, or a dict of bind parameters."""
        def value(column: str) -> Any:
            return source[column] if isinstance(source, dict) else source.c[column]

        return (update(self.table)
                .where(*[self.table.c[k] == value(k) for k in self.keys], *self.where)
                .values({**{c: value(c) for c in self.columns}, **self.fixed}))


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
