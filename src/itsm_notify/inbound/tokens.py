"""Signed addresses: a VERP return path per delivery, and a reply address per ticket
and recipient. Pure.

    bounces+<delivery id>.<mac>@desk.example                 (make_verp_address)
    support+<ticket id>.<user id>.<mac>@desk.example          (make_reply_address)

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
_TOKEN = re.compile(r"(0|[1-9][0-9]{0,18})(?:\.(0|[1-9][0-9]{0,18}))?\.([a-z2-7]{16})")
_MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1

Secrets = str | bytes | Sequence[str | bytes]


@dataclass(frozen=True)
class ReplyTarget:
    """What a signed reply address names."""

    ticket_id: int
    user_id: int


def make_verp_address(secret: str | bytes, bounce_address: str, delivery_id: int) -> str:
    """The return path for one delivery: ``bounces+<id>.<mac>@domain``."""
    return _make(secret, "verp", bounce_address, (delivery_id,))


def read_verp_address(secrets: Secrets, bounce_address: str, address: str) -> int | None:
    """The delivery id a VERP address names, or None (not ours, forged or altered)."""
    ids = _read(secrets, "verp", bounce_address, address, count=1)
    return ids[0] if ids else None


def make_reply_address(secret: str | bytes, reply_address: str, ticket_id: int,
                       user_id: int) -> str:
    """The Reply-To for one ticket's mail to one user: ``support+<t>.<u>.<mac>@domain``."""
    return _make(secret, "reply", reply_address, (ticket_id, user_id))


def read_reply_address(secrets: Secrets, reply_address: str, address: str) -> ReplyTarget | None:
    """The ticket and user a signed reply address names, or None."""
    ids = _read(secrets, "reply", reply_address, address, count=2)
    return ReplyTarget(ids[0], ids[1]) if ids else None


# ---------------------------------------------------------------- internals


def _split(address: str) -> tuple[str, str] | None:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


def _mac(secret: bytes, purpose: str, base: str, ids: Sequence[int]) -> str:
    message = f"itsm-notify.{purpose}:{base}:{'.'.join(map(str, ids))}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _make(secret: str | bytes, purpose: str, base_address: str, ids: tuple[int, ...]) -> str:
    key = _key(secret)
    if not key:
        raise ValueError("No secret to sign the address with: set SECRET_KEY.")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 or i >= 2**63 for i in ids):
        raise ValueError(f"An address can name only ids from 0 to 2**63-1, not {ids}.")
    parts = _split(base_address)
    if parts is None:
        raise ValueError(f"{base_address!r} is not an address to add a token to.")
    local, domain = parts
    base = f"{local.lower()}@{domain}"
    token = ".".join(map(str, ids)) + "." + _mac(key, purpose, base, ids)
    if len(local) + 1 + len(token) > _MAX_LOCAL_PART:
        raise ValueError(f"{local}+{token} is longer than the 64 characters a local part may "
                         f"have: use a shorter base address.")
    return f"{local}+{token}@{domain}"


def _read(secrets: Secrets, purpose: str, base_address: str, address: str,
          count: int) -> tuple[int, ...] | None:
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
    found = _TOKEN.fullmatch(local[len(prefix):])
    if found is None or (found.group(2) is None) != (count == 1):
        return None
    ids = tuple(int(g) for g in found.groups()[:2] if g is not None)
    base = f"{base_local}@{domain}"
    for key in keys:
        if hmac.compare_digest(_mac(key, purpose, base, ids), found.group(3)):
            return ids
    return None
