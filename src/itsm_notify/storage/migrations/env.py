"""Alembic's environment for the tool's own tables.

Run by ``storage.migrations.upgrade`` (never by the ``alembic`` command line): the
connection comes in ``config.attributes``. The version table is the tool's own
(``itsm_notify_alembic_version``), so an application's ``alembic_version`` and Django's
migrations are never touched; SQLite alters tables in batch mode (copy and move)."""

from __future__ import annotations

from alembic import context

from itsm_notify.storage.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite",
                  transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
