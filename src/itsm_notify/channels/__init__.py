"""Channels: where rendered messages go, each reporting one outcome per message.

* ``base``: what every channel shares: the outgoing message, its outcome, the transport
  interface, the rate ceiling;
* ``local`` (console, a folder of .eml files) and ``smtp``: the email transports of
  Django's names;
* ``http_email``: SendGrid, Amazon SES, Postmark and Mailgun as transports for the same
  MIME messages the SMTP path sends;
* ``chat``: Slack, Microsoft Teams (Workflows), Mattermost, Rocket.Chat and a signed JSON
  webhook; ``messages`` makes a chat message of an event, ``routes`` says which
  ``[chat.<name>]`` destinations an event goes to, ``signing`` signs the webhook;
* ``http``: what the HTTP channels share: a pooled client used by parallel workers, and
  the mapping of HTTP answers to outcomes (Retry-After included).

``make_transport`` picks the email transport ``EMAIL_BACKEND`` names.
"""

from __future__ import annotations

from typing import IO

from ..config import HTTP_EMAIL_BACKENDS, Settings
from .base import Transport


def make_transport(settings: Settings, stream: IO[str] | None = None) -> Transport:
    """The email transport of ``EMAIL_BACKEND`` (imported only when used: an idle run
    loads none of them)."""
    if settings.email_backend in HTTP_EMAIL_BACKENDS:
        from .http_email import make_http_email_transport

        return make_http_email_transport(settings)
    if settings.email_backend == "smtp":
        from .smtp import SmtpTransport

        return SmtpTransport(settings)
    from .local import ConsoleTransport, FileTransport

    if settings.email_backend == "file":
        return FileTransport(settings.email_file_path)
    return ConsoleTransport(stream)
