"""The schema (SQLAlchemy 2 Core): the contract's application tables, the outbox, and
the tool's own tables, with the column types that behave alike on every database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from ..states import EventState

# --------------------------------------------------------------------------- types


class utc_now(FunctionElement[datetime]):
    """The database's current UTC time, as a column default the producer never sets."""

    type = DateTime()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"  # SQLite: already UTC


@compiles(utc_now, "postgresql")
def _utc_now_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "(now() AT TIME ZONE 'utc')"


@compiles(utc_now, "mysql")
@compiles(utc_now, "mariadb")
def _utc_now_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    return "(UTC_TIMESTAMP(6))"


class _SQLiteTimestamp(sqlite.DATETIME):
    """SQLite's DATETIME, written with ``isoformat``: the same text as SQLAlchemy's own
    storage format (``2026-11-30 09:15:04.000123``) at a fraction of its cost, which
    builds a dict per value; send-pending writes several timestamps per email."""

    def bind_processor(self, dialect: Any) -> Any:
        general = super().bind_processor(dialect)

        def process(value: Any) -> Any:
            if type(value) is datetime and value.tzinfo is None:
                return value.isoformat(" ", "microseconds")
            return general(value) if general else value

        return process


Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb") \
    .with_variant(_SQLiteTimestamp(), "sqlite")
Id = BigInteger().with_variant(Integer(), "sqlite")
Address = String(320)

contract_metadata = MetaData()
"""The application tables of the ``contract`` source: ``db init`` creates those that
exist neither as a table nor as a view (for demos and tests)."""
metadata = MetaData()
"""The tool's own tables: made and changed only by the migrations (storage/migrations),
which a test holds to these definitions."""

# ------------------------------------------------- tables the ITSM application owns

users = Table(
    "users", contract_metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(150), nullable=False, unique=True),
    Column("email", Address),
    Column("first_name", String(150), nullable=False, server_default=""),
    Column("last_name", String(150), nullable=False, server_default=""),
    Column("is_active", Boolean, nullable=False, server_default="1"),
    Column("is_manager", Boolean, nullable=False, server_default="0"),
    Column("locale", String(16)),
)

projects = Table(
    "projects", contract_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("notify_team", Boolean, nullable=False, server_default="0"),
)

project_members = Table(
    "project_members", contract_metadata,
    Column("project_id", ForeignKey("projects.id"), primary_key=True),
    Column("user_id", ForeignKey("users.id"), primary_key=True),
)

tickets = Table(
    "tickets", contract_metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(64), nullable=False, unique=True),
    Column("title", String(500), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("status", String(64), nullable=False, server_default="open"),
    Column("priority", String(16), nullable=False, server_default="medium"),
    Column("requester_id", ForeignKey("users.id"), nullable=False),
    Column("assignee_id", ForeignKey("users.id")),
    Column("project_id", ForeignKey("projects.id")),
    Column("due_at", Timestamp),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    # overdue-scan: tickets past due, by due date (the status is filtered in the index).
    Index("ix_tickets_due_status", "due_at", "status"),
)

# overdue-scan on PostgreSQL: most of a help desk's tickets are closed and long past due,
# so ``due_at < now`` covers nearly all of the index above and the planner reads the whole
# table instead. This partial index holds only tickets that can be overdue under the
# default ITSM_CLOSED_STATUSES (and any list that includes them): the scan reads just
# those (bench/README.md has the plans). SQLite keeps using the index above; MariaDB has
# no partial indexes.
Index("ix_tickets_open_due", tickets.c.due_at,
      postgresql_where=and_(tickets.c.due_at.is_not(None),
                            tickets.c.status.not_in(["resolved", "closed"]))
      ).ddl_if(dialect="postgresql")

comments = Table(
    "comments", contract_metadata,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", ForeignKey("tickets.id"), nullable=False, index=True),
    Column("author_id", ForeignKey("users.id")),  # none: written by email intake
    Column("body", Text, nullable=False),
    Column("is_internal", Boolean, nullable=False, server_default="0"),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
)

# ------------------------------------------------------------------------ the outbox


outbox = Table(
    "notification_outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_type", String(64), nullable=False),
    Column("ticket_id", Integer),
    Column("actor_id", Integer),
    Column("payload", Text),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("state", String(16), nullable=False, server_default=EventState.PENDING.value),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("available_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("locked_by", String(128)),
    Column("locked_until", Timestamp),
    Column("last_error", Text),
    Column("processed_at", Timestamp),
    # The claim walks pending rows in id order.
    Index("ix_outbox_state_id", "state", "id"),
)

# ---------------------------------------------------------------- tables the tool owns

app_notifications = Table(
    "app_notifications", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("ticket_id", Integer),
    Column("event_type", String(64), nullable=False),
    Column("title", String(500), nullable=False),
    Column("body", Text, nullable=False),
    Column("url", String(500), nullable=False),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("read_at", Timestamp),
    Index("ix_app_notifications_user_read", "user_id", "read_at"),
)


deliveries = Table(
    "notification_deliveries", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", Address, nullable=False),
    Column("user_id", Integer),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("message_id", String(255)),
    Column("last_code", Integer),
    Column("last_error", Text),
    Column("next_attempt_at", Timestamp),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("updated_at", Timestamp),
    Column("sent_at", Timestamp),
    UniqueConstraint("event_id", "channel", "recipient", name="uq_delivery"),
    Index("ix_deliveries_sent_at", "channel", "sent_at"),
)

suppressions = Table(
    "email_suppressions", metadata,
    Column("address", Address, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("code", Integer),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
)

preferences = Table(
    "notification_preferences", metadata,
    Column("user_id", Integer, primary_key=True),
    Column("event_type", String(64), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", Timestamp, nullable=False, server_default=utc_now()),
)

overdue_alerts = Table(
    "overdue_alerts", metadata,
    Column("ticket_id", Integer, primary_key=True),
    Column("recipient", Address, primary_key=True),
    Column("due_at", Timestamp, nullable=False),
    Column("alerted_at", Timestamp, nullable=False),
)

locks = Table(
    "itsm_notify_locks", metadata,
    Column("name", String(64), primary_key=True),
    Column("held_at", Timestamp),
)
"""One row per job that must run alone (an overdue scan): a scan holds its row locked for
the length of its planning transaction, so scans on several hosts take turns."""


MAX_HEADER_TEXT = 998
"""Longest Message-ID / Subject kept of an inbound message: RFC 5322's line limit."""

inbound_messages = Table(
    "inbound_messages", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # SHA-256 hex of what makes the message unique (inbound.handling.ReceivedMail.key):
    # the same message delivered twice is recorded, and handled, once.
    Column("message_key", String(64), nullable=False, unique=True),
    Column("message_id", String(MAX_HEADER_TEXT)),
    Column("received_at", Timestamp, nullable=False),
    Column("source", String(16), nullable=False),
    Column("from_address", Address),
    Column("subject", String(MAX_HEADER_TEXT)),
    Column("outcome", String(32), nullable=False),  # an InboundOutcome
    Column("reason", Text),
    Column("size", Integer, nullable=False),
    # the message itself, for what did not become a comment, a ticket or a report's
    # effect (bounded): to be read, listed and re-processed
    Column("raw", LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")),
    Column("ticket_id", Integer),
    Column("comment_id", Integer),
    Column("event_id", Id),  # the outbox event written for it (comment_added, ticket_created)
    Column("cut_text", Text),  # what quote stripping cut from a reply's comment
    Column("updated_at", Timestamp),  # when it was last re-processed
    # status counts by outcome; a listing by outcome, newest first
    Index("ix_inbound_outcome_received", "outcome", "received_at"),
)

# ------------------------------------------------------------- when to notify (issue 18)

due_soon_warnings = Table(
    "due_soon_warnings", metadata,
    Column("ticket_id", Integer, primary_key=True),
    Column("threshold", String(64), primary_key=True),
    Column("due_at", Timestamp, primary_key=True),
    Column("warned_at", Timestamp, nullable=False),
)
"""Each due-soon warning sent: at most one per (ticket, threshold, due date). A warning
for a new due date replaces the ticket's rows of that threshold for other dates, so a
due date moved back to one warned about before is warned about again."""

schedules = Table(
    "notification_schedules", metadata,
    Column("user_id", Integer, primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("frequency", String(16), nullable=False),
    Column("daily_hour", Integer, nullable=False, server_default="8"),
    Column("time_zone", String(64)),
    Column("updated_at", Timestamp, nullable=False, server_default=utc_now()),
    CheckConstraint("frequency IN ('immediate', 'hourly', 'daily')",
                    name="ck_schedule_frequency"),
    CheckConstraint("daily_hour >= 0 AND daily_hour <= 23", name="ck_schedule_daily_hour"),
)
"""A user's delivery frequency per channel, beside ``notification_preferences``: absent
means immediate. ``time_zone`` null: the user's own, else ``ITSM_TIME_ZONE``, else UTC.
The web application may write these rows directly."""

summary_items = Table(
    "notification_summary_items", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("event_id", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    Column("ticket_id", Integer),
    Column("event_type", String(64), nullable=False),
    Column("title", String(500), nullable=False),
    Column("body", Text, nullable=False),
    Column("event_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("summary_id", BigInteger().with_variant(Integer(), "sqlite")),
    UniqueConstraint("user_id", "channel", "event_id", name="uq_summary_item"),
    # send-summaries: the open items (summary_id null) of each user, by collection time.
    Index("ix_summary_items_open", "summary_id", "user_id", "channel", "created_at"),
)
"""An event held for a user's summary (its delivery row is ``held``), written in the
same transaction as that row; ``summary_id`` is set when a summary claims it."""

summaries = Table(
    "notification_summaries", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("window_key", String(64), nullable=False),
    Column("item_count", Integer, nullable=False, server_default="0"),
    Column("event_id", BigInteger().with_variant(Integer(), "sqlite")),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    UniqueConstraint("user_id", "channel", "window_key", name="uq_summary_window"),
)
"""One row per summary made: the UNIQUE (user, channel, window) lets exactly one of
several racing schedulers and cron runs make it. ``event_id`` is its ``summary`` outbox
event (null when other runs had claimed every item already)."""
