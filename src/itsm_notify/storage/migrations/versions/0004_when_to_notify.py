"""When to notify (issue 18): due-soon warnings sent, delivery frequencies, the events
held for summaries and the summaries made.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from itsm_notify.storage.schema import Id, Timestamp, utc_now

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "due_soon_warnings",
        sa.Column("ticket_id", sa.Integer, primary_key=True),
        sa.Column("threshold", sa.String(64), primary_key=True),
        sa.Column("due_at", Timestamp, primary_key=True),
        sa.Column("warned_at", Timestamp, nullable=False),
    )
    op.create_table(
        "notification_schedules",
        sa.Column("user_id", sa.Integer, primary_key=True),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("frequency", sa.String(16), nullable=False),
        sa.Column("daily_hour", sa.Integer, nullable=False, server_default="8"),
        sa.Column("time_zone", sa.String(64)),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=utc_now()),
        sa.CheckConstraint("frequency IN ('immediate', 'hourly', 'daily')",
                           name="ck_schedule_frequency"),
        sa.CheckConstraint("daily_hour >= 0 AND daily_hour <= 23",
                           name="ck_schedule_daily_hour"),
    )
    op.create_table(
        "notification_summary_items",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("event_id", _EVENT_ID, nullable=False),
        sa.Column("ticket_id", sa.Integer),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("event_at", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
        sa.Column("summary_id", _EVENT_ID),
        sa.UniqueConstraint("user_id", "channel", "event_id", name="uq_summary_item"),
    )
    op.create_index("ix_summary_items_open", "notification_summary_items",
                    ["summary_id", "user_id", "channel", "created_at"])
    op.create_table(
        "notification_summaries",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("window_key", sa.String(64), nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("event_id", _EVENT_ID),
        sa.Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
        sa.UniqueConstraint("user_id", "channel", "window_key", name="uq_summary_window"),
    )
