"""The idle run: what cron pays every minute on every host when nothing is due.

``itsm-notify send-pending`` with nothing to do used to import the whole tool
(SQLAlchemy, Jinja, the email transports, the command-line framework) to learn that the
outbox held nothing claimable. Here the question is asked first with the database's
own driver, in one indexed query (and one for the schema's revision): when the answer
is "nothing is due, and the tables are current", the run ends silently, as the full
path would; in every other case (something is due, the URL is of a form not handled
here, the driver is missing, any error at all) the full path runs and says what it
says. ``tests/test_idle.py`` holds the answer to the full path's claim on every
database.

The query is the claim's (storage/outbox.py ``_claimable``): pending events whose
``available_at`` has come, and claimed ones whose lease ran out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..storage.migrations import HEAD, VERSION_TABLE

_DUE = ("SELECT 1 FROM notification_outbox WHERE (state = 'pending' AND available_at <= {p}) "
        "OR (state = 'processing' AND locked_until < {p}) LIMIT 1")


def nothing_due(url: str, now: datetime | None = None) -> bool:
    """True only when the database at ``url`` answers, its tool tables are at this
    release's revision, and no outbox event is claimable at ``now`` (naive UTC)."""
    moment = now or datetime.now(UTC).replace(tzinfo=None)
    try:
        connect = _connector(url)
        if connect is None:
            return False
        conn, placeholder = connect()
    except Exception:
        return False
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT version_num FROM {VERSION_TABLE}")
        if [tuple(row) for row in cursor.fetchall()] != [(HEAD,)]:
            return False
        value: Any = moment.isoformat(" ", "microseconds") if placeholder == "?" else moment
        cursor.execute(_DUE.format(p=placeholder), (value, value))
        return cursor.fetchone() is None
    except Exception:
        return False
    finally:
        conn.close()


def _connector(url: str) -> Callable[[], tuple[Any, str]] | None:
    """How to connect to ``url`` with its driver alone, or None for a form this quick
    check leaves to the full path (which understands every URL SQLAlchemy does)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query))
    if scheme == "sqlite" and parts.path not in ("", "/") and not parts.query:
        path = parts.path[1:]  # sqlite:///relative.db, sqlite:////absolute.db
        return lambda: (_sqlite(path), "?")
    if scheme == "postgresql+psycopg" and parts.hostname and parts.path not in ("", "/"):
        kwargs = {"host": parts.hostname, "port": parts.port or 5432,
                  "dbname": unquote(parts.path[1:]), "user": unquote(parts.username or ""),
                  "password": unquote(parts.password or ""), **options}
        return lambda: (_psycopg(kwargs), "%s")
    if scheme in ("mysql+pymysql", "mariadb+pymysql") and parts.hostname and \
            parts.path not in ("", "/") and set(options) <= {"charset"}:
        kwargs = {"host": parts.hostname, "port": parts.port or 3306,
                  "database": unquote(parts.path[1:]), "user": unquote(parts.username or ""),
                  "password": unquote(parts.password or ""), **options}
        return lambda: (_pymysql(kwargs), "%s")
    return None


def _sqlite(path: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)  # never creates
    conn.text_factory = lambda data: data.decode("utf-8", "replace")
    return conn


def _psycopg(kwargs: dict[str, Any]) -> Any:
    import psycopg

    return psycopg.connect(connect_timeout=5, autocommit=True,
                           **{k: v for k, v in kwargs.items() if v != ""})


def _pymysql(kwargs: dict[str, Any]) -> Any:
    import pymysql

    return pymysql.connect(connect_timeout=5, autocommit=True, **kwargs)
