"""The record of inbound mail: one row per message, by a unique key (issue 15).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from itsm_notify.storage.schema import Address, Id, Timestamp

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("message_key", sa.String(64), nullable=False, unique=True),
        sa.Column("message_id", sa.String(998)),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("from_address", Address),
        sa.Column("subject", sa.String(998)),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")),
        sa.Column("ticket_id", sa.Integer),
        sa.Column("comment_id", sa.Integer),
        sa.Column("event_id", Id),
        sa.Column("cut_text", sa.Text),
        sa.Column("updated_at", Timestamp),
    )
    op.create_index("ix_inbound_outcome_received", "inbound_messages",
                    ["outcome", "received_at"])
