"""What intake hands a handler, and what the handler answers.

Intake (``receive``, ``fetch-mail``) reads raw messages and calls a :class:`Handler`
once per message; it never looks inside beyond the header section needed for the
message's key. The handler classifies the message, acts on it and records it with
``store.record_message`` in one transaction, and answers with a :class:`HandleResult`:

* ``handled`` (ignored included): intake moves the message to the done folder, or the
  MTA is told 0;
* ``already_seen``: the key was recorded before (a re-fetch after a crash, another
  ``fetch-mail`` process, an MTA retry): moved like the first time, nothing else done;
* ``rejected``: could not be handled and was stored with its reason (and its raw
  bytes): moved to the failed folder, or 0 to the MTA, which must not retry it;
* ``temporary_failure``: nothing was recorded (the database is down): the message stays
  where it is for the next run, or the MTA is told 75 and retries later.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import StrEnum
from functools import cached_property
from typing import BinaryIO, Protocol

from ..errors import ConfigError

logger = logging.getLogger("itsm_notify.inbound")

#: Default ITSM_INBOUND_MAX_BYTES: above the ~35 MB that Gmail and Microsoft 365 accept,
#: so whatever they deliver is handled, while a runaway stream cannot exhaust memory.
DEFAULT_MAX_BYTES = 40 * 1024 * 1024
#: The most of a message's header section kept for a message too large to handle.
MAX_HEADER_SECTION = 256 * 1024
_READ_CHUNK = 1024 * 1024


class Outcome(StrEnum):
    HANDLED = "handled"
    ALREADY_SEEN = "already_seen"
    REJECTED = "rejected"
    TEMPORARY_FAILURE = "temporary_failure"


@dataclass(frozen=True)
class HandleResult:
    """A handler's answer for one message; build it with the class methods."""

    outcome: Outcome
    reason: str = ""
    #: the message belongs in the failed folder (rejected now, or rejected the first time)
    failed: bool = False
    #: for already_seen: when the first record was made (naive UTC), if known
    recorded_at: datetime | None = None
    #: for temporary_failure: something every message needs is down (the database), as
    #: opposed to this one message making the handler fail
    outage: bool = False

    @classmethod
    def handled(cls, reason: str = "") -> HandleResult:
        return cls(Outcome.HANDLED, reason)

    @classmethod
    def already_seen(cls, *, rejected_before: bool = False,
                     recorded_at: datetime | None = None) -> HandleResult:
        """Pass ``Recorded.previous_outcome == REJECTED`` and
        ``Recorded.previous_received_at``: they decide where (and when) it is moved."""
        return cls(Outcome.ALREADY_SEEN, "already recorded", failed=rejected_before,
                   recorded_at=recorded_at)

    @classmethod
    def rejected(cls, reason: str) -> HandleResult:
        return cls(Outcome.REJECTED, reason, failed=True)

    @classmethod
    def temporary_failure(cls, reason: str) -> HandleResult:
        """Nothing was recorded because something every message needs is unavailable
        (the database): the message stays, and a run that meets several of these in a
        row stops."""
        return cls(Outcome.TEMPORARY_FAILURE, reason, outage=True)

    @property
    def final(self) -> bool:
        """The message was dealt with for good: it may leave the inbox."""
        return self.outcome is not Outcome.TEMPORARY_FAILURE


@dataclass(frozen=True)
class ReceivedMail:
    """One message as intake received it.

    ``raw`` is the whole message, except when ``too_large``: then it is only the header
    section (at most 256 KiB) and the handler must record the message as rejected, with
    ``too_large_reason``. ``digest`` is the SHA-256 of the whole message as delivered
    (of the header section, for a too-large message fetched over IMAP, whose body is
    never downloaded).
    """

    raw: bytes
    source: str
    size: int
    digest: str
    too_large: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    #: where it came from, for log lines: "stdin", "imap://host/INBOX uid 42", a file name
    origin: str = ""

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str, origin: str = "",
                   max_bytes: int = DEFAULT_MAX_BYTES) -> ReceivedMail:
        digest = hashlib.sha256(raw).hexdigest()
        if len(raw) > max_bytes:
            return cls(header_section(raw), source, len(raw), digest, True, max_bytes, origin)
        return cls(raw, source, len(raw), digest, False, max_bytes, origin)

    @cached_property
    def message_id(self) -> str | None:
        """The Message-ID without its angle brackets, or None when it has none."""
        return message_id_of(self.raw)

    @cached_property
    def key(self) -> str:
        """The unique key the message is recorded under (64 hex digits).

        With a Message-ID: a digest of the Message-ID and of the body, line endings
        made alike. So the same message delivered again with other trace headers (an
        MTA retry, a copy through a second alias, the IMAP copy of a piped message,
        CRLF instead of LF) has one key, while a device that stamps every message with
        the same Message-ID, or a stranger who reuses a real one, cannot make a
        different message pass for one already handled. Without a Message-ID: a digest
        of the whole message, line endings made alike. A message too large to read
        whole stands for its body by its size.
        """
        if not self.message_id:
            return hashlib.sha256(b"message\0" + _lf(self.raw)).hexdigest()
        key = hashlib.sha256(b"message-id\0")
        key.update(self.message_id.encode("utf-8", "surrogateescape"))
        if self.too_large:
            key.update(f"\0size {self.size}".encode())
        else:
            key.update(b"\0body\0" + _lf(self.raw[len(header_section(self.raw)):]))
        return key.hexdigest()

    @property
    def too_large_reason(self) -> str:
        return (f"too large: {self.size} bytes, more than ITSM_INBOUND_MAX_BYTES "
                f"({self.max_bytes}); only its headers were kept")


class Handler(Protocol):
    """Called once per inbound message. It must record the message with
    ``store.record_message`` in the same transaction as its effects, answer
    ``already_seen`` when that reports the key as taken, answer ``rejected`` (and store
    the raw bytes with the reason) for a message it cannot handle, and answer
    ``temporary_failure`` (never raise) when the database cannot be used. It may raise
    ``ConfigError`` for a configuration that makes every message fail. Any other
    exception leaves that one message in place for the next run."""

    def __call__(self, message: ReceivedMail) -> HandleResult: ...


def call_handler(handle: Handler, message: ReceivedMail) -> HandleResult:
    """Run the handler; an unexpected exception counts as a temporary failure, so the
    message stays in the mailbox (or goes back to the MTA) instead of being lost."""
    try:
        result = handle(message)
    except ConfigError:
        raise
    except Exception as exc:
        # One line for the log (an MTA may quote stderr in a bounce); the traceback
        # only at debug level.
        logger.error("inbound %s: the handler failed: %r", message.origin or message.source,
                     exc)
        logger.debug("the handler's traceback", exc_info=True)
        # Not an outage: this message stays in place, and the run goes on with the
        # others, so one message that trips a bug never holds up the rest.
        result = HandleResult(Outcome.TEMPORARY_FAILURE, f"the handler failed: {exc!r}")
    logger.info("inbound %s <%s> %s%s", message.origin or message.source,
                message.message_id or f"sha256:{message.digest[:16]}", result.outcome.value,
                f": {result.reason}" if result.reason else "")
    return result


def read_message(stream: BinaryIO, *, source: str, max_bytes: int,
                 origin: str = "") -> ReceivedMail:
    """Read one message from ``stream``, keeping at most ``max_bytes`` in memory but
    hashing and counting everything, so a message too large to handle still has its
    real size and digest."""
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    while chunk := stream.read(_READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if len(kept) <= max_bytes:
            kept += chunk[:max_bytes + 1 - len(kept)]
    if size > max_bytes:
        return ReceivedMail(header_section(bytes(kept)), source, size, digest.hexdigest(),
                              True, max_bytes, origin)
    return ReceivedMail(bytes(kept), source, size, digest.hexdigest(), False, max_bytes,
                          origin)


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def header_section(raw: bytes, limit: int = MAX_HEADER_SECTION) -> bytes:
    """The header section of a message, up to and including the blank line that ends it
    (CRLF or bare LF), cut at ``limit`` bytes."""
    head = raw[:limit]
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    return head[:min(ends)] if ends else head


def message_id_of(raw: bytes) -> str | None:
    """The first Message-ID header's id, without angle brackets or folding whitespace;
    None when there is none or it is empty."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_section(raw))
    value = headers.get("Message-ID")
    if value is None:
        return None
    text = "".join(str(value).split())
    if text.startswith("<") and ">" in text:
        text = text[1:text.index(">")]
    return text or None


@dataclass
class FetchReport:
    """What one fetch-mail run did; ``exit_code`` is the CLI's (contract §5)."""

    handled: int = 0
    already_seen: int = 0
    rejected: int = 0
    #: temporary failures: left in the mailbox for the next run
    deferred: int = 0
    #: gone before this run could read or move them (another fetch-mail took them)
    gone: int = 0
    #: already seen and recorded moments ago: left for the run that recorded them to move
    busy_elsewhere: int = 0
    #: why the run stopped early (connection lost, the database down), or None
    interrupted: str | None = None
    #: the run ended early because should_stop() said so (not a problem)
    stopped: bool = False
    problems: list[str] = field(default_factory=list)

    def count(self, result: HandleResult) -> None:
        match result.outcome:
            case Outcome.HANDLED:
                self.handled += 1
            case Outcome.ALREADY_SEEN:
                self.already_seen += 1
            case Outcome.REJECTED:
                self.rejected += 1
            case Outcome.TEMPORARY_FAILURE:
                self.deferred += 1
                self.problems.append(result.reason)

    @property
    def exit_code(self) -> int:
        """0 when every message was dealt with; 1 when some wait for the next run."""
        return 1 if self.deferred or self.interrupted else 0

    def summary(self) -> str:
        parts = [f"{self.handled} handled", f"{self.rejected} rejected",
                 f"{self.already_seen} already seen"]
        if self.deferred:
            parts.append(f"{self.deferred} left for the next run")
        text = ", ".join(parts)
        if self.interrupted:
            return f"{text}; stopped early: {self.interrupted}"
        return f"{text}; stopped on request" if self.stopped else text


#: After this many temporary failures in a row the run stops: the database is down, and
#: the rest of the mailbox waits for the next run instead of failing one by one.
MAX_FAILURES_IN_A_ROW = 3


class FailureStreak:
    """Counts consecutive outages (not a handler's exception on one message, which
    must not hold up the messages after it); says when to stop a run."""

    def __init__(self) -> None:
        self._in_a_row = 0

    def stop_after(self, result: HandleResult) -> str | None:
        if not result.outage:
            self._in_a_row = 0
            return None
        self._in_a_row += 1
        if self._in_a_row < MAX_FAILURES_IN_A_ROW:
            return None
        return (f"{self._in_a_row} messages in a row could not be recorded (last: "
                f"{result.reason}); the rest wait for the next run")


def chunked(items: Iterable[int], size: int) -> Iterable[list[int]]:
    batch: list[int] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
