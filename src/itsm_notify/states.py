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


class InboundOutcome(StrEnum):
    """What became of one inbound message (``inbound_messages.outcome``)."""

    COMMENT = "comment"
    """A reply, written as a public comment on its ticket."""
    TICKET = "ticket"
    """New mail to the help desk, opened as a ticket."""
    BOUNCE = "bounce"
    """A permanent failure report (5.x.x): the delivery failed, the address suppressed."""
    DELAY = "delay"
    """A temporary failure report (4.x.x) for one of our deliveries: noted, no action."""
    COMPLAINT = "complaint"
    """An ARF complaint about one of our deliveries: the address suppressed."""
    AUTO_REPLY = "auto_reply"
    """An out-of-office, a mailing list, a machine's message: never a comment."""
    OWN_MAIL = "own_mail"
    """Our own notification came back (a loop, a copy)."""
    IGNORED = "ignored"
    """Nothing to do: not addressed to the help desk, a reply with no new text, a report
    that is neither a failure nor readable."""
    UNMATCHED = "unmatched"
    """A reply or a report whose ticket or delivery could not be found."""
    REFUSED = "refused"
    """A sender who may not write there (unknown, not on the ticket, forged From)."""
    QUARANTINED = "quarantined"
    """Like refused, kept for an operator to look at (ITSM_INBOUND_UNKNOWN_REPLY=quarantine)."""
    REJECTED = "rejected"
    """Could not be handled (too large, or handling it failed): stored with the reason."""


ACTED_ON = frozenset({InboundOutcome.COMMENT, InboundOutcome.TICKET, InboundOutcome.BOUNCE,
                      InboundOutcome.DELAY, InboundOutcome.COMPLAINT})
"""Outcomes whose message became a comment, a ticket or a delivery report's effect: its
raw bytes are not kept, and it cannot be re-processed (that would act twice)."""
