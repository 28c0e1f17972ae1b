"""The states of events and deliveries, and the channels, defined once.

They are ``StrEnum``s: each member is its stored text (``EventState.DONE == "done"``),
so rows, JSON and log lines carry the same words the contract gives.
"""

from __future__ import annotations

from enum import StrEnum


class EventState(StrEnum):
    """An outbox event: ``pending`` → ``processing`` → ``done`` or ``failed``; a retry
    goes back to ``pending`` with a later ``available_at``."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """One delivery (event, channel, recipient)."""

    PENDING = "pending"
    """Planned, not answered yet."""
    DEFERRED = "deferred"
    """A temporary refusal or a lost connection: retried with the event."""
    SENT = "sent"
    """Accepted by the server or the API (or written, for in-app)."""
    FAILED = "failed"
    """Refused for good, or retries used up."""
    SUPPRESSED = "suppressed"
    """The address is on the suppression list."""
    SKIPPED = "skipped"
    """No address at all, or not an address."""
    HELD = "held"
    """Not sent on its own: the user asked for hourly or daily summaries, and the event
    waits for the next one as an item (``notification_summary_items``)."""


FINAL_DELIVERY_STATES = frozenset({DeliveryState.SENT, DeliveryState.FAILED,
                                   DeliveryState.SUPPRESSED, DeliveryState.SKIPPED,
                                   DeliveryState.HELD})
"""States a delivery never leaves (a retry of its event skips it)."""


class Channel(StrEnum):
    """Where a delivery goes."""

    EMAIL = "email"
    IN_APP = "in_app"
    CHAT = "chat"
