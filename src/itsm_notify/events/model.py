"""The event model: plain data passed between the stages (no database, no sockets)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Every text field of the app's data is bounded when it is loaded, so that one row
# holding megabytes (a 20 MB title) cannot make megabyte emails or a gigabyte process.
MAX_NAME = 150
MAX_LABEL = 64
"""Ticket numbers, statuses, priorities, locales."""
MAX_TITLE = 500
MAX_BODY = 100_000
"""Descriptions and comments (cut again, to ITSM_MAX_TEXT_LENGTH, when rendered)."""
MAX_ADDRESS = 320
MAX_ID = 2**63 - 1


def bounded_text(value: object, limit: int) -> str:
    """An app's value as text of at most ``limit`` characters: None is empty, bytes are
    decoded (invalid UTF-8 replaced), anything else (a number where text was expected)
    is shown as its text."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit]


def optional_id(value: object) -> int | None:
    """An app's id column as an int, or None when it holds none (or nothing like one)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 < number <= MAX_ID else None


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    email: str | None
    first_name: str = ""
    last_name: str = ""
    is_active: bool = True
    is_manager: bool = False
    locale: str | None = None
    """A language code (``pt-BR``), as the source read it; None when it holds none."""
    time_zone: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Fields the source maps beyond these (django-helpdesk's email switches)."""

    @property
    def display_name(self) -> str:
        full = f"{self.first_name} {self.last_name}".strip()
        return full or self.username or (self.email or "")


@dataclass(frozen=True, slots=True)
class Project:
    """A team: the contract's project, django-helpdesk's queue."""

    id: int
    name: str
    notify_team: bool = False
    cc_on_create: tuple[str, ...] = ()
    """Addresses told of every new ticket (django-helpdesk's ``new_ticket_cc``)."""
    cc_on_update: tuple[str, ...] = ()
    """Addresses told of every change (``updated_ticket_cc``)."""
    notify_ticket_ccs: bool = False
    """Whether a ticket's own CCs are told (django-helpdesk's queue switch)."""
    reply_to: str | None = None
    """The team's own address, where replies go (a django-helpdesk queue's mailbox)."""
    locale: str | None = None
    """The team's language, for its people who have none of their own and for the
    addresses it writes to (a django-helpdesk queue's locale)."""


@dataclass(frozen=True, slots=True)
class Ticket:
    id: int
    number: str
    title: str
    description: str
    status: str
    priority: str
    requester_id: int | None
    assignee_id: int | None
    project_id: int | None
    due_at: datetime | None
    created_at: datetime | None
    requester_email: str | None = None
    """The requester's address when they have no account (django-helpdesk's submitter)."""
    status_label: str = ""
    """The status as the app shows it (its label for the stored value); "" when the
    source has no label for it (then the stored value is shown)."""
    priority_label: str = ""
    tag: str = ""
    """The tracking tag a subject starts with, so the app files a reply on this ticket
    (django-helpdesk: ``[it-7] ``)."""
    links: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    """``staff``, ``requester`` and ``in_app`` links, as the source makes them."""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class TicketCC:
    """Someone a ticket copies: a user, or an address with no account."""

    ticket_id: int
    user_id: int | None
    email: str | None


@dataclass(frozen=True, slots=True)
class Comment:
    id: int
    ticket_id: int
    author_id: int | None
    body: str
    is_internal: bool
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One claimed row of ``notification_outbox``."""

    id: int
    event_type: str
    ticket_id: int | None
    actor_id: int | None
    payload: str | None
    attempts: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True)
class EventContext:
    """Everything the recipient rules and the templates need to know about one event,
    loaded for a whole batch at once (a fixed number of queries), as it was when the
    event happened: facts the payload carries (the assignee or status at that moment)
    are applied to ``ticket``."""

    event: OutboxEvent
    payload: dict[str, Any]
    ticket: Ticket
    """The ticket the event is about (for a digest, the first one it lists)."""
    users: Mapping[int, User]
    """The batch's users by id, shared by its events."""
    tickets: tuple[Ticket, ...] = ()
    """Every ticket the event is about, in order (a digest lists several); ``(ticket,)``
    when left empty."""
    project: Project | None = None
    team_ids: tuple[int, ...] = ()
    manager_ids: tuple[int, ...] | None = None
    """Users who hold the manager permission; None when the event type did not ask for
    them (``Need.MANAGERS``)."""
    comment: Comment | None = None
    public_commenter_ids: tuple[int, ...] = ()
    ccs: tuple[TicketCC, ...] = ()
    accounts: Mapping[str, User] = field(default_factory=dict)
    """Active users by lower-case address, for the addresses the event names without an
    account id (a submitter, a CC): such an address is that user."""
    admin_accounts: Mapping[str, User] = field(default_factory=dict)
    """``ADMINS`` addresses (lower case) that belong to an active user account: loaded
    for every batch, so an event's recipients never depend on what else is in it."""
    opted_out: frozenset[tuple[int, str]] = field(default_factory=frozenset)
    """(user id, channel) pairs whose owner turned this event type off."""
    status_labels: Mapping[str, str] = field(default_factory=dict)
    """The source's labels of stored statuses (django-helpdesk's 3 is "Resolved")."""

    def status_label(self, status: str | None) -> str | None:
        """A stored status as the app shows it."""
        return self.status_labels.get(status, status) if status is not None else None

    def __post_init__(self) -> None:
        if not self.tickets:
            object.__setattr__(self, "tickets", (self.ticket,))

    @property
    def actor(self) -> User | None:
        return self.users.get(self.event.actor_id) if self.event.actor_id is not None else None

    @property
    def managers(self) -> tuple[int, ...]:
        if self.manager_ids is None:
            raise RuntimeError(f"event type {self.event.event_type!r} uses managers but does "
                               "not declare Need.MANAGERS")
        return self.manager_ids
