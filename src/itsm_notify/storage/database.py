"""Engines, the errors of reaching a database, table creation, and two query helpers
every module uses (``among``, ``RowUpdate``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.sql.expression import ColumnElement

from ..errors import DatabaseUnavailable

# ----------------------------------------------------------------------- engines


def utcnow() -> datetime:
    """Naive UTC, as every timestamp column stores it."""
    return datetime.now(UTC).replace(tzinfo=None)




def make_engine(url: str) -> Engine:
    """An engine tuned for short claim transactions on each supported database.

    Sessions on PostgreSQL and MariaDB run in UTC: the tool's timestamps are naive UTC,
    and compared with an app's time-zone-aware columns (django-helpdesk's on PostgreSQL,
    a TIMESTAMP on MariaDB) they must not be read in the server's local time."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            _make_sqlite_transactions_immediate(engine)
        elif url.startswith(("mysql", "mariadb")):
            engine = create_engine(url, isolation_level="READ COMMITTED", pool_pre_ping=True,
                                   connect_args={"init_command": "SET time_zone = '+00:00'"})
        else:
            engine = create_engine(url, pool_pre_ping=True,
                                   connect_args={"options": "-c timezone=UTC"})
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


def _text_from_sqlite(data: bytes) -> str:
    return data.decode("utf-8", "replace")


_READS_ONLY = "itsm_notify_reads_only"
"""The execution option ``reads`` sets on a connection while its transaction only reads."""


def _make_sqlite_transactions_immediate(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions, and begin them IMMEDIATE so a
    claim's select and update run under one write lock (the recipe from SQLAlchemy's
    SQLite dialect documentation); a transaction that only reads (``reads``) begins
    DEFERRED, so that in WAL mode it never holds the write lock a writer waits for."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        # SQLite stores whatever bytes an app writes into a TEXT column; invalid UTF-8
        # must read as text with replacement characters, not fail every claim.
        dbapi_connection.text_factory = _text_from_sqlite
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        reads_only = conn.get_execution_options().get(_READS_ONLY, False)
        conn.exec_driver_sql("BEGIN" if reads_only else "BEGIN IMMEDIATE")


@contextmanager
def reads(conn: Connection) -> Iterator[Connection]:
    """One transaction for several reads on ``conn``, ended (rolled back) on leaving.

    A batch's reads share it rather than a connection each: every checkout from the pool
    costs round trips of its own (the pool's ping, the rollback that returns it, and on
    PostgreSQL a BEGIN before the ping). Inside, ``conn.rollback()`` ends a transaction
    a failed read aborted, and the next read begins another. On SQLite the transaction
    begins DEFERRED, so that while it lasts the recorder's writes do not wait for it."""
    conn.execution_options(**{_READS_ONLY: True})
    try:
        yield conn
    finally:
        try:
            conn.rollback()
        finally:
            conn.execution_options(**{_READS_ONLY: False})


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


def describe_exception(exc: BaseException) -> str:
    """An exception as one short line: its kind and the first line of its message, the
    way a driver's error reads in a ``last_error`` (bounded, no traceback)."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    first = message.splitlines()[0] if message else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def raise_if_database_down(engine: Engine) -> None:
    """After a statement failed: raise DatabaseUnavailable when the database itself
    cannot be used (then the events stay claimed and are retried, not failed), return
    when it answers (the failure was the data's)."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        raise DatabaseUnavailable(describe_db_error(exc, str(engine.url))) from None


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn driver errors raised while reaching the database into DatabaseUnavailable."""
    try:
        yield
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable(describe_db_error(exc, url)) from None


IDS_PER_LIST = 500
"""Values per IN list (``among``) where a query may take any number of ids."""


def in_lists(values: Iterable[Any]) -> Iterator[list[Any]]:
    """``values`` sorted, without repeats, IDS_PER_LIST at a time: one ``among`` each."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), IDS_PER_LIST):
        yield ordered[start:start + IDS_PER_LIST]


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


def hold_lock(conn: Connection, name: str, now: datetime) -> None:
    """Hold the lock row ``name`` until ``conn``'s transaction ends: another transaction
    asking for it waits (``SELECT ... FOR UPDATE``; SQLite's transactions already take
    turns). The database coordinates: no lock file, nothing left behind by a crash."""
    from .schema import locks

    claimed = conn.execute(update(locks).where(locks.c.name == name).values(held_at=now))
    if claimed.rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(locks).values(name=name, held_at=now))
    except IntegrityError:  # made meanwhile by another transaction, which held it
        conn.execute(update(locks).where(locks.c.name == name).values(held_at=now))
