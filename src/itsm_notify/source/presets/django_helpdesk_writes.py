"""What inbound mail writes into django-helpdesk 2.6: the rows its own ``get_email``
writes (``helpdesk/email.py``, ``create_object_from_email_message``), so that the app
shows them as its own and its own In-Reply-To matching knows the messages.

* A reply is a public ``helpdesk_followup`` titled ``E-Mail Received from <address>``,
  its ``message_id`` the message's ``<Message-ID>``, its ``user_id`` the sender's
  account when there is one (``get_email`` never sets it; the tool does, so the app and
  the notifications name the author), and the ticket's ``modified`` touched as
  ``FollowUp.save`` does. A ticket whose status is in ``HELPDESK_EMAIL_REOPEN_STATUSES``
  (default ``(4,)``, Closed) is reopened: status 2, the follow-up's ``new_status`` 2 and
  its title ``Ticket Re-Opened by E-Mail Received from <address>`` (``get_email`` writes
  no ``helpdesk_ticketchange`` row for it). A merged ticket's reply goes to the ticket
  it was merged into, as ``get_email`` does.
* Who may write on a ticket: its submitter (by address), its owner, its CCs (a user or
  an address), and staff (``is_staff``).
* New mail is a ticket in the queue ``ITSM_INBOUND_QUEUE`` names (by slug): submitter
  the sender's address, status 1 (Open), priority 3, a new ``secret_key`` (a uuid4, as
  ``mk_secret``), and its first follow-up as ``get_email`` writes it (no author). A
  submitter needs no account, so a stranger's address is simply the submitter.
* The events are what itsm-notify's own receivers (itsm_notify/django/helpdesk.py)
  write for the same change: ``ticket_created`` with the status, priority and owner it
  was opened with, its actor the first follow-up's author (none: the submitter gets
  the acknowledgement, as django-helpdesk sends one); for a reply ``status_changed``
  when it reopened the ticket, then ``comment_added``, its actor the author (an author
  without an account is named by ``actor_email``, so that they are not told either).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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
    func,
    insert,
    select,
    true,
    update,
)

from ...errors import ConfigError
from ...inbound.classify import HELPDESK_TAG
from ..writes import NewEvent, Opening, Participants, Person, Refused, Reply, Written

if TYPE_CHECKING:
    from ...inbound.classify import TicketKey

OPEN, REOPENED = 1, 2
REOPEN_STATUSES = frozenset({4})
"""``HELPDESK_EMAIL_REOPEN_STATUSES``' default: a reply to a Closed ticket reopens it."""
NORMAL_PRIORITY = 3
"""What ``get_email`` gives mail without an urgent ``Priority``/``Importance`` header."""
MAX_TITLE = 200
MAX_MERGES = 10
"""Merged-into links followed at most (a loop in the data must not hang a message)."""

_meta = MetaData()
_users = Table("auth_user", _meta, Column("id", Integer, primary_key=True),
               Column("username", String(150)), Column("email", String(254)),
               Column("is_active", Boolean), Column("is_staff", Boolean))
_queues = Table("helpdesk_queue", _meta, Column("id", Integer, primary_key=True),
                Column("slug", String(50)))
_tickets = Table(
    "helpdesk_ticket", _meta, Column("id", Integer, primary_key=True),
    Column("title", String(200)), Column("queue_id", Integer),
    Column("created", DateTime(timezone=True)), Column("modified", DateTime(timezone=True)),
    Column("submitter_email", String(254)), Column("assigned_to_id", Integer),
    Column("status", Integer), Column("priority", Integer), Column("on_hold", Boolean),
    Column("description", Text), Column("secret_key", String(36)),
    Column("merged_to_id", Integer))
_followups = Table(
    "helpdesk_followup", _meta, Column("id", Integer, primary_key=True),
    Column("ticket_id", Integer), Column("date", DateTime(timezone=True)),
    Column("title", String(200)), Column("comment", Text), Column("public", Boolean),
    Column("user_id", Integer), Column("new_status", Integer),
    Column("message_id", String(256)))
_ccs = Table("helpdesk_ticketcc", _meta, Column("id", Integer, primary_key=True),
             Column("ticket_id", Integer), Column("user_id", Integer),
             Column("email", String(254)))


def _now(conn: Connection) -> datetime:
    """Now as Django stores it: aware UTC in PostgreSQL's timestamptz, naive UTC
    elsewhere."""
    now = datetime.now(UTC)
    return now if conn.dialect.name == "postgresql" else now.replace(tzinfo=None)


def _title(text: str) -> str:
    """A title as ``Ticket.save`` cuts one."""
    return text if len(text) <= MAX_TITLE else text[:MAX_TITLE - 3] + "..."


def _message_id(message_id: str | None) -> str | None:
    """The Message-ID as ``get_email`` stores it (with its angle brackets), or None
    when it would not fit the column."""
    if not message_id:
        return None
    stored = f"<{message_id}>"
    return stored if len(stored) <= 256 else None


def _person(row: Any, address: str) -> Person:
    return Person(address.strip(), int(row.id), row.username or "")


class DjangoHelpdeskWriter:
    """django-helpdesk's writes (module docstring); ``queue_slug``: ITSM_INBOUND_QUEUE."""

    name = "django-helpdesk"
    subject_patterns: tuple[re.Pattern[str], ...] = (HELPDESK_TAG,)

    def __init__(self, queue_slug: str | None) -> None:
        self.queue_slug = queue_slug

    @property
    def comments(self) -> DjangoHelpdeskWriter:
        return self

    # ------------------------------------------------------------------ people

    def account(self, conn: Connection, address: str) -> Person | None:
        row = conn.execute(select(_users.c.id, _users.c.username).where(
            func.lower(_users.c.email) == address.strip().lower(), _users.c.is_active == true())
            .order_by(_users.c.id).limit(1)).first()
        return _person(row, address) if row is not None else None

    def account_named(self, conn: Connection, username: str) -> Person | None:
        row = conn.execute(select(_users.c.id, _users.c.username, _users.c.email).where(
            _users.c.username == username, _users.c.is_active == true())).first()
        return _person(row, row.email or "") if row is not None else None

    def reply_author(self, conn: Connection, address: str) -> Person:
        """The account with the address, else the address alone (a submitter or an
        address CC needs no account)."""
        return self.account(conn, address) or Person(address.strip())

    def stranger(self, conn: Connection, address: str, name: str) -> Person:
        """The address is the submitter: django-helpdesk needs no account for one."""
        return Person(address.strip())

    # ------------------------------------------------------------------ tickets

    def ticket_exists(self, conn: Connection, ticket_id: int) -> bool:
        return conn.execute(select(_tickets.c.id).where(_tickets.c.id == ticket_id)).first() \
            is not None

    def find_tagged_ticket(self, conn: Connection, key: TicketKey) -> int | None:
        """``[<queue slug>-<id>]``: the ticket with that id in the queue with that slug
        (django-helpdesk itself uses the slug only to choose which queues to try)."""
        parts = dict(key.parts)
        if not parts.get("id", "").isdigit() or int(parts["id"]) >= 2**31:
            return None
        return conn.execute(select(_tickets.c.id).join(
            _queues, _queues.c.id == _tickets.c.queue_id).where(
            _tickets.c.id == int(parts["id"]), _queues.c.slug == parts.get("queue"))).scalar()

    def _target(self, conn: Connection, ticket_id: int) -> int:
        """The ticket a reply lands on: the one this ticket was merged into, if any."""
        for _ in range(MAX_MERGES):
            merged = conn.execute(select(_tickets.c.merged_to_id)
                                  .where(_tickets.c.id == ticket_id)).scalar()
            if merged is None:
                break
            ticket_id = int(merged)
        return ticket_id

    def may_write(self, conn: Connection, ticket_id: int, author: Person) -> bool:
        target = self._target(conn, ticket_id)
        ticket = conn.execute(select(_tickets.c.submitter_email, _tickets.c.assigned_to_id)
                              .where(_tickets.c.id == target)).first()
        if ticket is None:
            return False
        ccs = conn.execute(select(_ccs.c.user_id, _ccs.c.email)
                           .where(_ccs.c.ticket_id == target)).all()
        staff: frozenset[int] = frozenset()
        if author.user_id is not None and conn.execute(select(_users.c.is_staff).where(
                _users.c.id == author.user_id)).scalar():
            staff = frozenset({author.user_id})
        return Participants(
            user_ids=frozenset(int(i) for i in (ticket.assigned_to_id,
                                                *(cc.user_id for cc in ccs)) if i is not None),
            addresses=frozenset(a.strip().lower() for a in (ticket.submitter_email,
                                                            *(cc.email for cc in ccs)) if a),
            staff_ids=staff).allows(author)

    def add_reply(self, conn: Connection, reply: Reply) -> Written:
        ticket_id = self._target(conn, reply.ticket_id)
        status = conn.execute(select(_tickets.c.status)
                              .where(_tickets.c.id == ticket_id)).scalar_one()
        now = _now(conn)
        reopen = status in REOPEN_STATUSES
        conn.execute(update(_tickets).where(_tickets.c.id == ticket_id).values(
            modified=now, **({"status": REOPENED} if reopen else {})))
        sender = reply.author.address
        reopened = reopen or status == REOPENED  # get_email titles by the status after
        followup = conn.execute(insert(_followups).values(
            ticket_id=ticket_id, date=now, public=True, user_id=reply.author.user_id,
            comment=reply.body, message_id=_message_id(reply.message_id),
            new_status=REOPENED if reopened else None,
            title=_title(f"Ticket Re-Opened by E-Mail Received from {sender}" if reopened
                         else f"E-Mail Received from {sender}")))
        followup_id = int(followup.inserted_primary_key[0])  # type: ignore[index]
        actor = reply.author.user_id
        # an author without an account is named by address, so they are not told either
        by = {} if actor is not None else {"actor_email": sender}
        events = [NewEvent("status_changed", {"old_status": status, "new_status": REOPENED,
                                              **by}, actor)] if reopen else []
        events.append(NewEvent("comment_added", {"comment_id": followup_id,
                                                 "is_internal": False, **by}, actor))
        return Written(ticket_id, followup_id, tuple(events), note="reopened" if reopen else "")

    def open_ticket(self, conn: Connection, opening: Opening) -> Written | Refused:
        if self.queue_slug is None:
            return Refused("django-helpdesk files new mail in a queue and "
                           "ITSM_INBOUND_QUEUE is not set: set it to the slug of the queue "
                           "new tickets go to.")
        queue_id = conn.execute(select(_queues.c.id)
                                .where(_queues.c.slug == self.queue_slug)).scalar()
        if queue_id is None:
            raise ConfigError(f"ITSM_INBOUND_QUEUE is {self.queue_slug!r}, which is no "
                              f"django-helpdesk queue's slug: set it to an existing queue's "
                              f"slug.")
        now = _now(conn)
        submitter = opening.requester.address[:254] or None
        ticket = conn.execute(insert(_tickets).values(
            title=_title(opening.title), queue_id=queue_id, created=now, modified=now,
            submitter_email=submitter, assigned_to_id=None, status=OPEN,
            priority=NORMAL_PRIORITY, on_hold=False, description=opening.body,
            secret_key=str(uuid.uuid4()), merged_to_id=None))
        ticket_id = int(ticket.inserted_primary_key[0])  # type: ignore[index]
        conn.execute(insert(_followups).values(
            ticket_id=ticket_id, date=now, public=True, user_id=None, comment=opening.body,
            message_id=_message_id(opening.message_id),
            title=_title(f"E-Mail Received from {submitter or ''}")))
        return Written(ticket_id, ticket_id, (NewEvent(
            "ticket_created", {"status": OPEN, "priority": NORMAL_PRIORITY,
                               "assignee_id": None}, None),),
            number=f"{self.queue_slug}-{ticket_id}")
