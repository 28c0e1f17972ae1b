"""Chat destinations found gone (``chat_destination_states``): disabled until their URL
changes in the configuration or ``test-channel`` reaches them again."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .schema import chat_destination_states


def url_digest(url: str) -> str:
    """What is kept of a webhook URL (a secret): its SHA-256."""
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass(frozen=True)
class DisabledDestination:
    name: str
    url_digest: str
    disabled_at: datetime
    reason: str


def disabled_destinations(engine: Engine) -> dict[str, DisabledDestination]:
    """Every disabled destination, by name."""
    with engine.connect() as conn:
        return {row.name: DisabledDestination(row.name, row.url_digest, row.disabled_at,
                                              row.reason)
                for row in conn.execute(select(chat_destination_states))}


def disable_destination(conn: Connection, name: str, url: str, reason: str,
                        now: datetime) -> None:
    """Disable ``name`` (its webhook at ``url`` is gone), inside the caller's
    transaction; a later report of the same replaces the reason."""
    digest = url_digest(url)
    values = {"url_digest": digest, "disabled_at": now, "reason": reason}
    if conn.execute(update(chat_destination_states)
                    .where(chat_destination_states.c.name == name).values(values)).rowcount:
        return
    try:
        with conn.begin_nested():  # another worker may disable it at the same moment
            conn.execute(insert(chat_destination_states).values(name=name, **values))
    except IntegrityError:
        pass


def enable_destination(engine: Engine, name: str) -> bool:
    """Enable ``name`` again; whether it was disabled."""
    with engine.begin() as conn:
        return bool(conn.execute(delete(chat_destination_states)
                                 .where(chat_destination_states.c.name == name)).rowcount)
