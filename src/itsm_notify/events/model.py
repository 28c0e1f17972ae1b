"""The event model: plain data passed between the stages (no database, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
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

    @property
    def display_name(self) -> str:
        full = f"{self.first_name} {self.last_name}".strip()
        return full or self.username or (self.email or "")


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    notify_team: bool = False


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


@dataclass(frozen=True, slots=True)
class Comment:
    id: int
    ticket_id: int
    author_id: int | None
    body: str
    is_internal: bool
    created_at: datetime | None


class UserDirectory(dict[int, User]):
    """A batch's users by id, and by address: every event's ``ADMINS`` rule looks its
    admins up by address, and indexing the batch's users once, not per event, matters
    with hundreds of them."""

    @cached_property
    def by_address(self) -> dict[str, User]:
        """Active users by their lower-cased email address."""
        return {u.email.strip().lower(): u for u in self.values() if u.email and u.is_active}


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One claimed row of ``notification_outbox``."""

    id: int
    event_type: str
    ticket_id: int | None
    actor_id: int | None
    payload: str | None
    attempts: int = 0


@dataclass(frozen=True)
class EventContext:
    """Everything the recipient rules and the templates need to know about one event,
    loaded for a whole batch at once."""

    event: OutboxEvent
    payload: dict[str, Any]
    ticket: Ticket
    users: UserDirectory
    """The batch's users, shared by its events (a plain dict is made one)."""
    project: Project | None = None
    team_ids: tuple[int, ...] = ()
    manager_ids: tuple[int, ...] = ()
    comment: Comment | None = None
    public_commenter_ids: tuple[int, ...] = ()
    opted_out: frozenset[tuple[int, str]] = field(default_factory=frozenset)
    """(user id, channel) pairs whose owner turned this event type off."""

    def __post_init__(self) -> None:
        if not isinstance(self.users, UserDirectory):
            object.__setattr__(self, "users", UserDirectory(self.users))

    @property
    def actor(self) -> User | None:
        return self.users.get(self.event.actor_id) if self.event.actor_id is not None else None


class EventError(Exception):
    """The event can never be delivered (unknown type, malformed payload, missing
    ticket or comment). The message becomes the event's ``last_error``."""
