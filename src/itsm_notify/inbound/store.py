"""The record of every inbound message: one row per message, keyed so that a message
delivered twice is handled once.

``inbound_messages.message_key`` is UNIQUE, and a handler inserts the row *in the same
transaction* as whatever it does with the message (a comment, a suppression, a
ticket). So when an IMAP re-fetch after a crash, a second ``fetch-mail`` process or an
MTA's retry hands the same message in again, the database itself decides: the second
insert meets the first one's key (waiting for it to commit, if it has not yet) and
reports "already seen", and the second transaction's work is rolled back with it.

The table is one of the tool's own (storage/schema.py, migration 0003). The key is a
SHA-256 hex digest (see ``ReceivedMail.key``): fixed length, ASCII, so it
indexes the same way on every database and a case-insensitive MariaDB collation cannot
make two different Message-IDs collide.

Raw bytes are kept (bounded) for every message that did not become a comment, a ticket
or a delivery report's effect (``states.ACTED_ON``): rejected, refused, unmatched,
ignored, auto-replies. So an operator can list, read and re-process them; nothing
inbound is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..states import InboundOutcome
from ..storage.database import utcnow
from ..storage.schema import MAX_HEADER_TEXT, inbound_messages

STDIN, IMAP, MAILDIR = "stdin", "imap", "maildir"
SOURCES = (STDIN, IMAP, MAILDIR)

#: The outcome a handler records for a message it could not handle; its raw bytes are kept.
REJECTED = InboundOutcome.REJECTED

#: The most of a message's raw bytes kept. MariaDB's default max_allowed_packet (and
#: PyMySQL's) is 16 MiB: a bigger value cannot be sent in one INSERT; the same bound on
#: every database keeps what an operator can re-process alike. The size column keeps the
#: real size (a message cut here is re-processed as far as it was kept), and a mailbox's
#: failed folder keeps the whole message.
MAX_STORED_RAW = 15 * 1024 * 1024
#: What quote stripping cut, kept with the record, at most.
MAX_CUT_TEXT = 200_000


@dataclass(frozen=True)
class Recorded:
    """What ``record_message`` did: ``new`` is False when the key was already recorded,
    and then ``previous_outcome`` and ``previous_received_at`` are the first record's."""

    new: bool
    id: int | None
    previous_outcome: str | None = None
    previous_received_at: datetime | None = None


def record_message(
    conn: Connection,
    *,
    message_key: str,
    source: str,
    size: int,
    outcome: str,
    reason: str | None = None,
    message_id: str | None = None,
    from_address: str | None = None,
    subject: str | None = None,
    raw: bytes | None = None,
    ticket_id: int | None = None,
    comment_id: int | None = None,
    event_id: int | None = None,
    cut_text: str | None = None,
    received_at: datetime | None = None,
) -> Recorded:
    """Insert one message's row inside the caller's transaction, or report that its key
    is already there.

    Call it in the same transaction as the message's effects and, when it returns
    ``new=False``, roll that transaction back: the message was handled before (by an
    earlier fetch, another process or an earlier MTA delivery). The insert runs in a
    SAVEPOINT so the caller's transaction stays usable either way. While another
    transaction holds the same key uncommitted, the insert waits for it (every
    supported database does), so two processes can never both get ``new=True``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    values: dict[str, Any] = {
        "message_key": message_key,
        "message_id": _clean(message_id),
        "received_at": received_at or utcnow(),
        "source": source,
        "from_address": _clean(from_address, 320),
        "subject": _clean(subject),
        "outcome": outcome,
        "reason": _clean(reason, None),
        "size": size,
        "raw": storable_raw(raw),
        "ticket_id": ticket_id,
        "comment_id": comment_id,
        "event_id": event_id,
        "cut_text": _clean(cut_text, MAX_CUT_TEXT),
    }
    try:
        with conn.begin_nested():
            result = conn.execute(insert(inbound_messages).values(values))
    except IntegrityError:
        # A locking read sees the latest committed row whatever the isolation level.
        previous = conn.execute(
            select(inbound_messages.c.outcome, inbound_messages.c.received_at)
            .where(inbound_messages.c.message_key == message_key)
            .with_for_update(read=True)).one_or_none()
        if previous is None:  # some other constraint failed: not a duplicate
            raise
        return Recorded(new=False, id=None, previous_outcome=previous.outcome,
                        previous_received_at=previous.received_at)
    key = result.inserted_primary_key
    return Recorded(new=True, id=key[0] if key else None)


def update_record(conn: Connection, record_id: int, *, outcome: str, reason: str | None,
                  raw: bytes | None, ticket_id: int | None = None,
                  comment_id: int | None = None, event_id: int | None = None,
                  cut_text: str | None = None, updated_at: datetime | None = None) -> None:
    """Set what became of a recorded message (its final outcome, or a re-processing's),
    inside the caller's transaction."""
    conn.execute(update(inbound_messages).where(inbound_messages.c.id == record_id).values(
        outcome=outcome, reason=_clean(reason, None), raw=storable_raw(raw),
        ticket_id=ticket_id, comment_id=comment_id, event_id=event_id,
        cut_text=_clean(cut_text, MAX_CUT_TEXT), updated_at=updated_at))


def _clean(text: str | None, limit: int | None = MAX_HEADER_TEXT) -> str | None:
    """Text every database accepts: header bytes that were not UTF-8 (kept by the email
    package as surrogate escapes) become U+FFFD, NULs (which PostgreSQL refuses) go,
    and it is cut to the column's length."""
    if text is None:
        return None
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text.replace("\0", "")[:limit]


def storable_raw(raw: bytes | None) -> bytes | None:
    """The raw bytes as kept: at most MAX_STORED_RAW."""
    return None if raw is None else raw[:MAX_STORED_RAW]


@dataclass(frozen=True)
class StoredMessage:
    """One row of ``inbound list``."""

    id: int
    received_at: datetime
    source: str
    outcome: str
    from_address: str | None
    subject: str | None
    reason: str | None
    ticket_id: int | None
    comment_id: int | None
    size: int
    raw_kept: bool
    updated_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for name in ("received_at", "updated_at"):
            data[name] = data[name].isoformat() if data[name] is not None else None
        return data


def list_messages(engine: Engine, *, outcome: str | None = None,
                  limit: int = 50) -> list[StoredMessage]:
    """The latest inbound messages, newest first; only those of ``outcome`` if given."""
    table = inbound_messages
    query = select(table.c.id, table.c.received_at, table.c.source, table.c.outcome,
                   table.c.from_address, table.c.subject, table.c.reason, table.c.ticket_id,
                   table.c.comment_id, table.c.size, table.c.raw.is_not(None).label("raw_kept"),
                   table.c.updated_at)
    if outcome is not None:
        query = query.where(table.c.outcome == outcome)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(table.c.received_at.desc(), table.c.id.desc())
                            .limit(limit))
        return [StoredMessage(**{**row._mapping, "raw_kept": bool(row.raw_kept)})
                for row in rows]


def count_by_outcome(engine: Engine) -> dict[str, int]:
    """Inbound messages by outcome, every known outcome present (0 when none)."""
    counts = dict.fromkeys(InboundOutcome, 0)
    with engine.connect() as conn:
        for outcome, count in conn.execute(select(inbound_messages.c.outcome, func.count())
                                           .group_by(inbound_messages.c.outcome)):
            counts[outcome] = count
    return {str(outcome): count for outcome, count in counts.items()}
