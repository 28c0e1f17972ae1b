"""The schema of release 0.1 (commit a067c47), frozen: the database that migrations must
adopt and upgrade in place without losing a row. Copied from that release's db.py; the
column types are the schema's portable helpers, as they were then."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
)

from itsm_notify.storage.schema import Address, Id, Timestamp, utc_now

metadata = MetaData()

# ------------------------------------------------- tables the ITSM application owns

users = Table(
    "users", metadata,
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
    "projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("notify_team", Boolean, nullable=False, server_default="0"),
)

project_members = Table(
    "project_members", metadata,
    Column("project_id", ForeignKey("projects.id"), primary_key=True),
    Column("user_id", ForeignKey("users.id"), primary_key=True),
)

tickets = Table(
    "tickets", metadata,
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
    "comments", metadata,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", ForeignKey("tickets.id"), nullable=False, index=True),
    Column("author_id", ForeignKey("users.id"), nullable=False),
    Column("body", Text, nullable=False),
    Column("is_internal", Boolean, nullable=False, server_default="0"),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
)

# ------------------------------------------------------------------------ the outbox

PENDING = "pending"

outbox = Table(
    "notification_outbox", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_type", String(64), nullable=False),
    Column("ticket_id", Integer),
    Column("actor_id", Integer),
    Column("payload", Text),
    Column("created_at", Timestamp, nullable=False, server_default=utc_now()),
    Column("state", String(16), nullable=False, server_default=PENDING),
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

