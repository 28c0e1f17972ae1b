"""What every channel shares: the message on its way out, its outcome, the transport
interface, and the rate ceiling."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Protocol, cast

from ..compose.headers import needs_smtputf8
from ..states import DeliveryState


@dataclass(frozen=True)
class Outgoing:
    """One message for one envelope recipient, as it goes on the wire."""

    key: Hashable
    sender: str
    rcpt: str
    data: bytes
    """The message's bytes (CRLF line ends): ``Renderer.compose``'s, with 8-bit headers
    only when the envelope needs SMTPUTF8."""

    @property
    def needs_smtputf8(self) -> bool:
        return needs_smtputf8(self.sender, self.rcpt)

    def parsed(self) -> EmailMessage:
        """The message read back, for the console and file backends."""
        return cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(self.data))


@dataclass(frozen=True)
class Outcome:
    key: Hashable
    status: DeliveryState  # sent, deferred or failed
    code: int | None = None
    detail: str = ""
    refused_recipient: bool = False
    """True when the server refused the recipient address itself (5xx at RCPT): the
    address goes on the suppression list."""
    counts_as_attempt: bool = True
    """False when the message never reached the server through no fault of its own
    (the rate ceiling): such a deferral does not use up a retry."""
    retry_after: float | None = None
    """Seconds the server asked to wait before the next attempt (an HTTP Retry-After),
    when it said: a deferral's next attempt should come no sooner."""
    provider_id: str | None = None
    """The id an HTTP provider gave the accepted message (SendGrid's X-Message-Id,
    Amazon SES's MessageId, ...), to match its later events."""
    destination_gone: bool = False
    """The destination says it no longer exists (a chat webhook deleted: 404 or 410):
    stop sending to it."""


Answered = Callable[[Outcome], None]
"""Takes each outcome as soon as it is known, possibly from several threads at once. If
it raises, the transport stops taking messages and ``deliver`` raises that error."""




class Transport(Protocol):
    name: str

    @property
    def gave_up(self) -> str | None:
        """Why delivery was abandoned (server unreachable, login refused), or None. Set
        as soon as it happens, so the sender stops claiming events."""
        ...

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Answered) -> None:
        """Send each message as ``messages`` yields it and report its outcome to
        ``answered``; return once ``messages`` is exhausted and every outcome reported."""
        ...

    def close(self) -> None:
        ...


def deliver_all(transport: Transport, messages: Iterable[Outgoing],
                limiter: RateLimiter | None = None) -> list[Outcome]:
    """Every message's outcome, in the order they came (for a handful of messages)."""
    outcomes: list[Outcome] = []
    transport.deliver(messages, limiter or RateLimiter(), outcomes.append)
    return outcomes


# --------------------------------------------------------------------- rate ceiling


@dataclass
class RateLimiter:
    """A ceiling on messages per second (spaced evenly) and per hour (a sliding window,
    seeded with what earlier runs sent in the last hour). Thread-safe."""

    per_second: float = 0.0
    per_hour: int = 0
    sent_last_hour: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next_slot: float = 0.0
    _hour_window: deque[float] = field(default_factory=deque, repr=False)

    def acquire(self) -> bool:
        """Wait for the next slot; False when this hour's budget is spent."""
        with self._lock:
            now = time.monotonic()
            if self.per_hour:
                while self._hour_window and self._hour_window[0] <= now - 3600:
                    self._hour_window.popleft()
                if self.sent_last_hour + len(self._hour_window) >= self.per_hour:
                    return False
                self._hour_window.append(now)
            if not self.per_second:
                return True
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.per_second
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return True

    @property
    def exhausted(self) -> bool:
        """True when this hour's budget is spent: a run stops claiming more events."""
        with self._lock:
            if not self.per_hour:
                return False
            while self._hour_window and self._hour_window[0] <= time.monotonic() - 3600:
                self._hour_window.popleft()
            return self.sent_last_hour + len(self._hour_window) >= self.per_hour


RATE_LIMITED = "hourly rate ceiling reached (ITSM_RATE_PER_HOUR); retried later"


def rate_limited(out: Outgoing) -> Outcome:
    """The deferral of a message the hourly ceiling held back: it uses up no retry."""
    return Outcome(out.key, DeliveryState.DEFERRED, detail=RATE_LIMITED, counts_as_attempt=False)
