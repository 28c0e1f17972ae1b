"""The errors the tool raises on purpose, under one root.

Each carries one sentence that says what is wrong and how to fix it; the command line
prints it (never a traceback) and chooses the exit status by its kind::

    ItsmNotifyError
    ├── ConfigError          a setting is missing or wrong                     exit 2
    ├── DatabaseUnavailable  the database cannot be reached or used            exit 2
    │   └── SchemaOutOfDate  the tool's tables are behind or ahead of this release
    ├── TransportError       a channel refuses the configuration (login, TLS, key)  exit 2
    ├── EventError           one event can never be delivered: it ends failed, the rest go on
    ├── UnsafeHeader         a value cannot be written into a header safely: that email fails
    └── InvalidToken         an unsubscribe token is forged, altered or someone else's
"""

from __future__ import annotations

import socket


class ItsmNotifyError(Exception):
    """Root of every error the tool raises on purpose."""


class ConfigError(ItsmNotifyError):
    """A setting is missing or wrong; the message is one sentence with the fix."""


class DatabaseUnavailable(ItsmNotifyError):
    """The database cannot be reached or used; the message says what to fix."""


class SchemaOutOfDate(DatabaseUnavailable):
    """The database's schema is not the one this release works with; the message says
    what to do."""


class TransportError(ItsmNotifyError):
    """A channel cannot work at all with this configuration (login refused, TLS
    misconfigured, an API key revoked): one sentence with the fix. The batch in hand is
    left as it was, not lost."""


class EventError(ItsmNotifyError):
    """The event can never be delivered (unknown type, malformed payload, missing ticket
    or comment). The message becomes the event's ``last_error``."""


class UnsafeHeader(ItsmNotifyError, ValueError):
    """A header value that could not be made safe: that one email is not sent."""


class InvalidToken(ItsmNotifyError):
    """An unsubscribe token that is forged, altered, or belongs to someone else."""


def describe_network_error(exc: BaseException) -> str:
    """A socket-level failure in a few words (``timed out``, ``connection refused``, ...),
    else the exception's own text."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    return str(exc).strip() or type(exc).__name__
