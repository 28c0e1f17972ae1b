"""Channels: where rendered messages go. ``make_transport`` picks the email transport
``EMAIL_BACKEND`` names."""

from __future__ import annotations

from typing import IO

from ..config import Settings
from .base import Transport
from .local import ConsoleTransport, FileTransport
from .smtp import SmtpTransport


def make_transport(settings: Settings, stream: IO[str] | None = None) -> Transport:
    if settings.email_backend == "smtp":
        return SmtpTransport(settings)
    if settings.email_backend == "file":
        return FileTransport(settings.email_file_path)
    return ConsoleTransport(stream)
