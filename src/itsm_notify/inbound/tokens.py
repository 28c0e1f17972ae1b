"""Signed addresses: a VERP return path per delivery, and a reply address per ticket
and recipient. Pure.

    bounces+<event id>.<recipient digest>.<mac>@desk.example  (make_verp_address)
    support+<ticket id>.<user id>.<mac>@desk.example          (make_reply_address)

A VERP address names one delivery by what the sender knows before it sends: the event
and the 16-hex digest of the recipient's address that the Message-ID carries too
(``compose.render.message_id``), so it needs no database id, and the delivery row is
``(event, email, the recipient whose digest it is)``.

The MAC is HMAC-SHA256 over a purpose, the base address and the ids, cut to 80 bits
and written in lower-case base32, so a token survives MTAs that lower-case local parts
and uses only characters every MTA accepts in a local part. A token for one purpose
(or one base address) never verifies as another. ``read_*`` returns None for anything
forged, altered or malformed; several secrets may be given to read with (key rotation:
the current one first). itsdangerous, used for unsubscribe links, is not used here: its
tokens are mixed-case base64, which a lower-casing MTA breaks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

MAC_BYTES = 10
"""80 bits: forging one token takes about 2**79 guesses, each a mail sent to us."""
_ID = r"(0|[1-9][0-9]{0,18})"
_MAC = r"([a-z2-7]{16})"
_REPLY_TOKEN = re.compile(rf"{_ID}\.{_ID}\.{_MAC}")
_VERP_TOKEN = re.compile(rf"{_ID}\.([0-9a-f]{{16}})\.{_MAC}")
_MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1

Secrets = str | bytes | Sequence[str | bytes]


@dataclass(frozen=True)
class VerpTarget:
    """What a signed VERP address names: one email delivery."""

    event_id: int
    recipient_digest: str
    """``compose.render``'s 16-hex digest of the recipient's address."""


@dataclass(frozen=True)
class ReplyTarget:
    """What a signed reply address names."""

    ticket_id: int
    user_id: int


def make_verp_address(secret: str | bytes, bounce_address: str, event_id: int,
                      recipient_digest: str) -> str:
    """The return path of one delivery: ``bounces+<event>.<digest>.<mac>@domain``."""
    if not re.fullmatch(r"[0-9a-f]{16}", recipient_digest):
        raise ValueError(f"{recipient_digest!r} is not a recipient digest (16 hex digits).")
    _check_ids((event_id,))
    return _make(secret, "verp", bounce_address, f"{event_id}.{recipient_digest}")


def read_verp_address(secrets: Secrets, bounce_address: str, address: str) -> VerpTarget | None:
    """The delivery a VERP address names, or None (not ours, forged or altered)."""
    found = _read(secrets, "verp", bounce_address, address, _VERP_TOKEN)
    return VerpTarget(int(found[0]), found[1]) if found else None


def make_reply_address(secret: str | bytes, reply_address: str, ticket_id: int,
                       user_id: int) -> str:
    """The Reply-To for one ticket's mail to one user: ``support+<t>.<u>.<mac>@domain``."""
    _check_ids((ticket_id, user_id))
    return _make(secret, "reply", reply_address, f"{ticket_id}.{user_id}")


def read_reply_address(secrets: Secrets, reply_address: str, address: str) -> ReplyTarget | None:
    """The ticket and user a signed reply address names, or None."""
    found = _read(secrets, "reply", reply_address, address, _REPLY_TOKEN)
    return ReplyTarget(int(found[0]), int(found[1])) if found else None


# ---------------------------------------------------------------- internals


def _split(address: str) -> tuple[str, str] | None:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


def _mac(secret: bytes, purpose: str, base: str, payload: str) -> str:
    message = f"itsm-notify.{purpose}:{base}:{payload}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _check_ids(ids: tuple[int, ...]) -> None:
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 or i >= 2**63 for i in ids):
        raise ValueError(f"An address can name only ids from 0 to 2**63-1, not {ids}.")


def _make(secret: str | bytes, purpose: str, base_address: str, payload: str) -> str:
    key = _key(secret)
    if not key:
        raise ValueError("No secret to sign the address with: set SECRET_KEY.")
    parts = _split(base_address)
    if parts is None:
        raise ValueError(f"{base_address!r} is not an address to add a token to.")
    local, domain = parts
    base = f"{local.lower()}@{domain}"
    token = f"{payload}.{_mac(key, purpose, base, payload)}"
    if len(local) + 1 + len(token) > _MAX_LOCAL_PART:
        raise ValueError(f"{local}+{token} is longer than the 64 characters a local part may "
                         f"have: use a shorter base address.")
    return f"{local}+{token}@{domain}"


def _read(secrets: Secrets, purpose: str, base_address: str, address: str,
          token: re.Pattern[str]) -> tuple[str, str] | None:
    """The two fields of a valid token for ``purpose`` on ``base_address``, or None."""
    keys = [_key(s) for s in ([secrets] if isinstance(secrets, str | bytes) else secrets)]
    keys = [k for k in keys if k]
    parts, base_parts = _split(address), _split(base_address)
    if not keys or parts is None or base_parts is None or parts[1] != base_parts[1]:
        return None
    local, domain = parts[0].lower(), parts[1]
    base_local = base_parts[0].lower()
    prefix = base_local + "+"
    if not local.startswith(prefix):
        return None
    found = token.fullmatch(local[len(prefix):])
    if found is None:
        return None
    first, second, mac = found.groups()
    payload = f"{first}.{second}"
    base = f"{base_local}@{domain}"
    for key in keys:
        if hmac.compare_digest(_mac(key, purpose, base, payload), mac):
            return first, second
    return None
