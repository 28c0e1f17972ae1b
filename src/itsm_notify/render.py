"""Templates to MIME messages (contract §3). Pure: no database, no sockets.

Templates are compiled once per process (one Jinja environment per Renderer) and the
ticket part of a template's variables is built once per event, not per recipient.
Nothing a ticket contains can reach a header unfolded: every header value built from
ticket or user text passes through ``one_line``, and the email library then encodes it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy, quoprimime
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import css_inline
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    select_autoescape,
)

from .config import Settings, ticket_path
from .inline import StructureInliner
from .models import EventContext, Ticket
from .recipients import EmailRecipient, assignee_id, event_type
from .slots import SlotRenderer


def packaged_template_dir() -> Path:
    """The built-in templates: inside the installed package (wheel), or the checkout's
    top-level ``templates/`` folder (editable install, source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parents[1] / "templates"):
        if (candidate / "emails" / "base.html").is_file():
            return candidate
    raise FileNotFoundError("itsm-notify's templates folder is missing from the installation")


class ListUrlHeader(UnstructuredHeader):
    """``List-Unsubscribe`` holds ``<URL>`` (RFC 2369), which must not become RFC 2047
    encoded words: CPython folds a URL longer than a line that way, and mail clients then
    no longer see the link (nor offer one-click unsubscribe). Written on one line, within
    RFC 5322's 998 characters, when it is plain ASCII."""

    # The registry mixes this class with BaseHeader, which typeshed keeps apart from it.

    def fold(self, *, policy: Any) -> str:
        line = f"{self.name}: {self}"  # type: ignore[attr-defined]
        if line.isascii() and len(line) <= 998:
            return line + policy.linesep
        return str(super().fold(policy=policy))  # type: ignore[misc]


class _HeaderRegistry(HeaderRegistry):
    """The email package's header factory, with ``List-Unsubscribe`` a ListUrlHeader, and
    each header's class made once: CPython makes a new class for every header it parses,
    which costs more than the parsing."""

    def __init__(self) -> None:
        super().__init__()
        self.map_to_type("list-unsubscribe", ListUrlHeader)  # type: ignore[arg-type]
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        made = self._classes.get(name)
        if made is None:
            made = self._classes[name] = super().__getitem__(name)
        return made


SMTP_POLICY = policy.SMTP.clone(header_factory=_HeaderRegistry())
"""``policy.SMTP``, with ``List-Unsubscribe`` kept a readable URL: every message's policy."""
SMTPUTF8_POLICY = SMTP_POLICY.clone(utf8=True)
"""For an envelope that needs SMTPUTF8 (a non-ASCII address)."""

_UNSAFE_IN_HEADER = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_ENCODED_WORD_START = re.compile(r"=\?(?=[^?\s]*\?[bBqQ]\?)")


@functools.lru_cache(maxsize=4096)  # the same titles and names, email after email
def one_line(text: str, limit: int = 200) -> str:
    """Text fit for a header: control characters, line and paragraph separators and
    format characters become spaces; runs of white space fold to one; long text is cut.

    RFC 2047 encoded-word openers (``=?utf-8?q?``) are broken apart too: the email
    package decodes encoded words in a value it is given, so ``=?utf-8?q?=0D=0ABcc:..?=``
    in a title would otherwise become a real line break and a Bcc header."""
    if text.isascii() and text.isprintable():
        cleaned = text  # no printable ASCII character is in an unsafe category
    else:
        cleaned = "".join(" " if unicodedata.category(ch) in _UNSAFE_IN_HEADER else ch
                          for ch in text)
    cleaned = _ENCODED_WORD_START.sub("= ?", cleaned)
    folded = " ".join(cleaned.split())
    return folded if len(folded) <= limit else folded[: limit - 1].rstrip() + "…"


def cut(text: str, limit: int) -> tuple[str, bool]:
    """Text cut to ``limit`` characters at a word boundary; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    space = head.rfind(" ")
    return (head[:space] if space > limit * 0.8 else head).rstrip() + " …", True


def message_id(event_id: int | str, recipient_key: str, domain: str) -> str:
    """The same email (event, recipient) keeps the same Message-ID when retried."""
    return f"<itsm-notify.{event_id}.{_address_digest(recipient_key)}@{domain}>"


@functools.lru_cache(maxsize=4096)
def _address_digest(recipient_key: str) -> str:
    return hashlib.sha256(recipient_key.encode()).hexdigest()[:16]


def thread_id(ticket_id: int, domain: str) -> str:
    """Every email about one ticket refers to this id, so mail clients thread them."""
    return f"<itsm-notify.ticket-{ticket_id}@{domain}>"


def display_time(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else None


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class Renderer:
    """Renders the email templates; one per process, templates compiled once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender_address = sender_address(settings)
        loaders = []
        if settings.template_dir:
            loaders.append(FileSystemLoader(str(Path(settings.template_dir) / "emails")))
            loaders.append(FileSystemLoader(settings.template_dir))
        loaders.append(FileSystemLoader(str(packaged_template_dir() / "emails")))
        self.structures = StructureInliner(css_inline.CSSInliner(keep_at_rules=True))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=StrictUndefined,
            auto_reload=False,  # compiled once per process: no stat() per message
            finalize=self.structures.finalize,  # values become markers while inlining
        )
        self._templates: dict[str, Template] = {}
        self.slots = SlotRenderer(self.env, self.render)

    # ------------------------------------------------------------------ rendering

    def render(self, template: str, variables: Mapping[str, Any]) -> tuple[str, str]:
        """The (text, html) pair of ``template``; the HTML with its CSS inlined."""
        text = self._template(f"{template}.txt").render(variables)
        return text, self.structures.render(self._template(f"{template}.html"), variables)

    def _template(self, name: str) -> Template:
        """A compiled template, kept here: Jinja's own cache costs a lock and a lookup
        that show in a profile of thousands of messages."""
        found = self._templates.get(name)
        if found is None:
            found = self._templates[name] = self.env.get_template(name)
        return found

    def ticket_view(self, ticket: Ticket, users: Mapping[int, Any],
                    project_name: str | None) -> SimpleNamespace:
        limit = self.settings.max_text_length
        description, truncated = cut(ticket.description, limit)
        requester = users.get(ticket.requester_id) if ticket.requester_id else None
        assignee = users.get(ticket.assignee_id) if ticket.assignee_id else None
        return SimpleNamespace(
            id=ticket.id, number=ticket.number, title=ticket.title,
            description=description, description_truncated=truncated,
            status=ticket.status, priority=ticket.priority,
            url=self.settings.ticket_url(ticket.id),
            requester_name=requester.display_name if requester else "",
            assignee_name=assignee.display_name if assignee else None,
            project_name=project_name, due_at_display=display_time(ticket.due_at),
        )

    def event_variables(self, ctx: EventContext) -> dict[str, Any]:
        """The variables an event's templates share across all its recipients."""
        actor = ctx.actor
        variables: dict[str, Any] = {
            "site_name": self.settings.site_name,
            "site_url": self.settings.site_url,
            "event_type": ctx.event.event_type,
            "ticket": self.ticket_view(ctx.ticket, ctx.users,
                                       ctx.project.name if ctx.project else None),
            "actor_name": actor.display_name if actor else None,
        }
        if ctx.event.event_type == "ticket_assigned":
            new_assignee = ctx.users.get(assignee_id(ctx) or -1)
            variables["assignee_name"] = new_assignee.display_name if new_assignee else ""
        if ctx.event.event_type == "status_changed":
            variables["old_status"] = ctx.payload.get("old_status")
            variables["new_status"] = ctx.payload["new_status"]
        if ctx.comment is not None:
            body, truncated = cut(ctx.comment.body, self.settings.max_text_length)
            author = ctx.users.get(ctx.comment.author_id) if ctx.comment.author_id else None
            variables["comment"] = SimpleNamespace(
                body=body, body_truncated=truncated,
                author_name=author.display_name if author else "Someone",
                created_at_display=display_time(ctx.comment.created_at) or "",
                is_internal=ctx.comment.is_internal)
        return variables

    def subject(self, ctx: EventContext) -> str:
        fields = {"title": one_line(ctx.ticket.title), "number": one_line(ctx.ticket.number),
                  **{k: one_line(str(v)) for k, v in ctx.payload.items() if v is not None}}
        return one_line(event_type(ctx.event.event_type).subject.format(**fields), limit=300)

    def render_event(self, ctx: EventContext, recipient: EmailRecipient,
                     shared: Mapping[str, Any] | None = None,
                     unsubscribe_url: str | None = None,
                     subject: str | None = None) -> RenderedEmail:
        """One event's email for one recipient. Pass ``shared`` (from
        ``event_variables``) and ``subject`` when rendering several recipients of one
        event."""
        if ctx.comment is not None and ctx.comment.is_internal:
            # Belt and braces: the rules never email internal comments.
            raise ValueError("internal comments are never emailed")
        personal = {**recipient_variables(recipient), "unsubscribe_url": unsubscribe_url}
        template = event_type(ctx.event.event_type).template
        if shared:  # the event's CSS is inlined once, not per recipient (see slots.py)
            text, html = self.slots.render(template, shared, personal)
        else:
            text, html = self.render(template, {**self.event_variables(ctx), **personal})
        return RenderedEmail(subject=subject or self.subject(ctx), text=text, html=html)

    # ------------------------------------------------------------------ messages

    def header_fields(self, subject: str, recipient: EmailRecipient, *, event_type_name: str,
                      ticket_number: str | None, msg_id: str, thread: str | None,
                      is_thread_start: bool = False, unsubscribe_url: str | None = None,
                      now: datetime | None = None) -> list[tuple[str, str | Address]]:
        """The contract's headers of one email, in order; the MIME ones follow them."""
        return [*self._shared_fields(subject, event_type_name=event_type_name,
                                     ticket_number=ticket_number, thread=thread,
                                     is_thread_start=is_thread_start, now=now),
                *self._personal_fields(recipient, msg_id, unsubscribe_url)]

    def _shared_fields(self, subject: str, *, event_type_name: str, ticket_number: str | None,
                       thread: str | None, is_thread_start: bool, now: datetime | None
                       ) -> tuple[tuple[str, str], ...]:
        """The headers every recipient of an email gets alike: they come first, so that
        compose writes them once for all of an event's recipients."""
        settings = self.settings
        fields = [("Subject", one_line(subject, limit=300)), ("From", settings.default_from_email)]
        if settings.reply_to_email:
            fields.append(("Reply-To", settings.reply_to_email))
        fields.append(("Date", _date(int(now.timestamp() if now else time.time()))))
        if thread and not is_thread_start:
            fields.append(("In-Reply-To", thread))
        if thread:
            fields.append(("References", thread))
        fields += [("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All")]
        if ticket_number:
            fields.append(("X-ITSM-Ticket", one_line(ticket_number)))
        fields.append(("X-ITSM-Event", event_type_name))
        return tuple(fields)

    def _personal_fields(self, recipient: EmailRecipient, msg_id: str,
                         unsubscribe_url: str | None) -> list[tuple[str, str | Address]]:
        to = header_address(recipient.name, recipient.address)
        fields: list[tuple[str, str | Address]] = []
        if self.settings.redirect_to:
            fields += [("To", self.settings.redirect_to), ("X-Original-To", str(to))]
        else:
            fields.append(("To", to))
        fields.append(("Message-ID", msg_id))
        if unsubscribe_url and unsubscribe_url.startswith("https://"):
            # RFC 8058 one-click: only an HTTPS URI qualifies.
            fields += [("List-Unsubscribe", f"<{unsubscribe_url}>"),
                       ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        return fields

    def build_message(self, rendered: RenderedEmail, recipient: EmailRecipient, *,
                      event_type_name: str, ticket_number: str | None, msg_id: str,
                      thread: str | None, is_thread_start: bool = False,
                      unsubscribe_url: str | None = None,
                      now: datetime | None = None) -> EmailMessage:
        """A multipart/alternative message with the contract's headers, built the email
        package's own way. ``compose`` gives its bytes faster."""
        msg = EmailMessage(policy=SMTP_POLICY)
        for name, value in self.header_fields(
                rendered.subject, recipient, event_type_name=event_type_name,
                ticket_number=ticket_number, msg_id=msg_id, thread=thread,
                is_thread_start=is_thread_start, unsubscribe_url=unsubscribe_url, now=now):
            msg[name] = value
        for name, parsed in msg.items():
            _refuse_line_breaks(name, parsed)
        msg.set_content(rendered.text, cte="quoted-printable")
        msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
        msg.set_boundary(_boundary(thread or msg_id))
        return msg

    def compose(self, rendered: RenderedEmail, recipient: EmailRecipient, *,
                event_type_name: str, ticket_number: str | None, msg_id: str,
                thread: str | None, is_thread_start: bool = False,
                unsubscribe_url: str | None = None, now: datetime | None = None) -> bytes:
        """The message ``build_message`` makes, as the SMTP transport sends it: its
        ``as_bytes`` under policy.SMTP, or under SMTPUTF8 when the envelope needs it
        (a non-ASCII address: then it is built that way, a rare case).

        The common case skips the email package's message objects, which cost more than
        rendering the templates: each header field is folded by the policy on its own (as
        the generator does) and remembered, since most recur from email to email (the
        fields an event's recipients share, a user's To...); each body line's
        quoted-printable encoding is remembered too (see ``_qp_part``); and the MIME
        structure around them is the fixed one ``set_content`` and ``add_alternative``
        make. tests/test_fast_paths.py holds the two byte for byte against each other."""
        if needs_smtputf8(self.sender_address, self.settings.redirect_to or recipient.address):
            return self.build_message(
                rendered, recipient, event_type_name=event_type_name,
                ticket_number=ticket_number, msg_id=msg_id, thread=thread,
                is_thread_start=is_thread_start, unsubscribe_url=unsubscribe_url, now=now,
            ).as_bytes(policy=SMTPUTF8_POLICY)
        boundary = _boundary(thread or msg_id).encode("ascii")
        return b"".join([
            _fold_all(self._shared_fields(rendered.subject, event_type_name=event_type_name,
                                          ticket_number=ticket_number, thread=thread,
                                          is_thread_start=is_thread_start, now=now)),
            *(fold_header(name, value) for name, value in
              self._personal_fields(recipient, msg_id, unsubscribe_url)),
            _MULTIPART_HEAD.replace(_BOUNDARY_PLACEHOLDER, boundary), b"\r\n",
            b"--", boundary, b"\r\n", _TEXT_PART_HEAD, _qp_part(rendered.text),
            b"\r\n--", boundary, b"\r\n", _HTML_PART_HEAD, _qp_part(rendered.html),
            b"\r\n--", boundary, b"--\r\n"])


# ------------------------------------------------------------------ wire format


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date field of a second (``formatdate`` drops the fraction): every email of a
    second has the same, formatted once."""
    return formatdate(second, usegmt=True)


def needs_smtputf8(sender: str, rcpt: str) -> bool:
    """Whether an envelope needs SMTPUTF8 (a non-ASCII address), and its message 8-bit
    headers."""
    return not (sender.isascii() and rcpt.isascii())


def _refuse_line_breaks(name: str, parsed: Any) -> None:
    """Last line of defence: no header value may hold a line break once parsed."""
    value = str(parsed)
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header would hold a line break")


_PLAIN_HEADER = re.compile(r"[A-Za-z0-9@<>._+-]+(?: [A-Za-z0-9@<>._+-]+)*")
_PLAIN_TEXT = re.compile(r"[!-<>-~]+(?: [!-<>-~]+)*")
"""Printable ASCII words but ``=`` (no encoded word can start), single spaces between."""


def fold_header(name: str, value: str | Address) -> bytes:
    """One header field as ``msg[name] = value`` then ``as_bytes`` write it under
    SMTP_POLICY, remembered (parsing a header value costs more than rendering a line of
    a template). Raises ValueError if the parsed value would hold a line break.

    A value that fits on a line and parses to itself is written as it is, never parsed:
    a plain one (letters, digits, ``@<>._+-``, single spaces) such as a Message-ID, and
    in an unstructured field (a Subject, an X- field) printable ASCII words but ``=``."""
    if isinstance(value, Address):  # unhashable: remembered by its parts
        return _fold(name, (value.display_name, value.username, value.domain))
    if len(name) + 2 + len(value) <= 78 and (_PLAIN_HEADER.fullmatch(value) or (
            _unstructured(name) and _PLAIN_TEXT.fullmatch(value))):
        return f"{name}: {value}\r\n".encode("ascii")
    return _fold(name, value)


@functools.lru_cache(maxsize=64)
def _unstructured(name: str) -> bool:
    """Whether the policy parses ``name`` as unstructured text, folded the plain way."""
    kind = SMTP_POLICY.header_factory[name]  # type: ignore[index]
    return issubclass(kind, UnstructuredHeader) and not issubclass(kind, ListUrlHeader)


@functools.lru_cache(maxsize=256)
def _fold_all(fields: tuple[tuple[str, str], ...]) -> bytes:
    """Header fields folded, one after the other: the fields an event's recipients share."""
    return b"".join(fold_header(name, value) for name, value in fields)


@functools.lru_cache(maxsize=16384)
def _fold(name: str, value: str | tuple[str, str, str]) -> bytes:
    stored = Address(*value) if isinstance(value, tuple) else value
    parsed = SMTP_POLICY.header_store_parse(name, stored)[1]
    _refuse_line_breaks(name, parsed)
    return bytes(SMTP_POLICY.fold_binary(name, parsed))


_QP_MAX_LINE = SMTP_POLICY.max_line_length or 78
_QP_AS_IS = re.compile(rb"(?:[\t !-<>-~]*[!-<>-~])?")
"""A line quoted-printable leaves as it is: printable ASCII but ``=``, tabs and spaces,
not ending in white space (and not longer than ``_QP_MAX_LINE``)."""


@functools.lru_cache(maxsize=8192)
def _qp_line(line: bytes) -> bytes:
    """One line's quoted-printable encoding, its soft line breaks made CRLF. Most lines
    that are new (a ticket's title in a digest's row) need no encoding at all: they are
    recognised at C speed instead of going through the email package's encoder."""
    if len(line) <= _QP_MAX_LINE and _QP_AS_IS.fullmatch(line):
        return line
    encoded = quoprimime.body_encode(line.decode("latin-1"), _QP_MAX_LINE)
    return encoded.replace("\n", "\r\n").encode("ascii")


def _qp_part(text: str) -> bytes:
    """A text part's body as ``set_content(text, cte="quoted-printable")`` encodes it and
    the generator writes it: the encoder works a line at a time, and most lines (the
    template's) recur from email to email, so each line's encoding is remembered."""
    lines = text.encode("utf-8").splitlines()
    return b"\r\n".join(map(_qp_line, lines)) + b"\r\n" if lines else b"\r\n"


_BOUNDARY_KEY = secrets.token_bytes(16)
_BOUNDARY_PLACEHOLDER = b"===============0000000000000000000=="


@functools.lru_cache(maxsize=4096)
def _boundary(thread: str) -> str:
    """The MIME boundary, in the email package's format (so every boundary folds alike:
    see _MULTIPART_HEAD), unguessable from outside. It cannot occur in a part:
    quoted-printable writes ``=`` as ``=3D``."""
    digest = hmac.new(_BOUNDARY_KEY, thread.encode(), hashlib.sha256).digest()
    return f"==============={int.from_bytes(digest[:8]) % 10**19:019d}=="


_MULTIPART_HEAD = fold_header("MIME-Version", "1.0") + fold_header(
    "Content-Type", f'multipart/alternative; boundary="{_BOUNDARY_PLACEHOLDER.decode()}"')
_TEXT_PART_HEAD = (b'Content-Type: text/plain; charset="utf-8"\r\n'
                   b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
_HTML_PART_HEAD = (b'Content-Type: text/html; charset="utf-8"\r\n'
                   b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\n")


def recipient_variables(recipient: EmailRecipient) -> dict[str, Any]:
    display = recipient.name or recipient.address
    return {
        "recipient": SimpleNamespace(first_name=recipient.first_name, display_name=display,
                                     email=recipient.address),
        "greeting_name": recipient.first_name or display,
    }


_ADDRESS_SPECIALS = re.compile(r'[<>()\[\]:;@\\,"]')


@functools.lru_cache(maxsize=4096)
def header_address(name: str, address: str) -> Address:
    """``Name <addr>`` as an Address object (assigned as is, never re-parsed), its display
    name on one line and without RFC 5322 specials: CPython folds a long display name
    without quoting it, so ``<``, ``,`` or ``:`` in a name could split the header into
    other addresses."""
    local, _, domain = address.rpartition("@")
    display = " ".join(_ADDRESS_SPECIALS.sub(" ", one_line(name, limit=100)).split())
    return Address(display_name=display, username=local, domain=domain)


def sender_address(settings: Settings) -> str:
    """The envelope sender: the bare address of DEFAULT_FROM_EMAIL."""
    return getaddresses([settings.default_from_email])[0][1]


def in_app_text(ctx: EventContext, subject: str) -> tuple[str, str, str]:
    """(title, body, relative url) of an in-app notification row."""
    actor = ctx.actor
    who = actor.display_name if actor else "Someone"
    ticket = ctx.ticket
    kind = ctx.event.event_type
    if kind == "ticket_created":
        body = f"{who} opened {ticket.number}: {ticket.title}"
    elif kind == "ticket_assigned":
        body = f"{ticket.number} was assigned by {who}"
    elif kind == "status_changed":
        body = f"{who} changed the status of {ticket.number} to {ctx.payload['new_status']}"
    elif ctx.comment is not None:
        label = "an internal note" if ctx.comment.is_internal else "a comment"
        body = f"{who} added {label}: {cut(ctx.comment.body, 280)[0]}"
    else:
        body = subject
    return one_line(subject, limit=500), body, ticket_path(ticket.id)
