"""The lock rows of jobs that must run alone (an overdue scan on several hosts).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from itsm_notify.storage.schema import Timestamp

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "itsm_notify_locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("held_at", Timestamp),
    )
