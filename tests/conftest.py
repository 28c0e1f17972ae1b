"""Shared fixtures: a real SMTP server, TLS material, the three databases, clean config.

* ``smtp_sink`` — a started :class:`tests.smtp_server.SmtpSink` on 127.0.0.1.
* ``database_url`` — parametrized over ``sqlite``, ``postgresql``, ``mariadb``; the
  shared servers come from ``ITSM_TEST_POSTGRES_URL`` / ``ITSM_TEST_MARIADB_URL``
  (``.ci/run`` sets them), are emptied before each test, and are skipped if unset.
* ``sqlite_url`` — a fresh SQLite file, for tests that need just one database.
* ``helpdesk_site``, ``spire_python`` — the real django-helpdesk and django-spire, built
  by their own migrations (``tests/django_apps/fixtures.py``).
* ``trust_ca``, ``server_tls_context``, ``client_tls_context``, ``ca_bundle_path`` —
  a private CA (trustme) and a certificate for 127.0.0.1 / localhost.
* Every test runs in its own ``tmp_path`` with the tool's settings removed from the
  environment, so neither the developer's shell nor a stray ``.env`` leaks in.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtp_server import SmtpSink

#: the real Django help desks: helpdesk_site, spire_python (tests/django_apps/fixtures.py)
pytest_plugins = ["django_apps.fixtures"]

# --------------------------------------------------------------- configuration

#: settings the tool reads from the environment (contract §4), removed for each test
CONFIG_ENV_VARS = (
    "DATABASE_URL", "EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER",
    "EMAIL_HOST_PASSWORD", "EMAIL_USE_TLS", "EMAIL_USE_SSL", "EMAIL_TIMEOUT",
    "DEFAULT_FROM_EMAIL", "SITE_URL", "ADMINS", "DEBUG", "DEVELOPMENT_EMAIL",
    "ITSM_NOTIFY_CONFIG", "REPLY_TO_EMAIL", "SITE_NAME", "SECRET_KEY",
)
#: prefixes of further settings, also removed (except the test-only ITSM_TEST_*): the
#: HTTP email providers' too, and AWS's, which botocore's credential chain would read
CONFIG_ENV_PREFIXES = ("EMAIL_", "ITSM_", "SENDGRID_", "POSTMARK_", "MAILGUN_", "AWS_",
                       "AMAZON_SES_")
KEEP_ENV_PREFIXES = ("ITSM_TEST_",)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path (no stray .env / config.toml) with no tool settings in os.environ."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name in CONFIG_ENV_VARS or (name.startswith(CONFIG_ENV_PREFIXES)
                                       and not name.startswith(KEEP_ENV_PREFIXES)):
            monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------ SMTP

@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A plain SMTP server on 127.0.0.1 (no TLS, no AUTH), stopped after the test."""
    with SmtpSink() as sink:
        yield sink


# ------------------------------------------------------------------------- TLS

@pytest.fixture(scope="session")
def trust_ca() -> trustme.CA:
    """A private certificate authority; clients must be told to trust it."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(trust_ca: trustme.CA) -> trustme.LeafCert:
    return trust_ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_tls_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side SSLContext with a certificate for 127.0.0.1 and localhost."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_tls_context(trust_ca: trustme.CA) -> ssl.SSLContext:
    """A client SSLContext that verifies certificates against trust_ca (only)."""
    ctx = ssl.create_default_context()
    trust_ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="session")
def ca_bundle_path(trust_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """trust_ca's certificate as a PEM file (for a setting like EMAIL_SSL_CAFILE)."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trust_ca.cert_pem.write_to_path(str(path))
    return path


# ------------------------------------------------------------------- databases

DATABASES = ["sqlite", "postgresql", "mariadb"]
_SHARED_DB_ENV = {
    "postgresql": ("ITSM_TEST_POSTGRES_URL", "PostgreSQL"),
    "mariadb": ("ITSM_TEST_MARIADB_URL", "MariaDB"),
}


def empty_database(url: str) -> None:
    """Drop every table (and, on PostgreSQL, sequence and enum type) in ``url``'s database.

    Waits at most ~15 s for locks, so a connection a previous test left open fails
    the test loudly instead of hanging it.
    """
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                conn.exec_driver_sql("SET LOCAL lock_timeout = '15s'")
                insp = sa.inspect(conn)
                prep = conn.dialect.identifier_preparer
                for view in insp.get_view_names():
                    conn.exec_driver_sql(f"DROP VIEW IF EXISTS {prep.quote(view)} CASCADE")
                tables = insp.get_table_names()
                if tables:
                    names = ", ".join(prep.quote(t) for t in tables)
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {names} CASCADE")
                for (seq,) in conn.exec_driver_sql(
                        "SELECT sequence_name FROM information_schema.sequences "
                        "WHERE sequence_schema = current_schema()"):
                    conn.exec_driver_sql(f"DROP SEQUENCE IF EXISTS {prep.quote(seq)} CASCADE")
                for (typ,) in conn.exec_driver_sql(
                        "SELECT t.typname FROM pg_type t "
                        "JOIN pg_namespace n ON n.oid = t.typnamespace "
                        "WHERE t.typtype = 'e' AND n.nspname = current_schema()"):
                    conn.exec_driver_sql(f"DROP TYPE IF EXISTS {prep.quote(typ)} CASCADE")
            elif dialect in ("mysql", "mariadb"):
                conn.exec_driver_sql("SET SESSION lock_wait_timeout = 15")
                conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
                try:
                    insp = sa.inspect(conn)
                    prep = conn.dialect.identifier_preparer
                    for view in insp.get_view_names():
                        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {prep.quote(view)}")
                    for table in insp.get_table_names():
                        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {prep.quote(table)}")
                finally:
                    conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
            else:
                md = sa.MetaData()
                md.reflect(conn)
                md.drop_all(conn)
        with engine.connect() as conn:  # nothing may be left
            left = sa.inspect(conn).get_table_names()
        if left:
            raise RuntimeError(f"could not empty the test database {url}: {left} remain")
    finally:
        engine.dispose()


def _shared_database_url(kind: str) -> str:
    env_name, label = _SHARED_DB_ENV[kind]
    url = os.environ.get(env_name)
    if not url:
        pytest.skip(f"{label} tests need {env_name} (set by .ci/run)")
    empty_database(url)
    return url


@pytest.fixture(params=DATABASES, ids=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty database; the test runs once per database.

    sqlite: a new file in tmp_path. postgresql / mariadb: the shared ``test``
    database from ITSM_TEST_POSTGRES_URL / ITSM_TEST_MARIADB_URL, all tables
    dropped first (skipped when the variable is unset).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/itsm.db"
    return _shared_database_url(request.param)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL of a new SQLite file in tmp_path."""
    return f"sqlite:///{tmp_path}/itsm.db"
