"""What inbound mail writes into django-spire 1.3's help desk (docs/sources/django-spire.md).

* spire's tickets have **no comments**: a reply is never written; the handler records it
  (``unmatched``, raw bytes kept) with that reason.
* New mail is a ``django_spire_help_desk_ticket`` with every NOT NULL column given
  (spire's defaults are Python-side): active, not deleted, created now (aware UTC on
  PostgreSQL, naive UTC elsewhere, as Django stores it), purpose ``app``, priority
  ``low``, status ``read``, the description the subject and the body (spire has no
  title: it shows the description's first line). ``created_by`` must be an account:
  a stranger's mail is refused unless ITSM_INBOUND_UNKNOWN_SENDER names a fallback
  user (the tool makes no accounts in spire).
* The event is what itsm-notify's receiver (itsm_notify/django/spire.py) writes for a
  ticket made through spire's service: ``ticket_created`` with the status and priority,
  its actor ``created_by``.

Our emails about a spire ticket end their subject with ``(#<id>)``: that is its tag.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
    insert,
    select,
    true,
)

from ..writes import NewEvent, Opening, Person, Refused, Written

if TYPE_CHECKING:
    from ...inbound.classify import TicketKey

SPIRE_TAG = re.compile(r"\(#(?P<id>[0-9]{1,12})\)")
"""``(#42)``: how our subjects about a spire ticket end (its number is ``#<id>``)."""
NO_COMMENTS = Refused("django-spire tickets have no comments, so a reply cannot be "
                      "written there: it is kept here to be read.")
PURPOSE, PRIORITY, STATUS = "app", "low", "read"

_meta = MetaData()
_users = Table("auth_user", _meta, Column("id", Integer, primary_key=True),
               Column("username", String(150)), Column("email", String(254)),
               Column("is_active", Boolean))
_tickets = Table(
    "django_spire_help_desk_ticket", _meta, Column("id", Integer, primary_key=True),
    Column("is_active", Boolean), Column("is_deleted", Boolean),
    Column("created_datetime", DateTime(timezone=True)), Column("created_by_id", Integer),
    Column("purpose", String(4)), Column("priority", String(4)), Column("status", String(4)),
    Column("description", Text))


class DjangoSpireWriter:
    """django-spire's writes (module docstring)."""

    name = "django-spire"
    subject_patterns: tuple[re.Pattern[str], ...] = (SPIRE_TAG,)
    comments = NO_COMMENTS

    def account(self, conn: Connection, address: str) -> Person | None:
        row = conn.execute(select(_users.c.id, _users.c.username).where(
            func.lower(_users.c.email) == address.strip().lower(), _users.c.is_active == true())
            .order_by(_users.c.id).limit(1)).first()
        return Person(address.strip(), int(row.id), row.username or "") if row else None

    def account_named(self, conn: Connection, username: str) -> Person | None:
        row = conn.execute(select(_users.c.id, _users.c.username, _users.c.email).where(
            _users.c.username == username, _users.c.is_active == true())).first()
        return Person((row.email or "").strip(), int(row.id), row.username) if row else None

    def stranger(self, conn: Connection, address: str, name: str) -> Refused:
        return Refused(f"{address} has no account, and django-spire files a ticket under an "
                       f"account (created_by): add one, or set "
                       f"ITSM_INBOUND_UNKNOWN_SENDER=fallback:<username>.")

    def ticket_exists(self, conn: Connection, ticket_id: int) -> bool:
        return conn.execute(select(_tickets.c.id).where(
            _tickets.c.id == ticket_id, _tickets.c.is_deleted == false())).first() is not None

    def find_tagged_ticket(self, conn: Connection, key: TicketKey) -> int | None:
        ticket_id = dict(key.parts).get("id", "")
        if not ticket_id.isdigit() or int(ticket_id) >= 2**63:
            return None
        return int(ticket_id) if self.ticket_exists(conn, int(ticket_id)) else None

    def open_ticket(self, conn: Connection, opening: Opening) -> Written:
        requester_id = opening.requester.user_id
        assert requester_id is not None  # stranger() refuses: every requester is an account
        now = datetime.now(UTC)
        result = conn.execute(insert(_tickets).values(
            is_active=True, is_deleted=False, created_by_id=requester_id,
            created_datetime=now if conn.dialect.name == "postgresql"
            else now.replace(tzinfo=None),
            purpose=PURPOSE, priority=PRIORITY, status=STATUS,
            description=f"{opening.title}\n\n{opening.body}".strip()))
        ticket_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return Written(ticket_id, ticket_id, (NewEvent(
            "ticket_created", {"status": STATUS, "priority": PRIORITY}, requester_id),),
            number=f"#{ticket_id}")
