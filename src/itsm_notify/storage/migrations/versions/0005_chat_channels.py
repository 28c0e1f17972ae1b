"""Chat channels (issue 17): the id a provider gave an accepted message, and the chat
destinations disabled because their webhook is gone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from itsm_notify.storage.schema import Timestamp

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification_deliveries") as table:
        table.add_column(sa.Column("provider_message_id", sa.String(255)))
    op.create_table(
        "chat_destination_states",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("url_digest", sa.String(64), nullable=False),
        sa.Column("disabled_at", Timestamp, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chat_destination_states")
    with op.batch_alter_table("notification_deliveries") as table:
        table.drop_column("provider_message_id")
