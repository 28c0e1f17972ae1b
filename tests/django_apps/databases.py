"""SQLAlchemy URLs (what the test suite hands around) as Django ``DATABASES`` entries.

The conftest ``database_url`` fixture gives ``sqlite:///…``,
``postgresql+psycopg://…`` and ``mysql+pymysql://…`` URLs; the Django apps under test
need the same database as a ``DATABASES["default"]`` dict. MariaDB goes through
PyMySQL posing as ``MySQLdb`` (:func:`use_pymysql_as_mysqldb`), so no C client
library is needed.

This module is also imported by ``spire_harness.py`` under django-spire's own Python
(>= 3.12), so it uses nothing but SQLAlchemy's URL parser and the standard library.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import make_url

#: SQLAlchemy backend name -> Django database engine
_ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "mariadb": "django.db.backends.mysql",
}


def django_database(url: str) -> dict[str, Any]:
    """The Django ``DATABASES`` entry for a SQLAlchemy ``url``.

    MariaDB/MySQL connections use utf8mb4, as django-helpdesk's install notes ask for
    its multilingual e-mail templates.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _ENGINES:
        raise ValueError(f"no Django engine for a {backend!r} URL: use sqlite, postgresql "
                         "or mysql/mariadb")
    entry: dict[str, Any] = {"ENGINE": _ENGINES[backend], "NAME": parsed.database or ""}
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("the Django apps need a SQLite file, not an in-memory database")
        return entry
    entry.update({
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.host or "",
        "PORT": str(parsed.port or ""),
    })
    if backend in ("mysql", "mariadb"):
        use_pymysql_as_mysqldb()
        entry["OPTIONS"] = {"charset": "utf8mb4"}
    return entry


def use_pymysql_as_mysqldb() -> None:
    """Let Django's MySQL backend (written for mysqlclient) run on PyMySQL.

    PyMySQL announces itself as mysqlclient 2.2.8 (``pymysql.version_info``), which
    passes the version check of Django 5.2 (>= 1.4.3) and of Django 6 (>= 2.2.1).
    """
    import pymysql

    pymysql.install_as_MySQLdb()
