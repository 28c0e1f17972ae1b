"""Upgrades in place: Alembic migrations of the tool's own tables.

Only the tables the tool owns are migrated (the outbox, deliveries, suppressions,
preferences, in-app notifications, and the ones later revisions add), with a version
table of their own, ``itsm_notify_alembic_version``: an application's
``alembic_version`` and Django's migrations are never touched. A database made before
migrations existed (release 0.1: the tool's tables, no version table) is adopted by the
baseline revision, which creates only what is missing.

Every command checks the revision before it touches anything (``check_schema``): one
query, and no Alembic import (nor SQLAlchemy's, until a function runs: ops/idle.py reads
``HEAD`` alone), so that an idle cron run stays cheap. Behind: run
``itsm-notify db upgrade``. Ahead (an older binary against a newer schema): stop, write
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import SchemaOutOfDate

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

VERSION_TABLE = "itsm_notify_alembic_version"
REVISIONS = ("0001", "0002", "0003", "0004")
"""Every revision, oldest first (a test holds this to the scripts in versions/)."""
HEAD = REVISIONS[-1]
TOOL_TABLES = ("notification_outbox", "app_notifications", "notification_deliveries",
               "email_suppressions", "notification_preferences", "overdue_alerts")
"""The tables of release 0.1: one of them without a version table is a database to adopt."""




@dataclass(frozen=True)
class SchemaState:
    revision: str | None
    """The revision recorded in the version table, or None."""
    legacy_tables: tuple[str, ...] = ()
    """The tool's tables present without a version table (release 0.1)."""

    @property
    def current(self) -> bool:
        return self.revision == HEAD

    @property
    def ahead(self) -> bool:
        return self.revision is not None and self.revision not in REVISIONS


def schema_state(engine: Engine) -> SchemaState:
    """Where the database stands (one or two queries)."""
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        try:
            revision = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        except Exception:
            conn.rollback()
            names = set(inspect(conn).get_table_names())
            return SchemaState(None, tuple(t for t in TOOL_TABLES if t in names))
    return SchemaState(revision)


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the tool's tables are at this release's revision."""
    state = schema_state(engine)
    if state.current:
        return
    if state.ahead:
        raise SchemaOutOfDate(
            f"The database's tables are at revision {state.revision}, made by a newer "
            "itsm-notify than this one: run that version (or upgrade this one); nothing "
            "was written.")
    if state.revision is None and not state.legacy_tables:
        raise SchemaOutOfDate("The database has none of itsm-notify's tables: run "
                              "'itsm-notify db init' first.")
    raise SchemaOutOfDate(
        f"The database's tables are at revision {state.revision or '0.1 (unversioned)'}, "
        f"behind this release's {HEAD}: run 'itsm-notify db upgrade' (it keeps every row).")


def upgrade(engine: Engine) -> list[str]:
    """Bring the tool's tables to the head revision; the tables it created. Safe to run
    again: a no-op when current. Refuses a schema newer than this release."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    state = schema_state(engine)
    if state.ahead:
        check_schema(engine)
    if state.current:
        return []
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    with engine.connect() as conn:
        before = set(inspect(conn).get_table_names())
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
        after = set(inspect(conn).get_table_names())
    return sorted(after - before - {VERSION_TABLE})


def init_database(engine: Engine, *, contract_tables: bool) -> list[str]:
    """``db init``: the contract's application tables that exist neither as a table nor
    as a view (only with ``contract_tables``: under the ``contract`` source), then the
    tool's own tables at the head revision. The names of the tables created."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateTable

    from ..schema import contract_metadata

    created: list[str] = []
    if contract_tables:
        with engine.begin() as conn:
            views = set(inspect(conn).get_view_names())
            missing = _missing_contract_tables(conn)
            for table in contract_metadata.sorted_tables:
                if table.name not in missing:
                    continue
                # A foreign key cannot refer to a view: keep only those to tables.
                keys = [k for k in table.foreign_key_constraints
                        if k.referred_table.name not in views]
                conn.execute(CreateTable(table, include_foreign_key_constraints=keys))
                for index in table.indexes:
                    index.create(conn)
                created.append(table.name)
    return created + upgrade(engine)


def missing_contract_tables(engine: Engine) -> list[str]:
    """The contract's application tables present neither as a table nor as a view."""
    with engine.connect() as conn:
        return _missing_contract_tables(conn)


def _missing_contract_tables(conn: Connection) -> list[str]:
    from sqlalchemy import inspect

    from ..schema import contract_metadata

    inspector = inspect(conn)
    present = set(inspector.get_table_names()) | set(inspector.get_view_names())
    return [t.name for t in contract_metadata.sorted_tables if t.name not in present]
