"""The signature of the generic JSON webhook, and how a receiver checks it.

Modelled on Stripe's and Standard Webhooks' schemes. Every request carries:

* ``X-ITSM-Webhook-Id``: the delivery's id, the same on every retry of that delivery
  (and the payload's ``id``): a receiver that has seen it already can answer 2xx and
  do nothing (idempotency);
* ``X-ITSM-Webhook-Timestamp``: when the request was signed, in Unix seconds;
* ``X-ITSM-Webhook-Signature``: ``v1=`` and the hex HMAC-SHA256, keyed with the
  destination's secret, of ``<timestamp>.<the raw request body>``.

A receiver recomputes the HMAC over the raw body (before parsing the JSON), compares it
in constant time, and refuses a timestamp more than five minutes from its own clock: a
captured request cannot be replayed later, nor its body altered. ``verify`` does that:

    from itsm_notify.channels.signing import InvalidSignature, verify

    try:
        verify(SECRET, request.headers, request.body)     # raw bytes
    except InvalidSignature:
        return 400

Several ``v1=`` values, comma-separated, may stand in the header (rotating a secret:
each one is tried).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "X-ITSM-Webhook-Id"
TIMESTAMP_HEADER = "X-ITSM-Webhook-Timestamp"
SIGNATURE_HEADER = "X-ITSM-Webhook-Signature"
TOLERANCE_SECONDS = 300
SCHEME = "v1"


class InvalidSignature(Exception):
    """The request is not signed with the secret, was altered, or is too old."""


def _mac(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body,
                    hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, delivery_id: str, now: float | None = None
         ) -> dict[str, str]:
    """The headers that sign ``body`` now (or at ``now``)."""
    timestamp = str(int(time.time() if now is None else now))
    return {ID_HEADER: delivery_id, TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: f"{SCHEME}={_mac(secret, timestamp, body)}"}


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    raise InvalidSignature(f"the {name} header is missing")


def verify(secret: str, headers: Mapping[str, str], body: bytes, *,
           tolerance: float = TOLERANCE_SECONDS, now: float | None = None) -> int:
    """Check a request as a receiver should; return its timestamp, or raise
    InvalidSignature. ``headers`` is looked up without regard to case."""
    timestamp = _header(headers, TIMESTAMP_HEADER).strip()
    if not timestamp.isdigit():
        raise InvalidSignature("the timestamp is not a whole number of seconds")
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        raise InvalidSignature("the timestamp is too far from now: a replay, or a clock off")
    expected = _mac(secret, timestamp, body)
    offered = [part.strip()[len(SCHEME) + 1:] for part in
               _header(headers, SIGNATURE_HEADER).split(",")
               if part.strip().startswith(f"{SCHEME}=")]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise InvalidSignature("no signature matches the body")
    return int(timestamp)
