"""Unsubscribe links and notification preferences.

Every email to a user carries a link (footer) and, when ``SITE_URL`` is HTTPS, the
RFC 8058 one-click headers. The link holds a token signed with ``SECRET_KEY`` (HMAC,
via itsdangerous) naming the user and the event type; nothing in it can be changed
without the key. The web application verifies and applies a token with
``apply_token`` (or ``itsm-notify unsubscribe TOKEN``); from then on that user gets no
email of that event type until the preference is turned back on.

    from itsm_notify.ops.unsubscribe import apply_token, InvalidToken

    # in the view behind SITE_URL/notifications/unsubscribe/<token>/ (GET shows a
    # confirmation, POST — also the RFC 8058 one-click POST — applies it):
    try:
        user_id, event_type = apply_token(engine, settings.SECRET_KEY, token,
                                          expected_user_id=request.user.id)
    except InvalidToken:
        return HttpResponseBadRequest("This unsubscribe link is not valid.")
"""

from __future__ import annotations

import functools
import hmac
from datetime import datetime
from typing import Any

from itsdangerous import BadSignature, Serializer, URLSafeSerializer
from itsdangerous.encoding import base64_encode
from sqlalchemy import Engine, and_, insert, select, update

from ..errors import InvalidToken
from ..states import Channel
from ..storage.database import utcnow
from ..storage.schema import preferences

SALT = "itsm-notify.unsubscribe"
UNSUBSCRIBE_PATH = "/notifications/unsubscribe/{token}/"




def _serializer(secret_key: str) -> URLSafeSerializer:
    if not secret_key:
        raise InvalidToken("SECRET_KEY is not set, so no token can be verified: set SECRET_KEY "
                           "to the key the emails were signed with.")
    return URLSafeSerializer(secret_key, salt=SALT)


@functools.lru_cache(maxsize=8)
def _signing(secret_key: str) -> tuple[URLSafeSerializer, bytes]:
    """The serializer of ``secret_key`` and its signer's derived key."""
    serializer = _serializer(secret_key)
    return serializer, serializer.make_signer().derive_key()


def make_token(secret_key: str, user_id: int, event_type: str) -> str:
    """``URLSafeSerializer(secret_key, salt=SALT).dumps([user_id, event_type])``, made in
    three steps instead of through its layers: the payload as it writes it, less its
    attempt to compress (``loads`` reads a payload only marked compressed: a payload
    this short never gains, and zlib's setup of a quarter of a megabyte cost more than
    the rest of the token), then its signature, HMAC-SHA1 under the signer's derived
    key, made by OpenSSL in one call (its own HMAC runs in Python). A run signs one
    token per user. tests/test_security.py holds the two equal wherever itsdangerous
    does not compress."""
    serializer, key = _signing(secret_key)
    payload = base64_encode(Serializer.dump_payload(serializer, [user_id, event_type]))
    return (payload + b"." + base64_encode(hmac.digest(key, payload, "sha1"))).decode("ascii")


def read_token(secret_key: str, token: str) -> tuple[int, str]:
    """The (user id, event type) a token names; InvalidToken when it was not signed
    with this key or was altered."""
    try:
        data: Any = _serializer(secret_key).loads(token)
    except BadSignature:
        raise InvalidToken("This unsubscribe token is not valid (altered, or signed with "
                           "another key).") from None
    if (not isinstance(data, list) or len(data) != 2 or not isinstance(data[0], int)
            or not isinstance(data[1], str)):
        raise InvalidToken("This unsubscribe token is not valid (unexpected content).")
    return data[0], data[1]


def unsubscribe_url(site_url: str, secret_key: str, user_id: int | None,
                    event_type: str) -> str | None:
    """The link for a user's email, or None (no user behind the address, or no key)."""
    if user_id is None or not secret_key:
        return None
    return site_url + UNSUBSCRIBE_PATH.format(token=make_token(secret_key, user_id, event_type))


def set_preference(engine: Engine, user_id: int, event_type: str, channel: str,
                   enabled: bool, now: datetime) -> None:
    """Turn one (user, event type, channel) on or off; absent means on."""
    key = and_(preferences.c.user_id == user_id, preferences.c.event_type == event_type,
               preferences.c.channel == channel)
    with engine.begin() as conn:
        if conn.execute(select(preferences.c.user_id).where(key)).first():
            conn.execute(update(preferences).where(key).values(enabled=enabled, updated_at=now))
        else:
            conn.execute(insert(preferences).values(user_id=user_id, event_type=event_type,
                                                    channel=channel, enabled=enabled,
                                                    updated_at=now))


def apply_token(engine: Engine, secret_key: str, token: str, *,
                expected_user_id: int | None = None,
                now: datetime | None = None) -> tuple[int, str]:
    """Verify a token and turn that user's email for that event type off.

    Pass ``expected_user_id`` when a user is logged in: a token naming someone else is
    refused. Returns (user id, event type).
    """
    user_id, event_type = read_token(secret_key, token)
    if expected_user_id is not None and expected_user_id != user_id:
        raise InvalidToken("This unsubscribe token belongs to another user.")
    set_preference(engine, user_id, event_type, Channel.EMAIL, False, now or utcnow())
    return user_id, event_type
