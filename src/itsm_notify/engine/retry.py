"""The retry policy: exponential backoff with jitter, and the rate ceilings."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy import Engine

from ..channels.base import RateLimiter
from ..config import Settings
from ..storage.deliveries import (
    emails_sent_since,
)


def rate_limiter(settings: Settings, engine: Engine, now: datetime) -> RateLimiter:
    """The ceilings of ``ITSM_RATE_PER_SECOND`` and ``ITSM_RATE_PER_HOUR``, the hour's
    budget less what was sent in the last hour (by any command)."""
    limiter = RateLimiter(per_second=settings.rate_per_second, per_hour=settings.rate_per_hour)
    if settings.rate_per_hour:
        limiter.sent_last_hour = emails_sent_since(engine, now - timedelta(hours=1))
    return limiter


def backoff(attempts: int, settings: Settings) -> timedelta:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a random 0.5–1."""
    ceiling = min(settings.retry_max_seconds,
                  settings.retry_base_seconds * 2 ** max(0, attempts - 1))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))
