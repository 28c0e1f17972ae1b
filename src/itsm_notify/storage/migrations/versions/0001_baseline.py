"""Baseline: the tool's tables as release 0.1 made them (before migrations existed).

Each table is created only when missing, so this revision both builds a new database
and adopts one that ``db init`` of 0.1 made (or whose outbox the Django app's migration
made): nothing in an existing table is changed or lost. The shapes are frozen here; the
column types are the schema's portable helpers.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from itsm_notify.storage.schema import Address, Id, Timestamp, utc_now

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[sa.Table]:
    metadata = sa.MetaData()
    return [
        sa.Table(
            "notification_outbox", metadata,
            sa.Column("id", Id, primary_key=True, autoincrement=True),
            sa.Column("event_type", sa.String(64), nullable=False),
            sa.Column("ticket_id", sa.Integer),
            sa.Column("actor_id", sa.Integer),
            sa.Column("payload", sa.Text),
            sa.Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
            sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("available_at", Timestamp, nullable=False, server_default=utc_now()),
            sa.Column("locked_by", sa.String(128)),
            sa.Column("locked_until", Timestamp),
            sa.Column("last_error", sa.Text),
            sa.Column("processed_at", Timestamp),
            sa.Index("ix_outbox_state_id", "state", "id"),
        ),
        sa.Table(
            "app_notifications", metadata,
            sa.Column("id", Id, primary_key=True, autoincrement=True),
            sa.Column("user_id", sa.Integer, nullable=False),
            sa.Column("ticket_id", sa.Integer),
            sa.Column("event_type", sa.String(64), nullable=False),
            sa.Column("title", sa.String(500), nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.Column("url", sa.String(500), nullable=False),
            sa.Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
            sa.Column("read_at", Timestamp),
            sa.Index("ix_app_notifications_user_read", "user_id", "read_at"),
        ),
        sa.Table(
            "notification_deliveries", metadata,
            sa.Column("id", Id, primary_key=True, autoincrement=True),
            sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                      nullable=False),
            sa.Column("channel", sa.String(16), nullable=False),
            sa.Column("recipient", Address, nullable=False),
            sa.Column("user_id", sa.Integer),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("message_id", sa.String(255)),
            sa.Column("last_code", sa.Integer),
            sa.Column("last_error", sa.Text),
            sa.Column("next_attempt_at", Timestamp),
            sa.Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
            sa.Column("updated_at", Timestamp),
            sa.Column("sent_at", Timestamp),
            sa.UniqueConstraint("event_id", "channel", "recipient", name="uq_delivery"),
            sa.Index("ix_deliveries_sent_at", "channel", "sent_at"),
        ),
        sa.Table(
            "email_suppressions", metadata,
            sa.Column("address", Address, primary_key=True),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("code", sa.Integer),
            sa.Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
        ),
        sa.Table(
            "notification_preferences", metadata,
            sa.Column("user_id", sa.Integer, primary_key=True),
            sa.Column("event_type", sa.String(64), primary_key=True),
            sa.Column("channel", sa.String(16), primary_key=True),
            sa.Column("enabled", sa.Boolean, nullable=False),
            sa.Column("updated_at", Timestamp, nullable=False, server_default=utc_now()),
        ),
        sa.Table(
            "overdue_alerts", metadata,
            sa.Column("ticket_id", sa.Integer, primary_key=True),
            sa.Column("recipient", Address, primary_key=True),
            sa.Column("due_at", Timestamp, nullable=False),
            sa.Column("alerted_at", Timestamp, nullable=False),
        ),
    ]


def upgrade() -> None:
    connection = op.get_bind()
    existing = set(sa.inspect(connection).get_table_names())
    for table in _tables():
        if table.name not in existing:
            table.create(connection)
