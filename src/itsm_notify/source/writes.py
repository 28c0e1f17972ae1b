"""What inbound mail writes into a help desk, per source: the operations the inbound
handler needs (inbound/handle.py), each run inside the handler's transaction (the
``Connection`` given), so that the message's record, the comment or ticket and its
outbox events commit together or not at all.

A source's writer knows the app's own rules: who may write on a ticket, what a reply
becomes (the contract's comment, django-helpdesk's follow-up; django-spire has no
comments), how a ticket is opened and numbered, the tag its subjects carry, and which
outbox events the change calls for (as the app's own receivers would write them).
Reading for the notifications goes through the generic source (source/base.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection

if TYPE_CHECKING:  # the writers are loaded only where mail comes in (source/__init__.py)
    from ..inbound.classify import TicketKey


@dataclass(frozen=True)
class Person:
    """Who wrote a message, as the help desk knows them: an account (``user_id``), or,
    where the app needs none (a django-helpdesk submitter), the address alone."""

    address: str
    user_id: int | None = None
    username: str = ""

    @property
    def name(self) -> str:
        """How the log names them: the username, else the address."""
        return self.username or self.address

    @property
    def label(self) -> str:
        """``alice (alice@example.com)``, or the address alone."""
        return f"{self.username} ({self.address})" if self.username else self.address


@dataclass(frozen=True)
class NewEvent:
    """An outbox event a write calls for; the handler writes it in the same transaction."""

    event_type: str
    payload: dict[str, Any]
    actor_id: int | None


@dataclass(frozen=True)
class Written:
    """What one write made: the ticket it is on, the new row's id (a comment, a
    follow-up, a ticket), the events to write, the number of a new ticket, and a note
    for the record's reason (``reopened``)."""

    ticket_id: int
    row_id: int
    events: tuple[NewEvent, ...] = ()
    number: str = ""
    note: str = ""


@dataclass(frozen=True)
class Refused:
    """A write the source cannot make; ``reason`` is one sentence for the record."""

    reason: str


@dataclass(frozen=True)
class Opening:
    """A new ticket from new mail, as the handler read it."""

    title: str
    """One line, bounded."""
    body: str
    """The message's text."""
    requester: Person
    message_id: str | None
    """The message's Message-ID without angle brackets."""


@dataclass(frozen=True)
class Reply:
    """A reply to write on a ticket: its new text (quotes and signature cut)."""

    ticket_id: int
    author: Person
    body: str
    message_id: str | None


class CommentWriter(Protocol):
    """How replies become comments in a source that has comments."""

    def reply_author(self, conn: Connection, address: str) -> Person | None:
        """Who a reply from ``address`` is by: an account, or the address alone where the
        app lets people without one write (None: nobody who may write at all)."""

    def may_write(self, conn: Connection, ticket_id: int, author: Person) -> bool:
        """Whether ``author`` may write on the ticket by email (the app's people on it)."""

    def add_reply(self, conn: Connection, reply: Reply) -> Written:
        """The reply as a public comment (or what the app calls one), and its events."""


class SourceWriter(Protocol):
    """The writes inbound mail makes in one help desk (see the module docstring)."""

    name: str
    subject_patterns: tuple[re.Pattern[str], ...]
    """The tracking tags of the source's subjects (``(TKT-007)``, ``[it-7]``), each a
    pattern whose match is resolved by ``find_tagged_ticket``."""

    @property
    def comments(self) -> CommentWriter | Refused:
        """How replies become comments; Refused (why not) in a source without comments."""

    def account(self, conn: Connection, address: str) -> Person | None:
        """The active account with this address (the oldest when several have it)."""

    def account_named(self, conn: Connection, username: str) -> Person | None:
        """The active account with this username (ITSM_INBOUND_UNKNOWN_SENDER=fallback)."""

    def stranger(self, conn: Connection, address: str, name: str) -> Person | Refused:
        """The requester of new mail from an address no account has, when strangers are
        welcome (ITSM_INBOUND_UNKNOWN_SENDER=create): a new user, or the address alone
        where the app needs no account; Refused where the app needs one and the tool
        makes none."""

    def ticket_exists(self, conn: Connection, ticket_id: int) -> bool: ...

    def find_tagged_ticket(self, conn: Connection, key: TicketKey) -> int | None:
        """The ticket a subject tag (a ``number`` key of ``subject_patterns``) names."""

    def open_ticket(self, conn: Connection, opening: Opening) -> Written | Refused:
        """A new ticket for new mail, and its events; Refused when the source is not set
        up to open one (the reason says what to set)."""


@dataclass(frozen=True)
class Participants:
    """Who may write on a ticket by email: accounts by id, people by address."""

    user_ids: frozenset[int] = frozenset()
    addresses: frozenset[str] = frozenset()
    """Lower case."""
    staff_ids: frozenset[int] = field(default_factory=frozenset)
    """Accounts that may write on every ticket (django-helpdesk's staff)."""

    def allows(self, person: Person) -> bool:
        if person.user_id is not None and (person.user_id in self.user_ids
                                           or person.user_id in self.staff_ids):
            return True
        return person.address.strip().lower() in self.addresses
