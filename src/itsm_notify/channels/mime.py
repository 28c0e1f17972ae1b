"""The fields of a rendered MIME message, for the APIs that take fields, not raw MIME.

SendGrid's and Postmark's send APIs take a sender, recipients, a subject, a text and an
HTML body and a list of extra headers, and build the MIME message themselves. These
fields are read back from the exact bytes the SMTP path sends (``Outgoing.data``), so
what the provider sends says what the SMTP message says: the same subject and bodies,
and the same threading, loop-prevention, ticket and unsubscribe headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from typing import cast

OWN_FIELDS = frozenset({"from", "to", "cc", "bcc", "subject", "reply-to", "sender", "date",
                        "mime-version", "content-type", "content-transfer-encoding",
                        "return-path"})
"""Header fields a field-based API sets from its own parameters (or itself): never
passed on as extra headers."""


@dataclass(frozen=True)
class Mailbox:
    name: str
    address: str

    def formatted(self) -> str:
        """``"Name" <address>`` as RFC 5322 writes it (quoted when needed), Unicode kept:
        the APIs encode it themselves."""
        if not self.name:
            return self.address
        local, _, domain = self.address.rpartition("@")
        return str(Address(display_name=self.name, username=local, domain=domain))


@dataclass(frozen=True)
class MessageFields:
    sender: Mailbox
    """The From header's mailbox."""
    to: Mailbox
    """The envelope recipient, with the To header's display name when the To header
    names that address (in debug mode it names DEVELOPMENT_EMAIL, the envelope too)."""
    reply_to: tuple[Mailbox, ...]
    subject: str
    text: str | None
    html: str | None
    headers: tuple[tuple[str, str], ...]
    """Every other header field, in order, its value unfolded and decoded (the parser
    does both):
    Message-ID, In-Reply-To, References, Auto-Submitted, X-Auto-Response-Suppress,
    X-ITSM-*, X-Original-To, List-Unsubscribe(-Post)."""


def _mailboxes(value: str | None) -> tuple[Mailbox, ...]:
    return tuple(Mailbox(name, address) for name, address in getaddresses([value or ""])
                 if address)


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    return cast(str, part.get_content()).replace("\r\n", "\n")


def read_message(data: bytes, rcpt: str) -> MessageFields:
    """The fields of the message ``data`` for the envelope recipient ``rcpt``."""
    message = cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(data))
    senders = _mailboxes(message["From"])
    named = {m.address.lower(): m.name for m in _mailboxes(message["To"])}
    headers = tuple((name, str(value)) for name, value in message.items()
                    if name.lower() not in OWN_FIELDS)
    return MessageFields(
        sender=senders[0] if senders else Mailbox("", ""),
        to=Mailbox(named.get(rcpt.lower(), ""), rcpt),
        reply_to=_mailboxes(message["Reply-To"]),
        subject=str(message["Subject"] or ""),
        text=_body(message, "plain"), html=_body(message, "html"), headers=headers)
