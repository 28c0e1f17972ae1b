"""The fields of a rendered MIME message, for the APIs that take fields, not raw MIME.

SendGrid's and Postmark's send APIs take a sender, recipients, a subject, a text and an
HTML body and a list of extra headers, and build the MIME message themselves. These
fields are read back from the exact bytes the SMTP path sends (``Outgoing.data``), so
what the provider sends says what the SMTP message says: the same subject and bodies,
and the same threading, loop-prevention, ticket and unsubscribe headers.
"""

from __future__ import annotations

import binascii
import re
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
    """The fields of the message ``data`` for the envelope recipient ``rcpt``.

    The email package's parser costs about 3 ms a message, more than rendering it; the
    messages ``Renderer.compose`` writes have one fixed shape (a header block, then a
    multipart/alternative of a quoted-printable text and HTML part), read here directly
    (a fiftieth of the time) and held field for field equal to the parser by
    tests/test_mime_fields.py. Any other shape goes to the parser."""
    return _read_composed(data, rcpt) or read_parsed(data, rcpt)


def read_parsed(data: bytes, rcpt: str) -> MessageFields:
    """``read_message`` by the email package's parser: any MIME message."""
    message = cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(data))
    return _fields([(name, str(value)) for name, value in message.items()], rcpt,
                   _body(message, "plain"), _body(message, "html"))


def _fields(headers: list[tuple[str, str]], rcpt: str, text: str | None,
            html: str | None) -> MessageFields:
    """The fields from the decoded header values and the bodies."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    senders = _mailboxes(first.get("from"))
    named = {m.address.lower(): m.name for m in _mailboxes(first.get("to"))}
    return MessageFields(
        sender=senders[0] if senders else Mailbox("", ""),
        to=Mailbox(named.get(rcpt.lower(), ""), rcpt),
        reply_to=_mailboxes(first.get("reply-to")),
        subject=first.get("subject", ""), text=text, html=html,
        headers=tuple((name, value) for name, value in headers
                      if name.lower() not in OWN_FIELDS))


_BOUNDARY = re.compile(r'multipart/alternative;\s*boundary="([^"\\]+)"')
_PART_HEADS = {
    "plain": (b'Content-Type: text/plain; charset="utf-8"\r\n'
              b"Content-Transfer-Encoding: quoted-printable"),
    "html": (b'Content-Type: text/html; charset="utf-8"\r\n'
             b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0"),
}
"""The part headers ``Renderer.compose`` writes (render._TEXT_PART_HEAD, _HTML_PART_HEAD)."""


def _read_composed(data: bytes, rcpt: str) -> MessageFields | None:
    """The fields of a message in ``Renderer.compose``'s shape, or None for any other."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found or not head.isascii():
        return None  # no body, or 8-bit headers (SMTPUTF8): the parser's job
    headers: list[tuple[str, str]] = []
    for line in head.decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:  # a folded line: unfold (RFC 5322 §2.2.3)
            headers[-1] = (headers[-1][0], headers[-1][1] + line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        headers.append((name, value.lstrip(" \t")))
    content_type = next((v for n, v in headers if n.lower() == "content-type"), "")
    match = _BOUNDARY.fullmatch(content_type)
    if not match:
        return None
    delimiter = b"\r\n--" + match.group(1).encode("ascii")
    parts = (b"\r\n" + body).split(delimiter)
    if len(parts) != 4 or parts[0] or parts[3] != b"--\r\n":
        return None
    text, html = _qp_body(parts[1], "plain"), _qp_body(parts[2], "html")
    if text is None or html is None:
        return None
    return _fields([(name, _decoded(name, value)) for name, value in headers], rcpt,
                   text, html)


def _qp_body(part: bytes, subtype: str) -> str | None:
    """A quoted-printable UTF-8 part's text, its line ends ``\\n``; None if the part is
    not in the expected shape or not UTF-8."""
    head, found, content = part.partition(b"\r\n\r\n")
    if not found or head != b"\r\n" + _PART_HEADS[subtype]:
        return None
    try:
        return binascii.a2b_qp(content).decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        return None


def _decoded(name: str, value: str) -> str:
    """A header value as the parser gives it: encoded words decoded; a value without
    any is as it stands."""
    if "=?" not in value:
        return value
    return str(policy.default.header_fetch_parse(name, value))
