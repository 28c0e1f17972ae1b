"""ITSM_INBOUND_URL: which mailbox fetch-mail reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError


@dataclass(frozen=True)
class MailboxURL:
    """ITSM_INBOUND_URL, parsed. ``scheme`` is imaps, imap or maildir."""

    scheme: str
    host: str = ""
    port: int = 0
    user: str = ""
    folder: str = "INBOX"
    path: str = ""

    def describe(self) -> str:
        """The URL without a password, for messages."""
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{self.folder}"


def parse_inbound_url(url: str) -> MailboxURL:
    """Parse ``imaps://user@host[:993]/FOLDER``, ``imap://user@host[:143]/FOLDER`` or
    ``maildir:/path``; raise ``ConfigError`` naming the fix for anything else. The user
    name may contain ``@`` as is or as ``%40``; the folder defaults to INBOX."""
    text = url.strip()
    scheme = text.partition(":")[0].lower()
    if scheme == "maildir":
        path = text.partition(":")[2]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError("ITSM_INBOUND_URL maildir: needs a path: set e.g. "
                              "maildir:/var/mail/helpdesk/Maildir.")
        return MailboxURL("maildir", path=str(Path(unquote(path)).expanduser()))
    if scheme not in ("imaps", "imap"):
        raise ConfigError(f"ITSM_INBOUND_URL must start with imaps://, imap:// or maildir:, "
                          f"got {scheme + ':' if scheme else repr(text)}: set e.g. "
                          "imaps://helpdesk@mail.example.com/INBOX.")
    parts = urlsplit(text)
    try:
        port = parts.port or (993 if scheme == "imaps" else 143)
    except ValueError:
        raise ConfigError("ITSM_INBOUND_URL has a port that is not a number: fix it, e.g. "
                          "imaps://helpdesk@mail.example.com:993/INBOX.") from None
    if parts.password is not None:
        raise ConfigError("ITSM_INBOUND_URL contains a password: remove it from the URL and "
                          "put it in ITSM_INBOUND_PASSWORD, which is never printed.")
    if not parts.hostname or not parts.username:
        raise ConfigError("ITSM_INBOUND_URL needs a user and a host: set e.g. "
                          "imaps://helpdesk@mail.example.com/INBOX.")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return MailboxURL(scheme, host=parts.hostname, port=port, user=unquote(parts.username),
                      folder=folder)
