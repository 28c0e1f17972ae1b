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
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy, quoprimime
from email.generator import BytesGenerator
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from io import BytesIO
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


class _CachingHeaderRegistry(HeaderRegistry):
    """The email package's header factory, made cheap for a sender of many similar
    messages: CPython builds a new header class for every header it stores, and parses
    every value again although From, Auto-Submitted, the content types and the like are
    the same in every message. Both are cached here; parsed headers are immutable, so
    messages may share them. The messages are byte for byte what ``policy.SMTP`` makes."""

    def __init__(self) -> None:
        super().__init__()
        self.map_to_type("list-unsubscribe", ListUrlHeader)  # type: ignore[arg-type]
        self._classes: dict[str, type] = {}
        self._parsed = functools.lru_cache(maxsize=2048)(self._parse)

    def __getitem__(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = super().__getitem__(name)
        return cls

    def _parse(self, name: str, value: str) -> Any:
        return super().__call__(name, value)

    def __call__(self, name: str, value: Any) -> Any:
        return self._parsed(name, value) if type(value) is str else super().__call__(name, value)


SMTP_POLICY = policy.SMTP.clone(header_factory=_CachingHeaderRegistry())
"""``policy.SMTP`` with the caching header factory: the policy of every message built here."""

_UNSAFE_IN_HEADER = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_ENCODED_WORD_START = re.compile(r"=\?(?=[^?\s]*\?[bBqQ]\?)")


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
    digest = hashlib.sha256(recipient_key.encode()).hexdigest()[:16]
    return f"<itsm-notify.{event_id}.{digest}@{domain}>"


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
        loaders = []
        if settings.template_dir:
            loaders.append(FileSystemLoader(str(Path(settings.template_dir) / "emails")))
            loaders.append(FileSystemLoader(settings.template_dir))
        loaders.append(FileSystemLoader(str(packaged_template_dir() / "emails")))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=StrictUndefined,
            auto_reload=False,  # compiled once per process: no stat() per message
        )
        self.inliner = css_inline.CSSInliner(keep_at_rules=True)
        self._templates: dict[str, Template] = {}
        self.slots = SlotRenderer(self.env, self.render)

    # ------------------------------------------------------------------ rendering

    def render(self, template: str, variables: Mapping[str, Any]) -> tuple[str, str]:
        """The (text, html) pair of ``template``; the HTML with its CSS inlined."""
        text = self._template(f"{template}.txt").render(variables)
        html = self._template(f"{template}.html").render(variables)
        return text, self.inliner.inline(html)

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
                     unsubscribe_url: str | None = None) -> RenderedEmail:
        """One event's email for one recipient. Pass ``shared`` (from
        ``event_variables``) when rendering several recipients of one event."""
        if ctx.comment is not None and ctx.comment.is_internal:
            # Belt and braces: the rules never email internal comments.
            raise ValueError("internal comments are never emailed")
        personal = {**recipient_variables(recipient), "unsubscribe_url": unsubscribe_url}
        template = event_type(ctx.event.event_type).template
        if shared:  # the event's CSS is inlined once, not per recipient (see slots.py)
            text, html = self.slots.render(template, shared, personal)
        else:
            text, html = self.render(template, {**self.event_variables(ctx), **personal})
        return RenderedEmail(subject=self.subject(ctx), text=text, html=html)

    # ------------------------------------------------------------------ messages

    def build_message(self, rendered: RenderedEmail, recipient: EmailRecipient, *,
                      event_type_name: str, ticket_number: str | None, msg_id: str,
                      thread: str | None, is_thread_start: bool = False,
                      unsubscribe_url: str | None = None,
                      now: datetime | None = None) -> EmailMessage:
        """A multipart/alternative message with the contract's headers."""
        settings = self.settings
        msg = EmailMessage(policy=SMTP_POLICY)
        msg["Subject"] = one_line(rendered.subject, limit=300)
        msg["From"] = settings.default_from_email
        to = header_address(recipient.name, recipient.address)
        if settings.redirect_to:
            msg["To"] = settings.redirect_to
            msg["X-Original-To"] = str(to)
        else:
            _set_header(msg, "To", to)
        if settings.reply_to_email:
            msg["Reply-To"] = settings.reply_to_email
        msg["Date"] = formatdate(now.timestamp() if now else None, usegmt=True)
        _set_header(msg, "Message-ID", msg_id)
        if thread and not is_thread_start:
            msg["In-Reply-To"] = thread
        if thread:
            msg["References"] = thread
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Auto-Response-Suppress"] = "All"
        if ticket_number:
            msg["X-ITSM-Ticket"] = one_line(ticket_number)
        msg["X-ITSM-Event"] = event_type_name
        if unsubscribe_url and unsubscribe_url.startswith("https://"):
            # RFC 8058 one-click: only an HTTPS URI qualifies.
            msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        _check_headers(msg)
        _set_alternatives(msg, rendered.text, rendered.html, thread or msg_id)
        return msg


# ------------------------------------------------------------- the MIME structure
# What ``msg.set_content(text, cte="quoted-printable")`` then ``msg.add_alternative(html,
# subtype="html", cte="quoted-printable")`` build, header for header and byte for byte,
# at a fraction of the cost (tests/test_fast_paths.py holds the two side by side).


@functools.lru_cache(maxsize=8192)
def _qp_line(line: bytes) -> str:
    return quoprimime.body_encode(line.decode("latin-1"), SMTP_POLICY.max_line_length or 78)


def _qp_body(text: str) -> str:
    """The email package's quoted-printable body, a line at a time: it encodes each
    line on its own, and most lines (the template's) repeat from message to message."""
    lines = text.encode("utf-8").splitlines()
    return "\n".join(map(_qp_line, lines)) + "\n" if lines else "\n"


def _text_part(content: str, subtype: str) -> EmailMessage:
    part = EmailMessage(policy=SMTP_POLICY)
    part.set_raw(*SMTP_POLICY.header_store_parse("Content-Type",
                                                 f'text/{subtype}; charset="utf-8"'))
    part.set_raw(*SMTP_POLICY.header_store_parse("Content-Transfer-Encoding",
                                                 "quoted-printable"))
    part.set_payload(_qp_body(content))
    return part


def _set_alternatives(msg: EmailMessage, text: str, html: str, thread: str) -> None:
    """Make ``msg`` multipart/alternative with a text/plain and a text/html part."""
    html_part = _text_part(html, "html")
    html_part["MIME-Version"] = "1.0"
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = f'multipart/alternative; boundary="{_boundary(thread)}"'
    msg.attach(_text_part(text, "plain"))
    msg.attach(html_part)


_BOUNDARY_KEY = secrets.token_bytes(16)


def _boundary(thread: str) -> str:
    """The MIME boundary, in the email package's format, the same for the messages about
    one ticket (so their Content-Type header is parsed and folded once) and unguessable
    from outside. It cannot occur in a part: quoted-printable writes ``=`` as ``=3D``."""
    digest = hmac.new(_BOUNDARY_KEY, thread.encode(), hashlib.sha256).digest()
    return f"==============={int.from_bytes(digest[:8]) % 10**19:019d}=="


_PLAIN_HEADER = re.compile(r"[A-Za-z0-9@<>._+-]+(?: [A-Za-z0-9@<>._+-]+)*")


def _set_header(msg: EmailMessage, name: str, value: str | Address) -> None:
    """``msg[name] = value``, stored unparsed when the text is plain (letters, digits,
    ``@<>._+-``, single spaces) and fits on a line: the email package writes such a value
    as it is, and its parsed header would print the same text and fold to the same line.
    Parsing a header costs more than the rest of the message; ``msg[name]`` still
    parses it when someone reads it."""
    text = str(value)
    if len(name) + 2 + len(text) <= 78 and _PLAIN_HEADER.fullmatch(text):
        msg.set_raw(name, text)
    else:
        msg[name] = value


_FOLDED: dict[tuple[Any, ...], tuple[Any, bytes]] = {}
_NEWLINE = re.compile(r"\r\n|\r|\n")  # email.generator's NLCRE


def _folded(fold_policy: Any, name: str, value: Any) -> bytes:
    """``fold_policy.fold_binary(name, value)``, remembered for a parsed header (the same
    object in many messages, see _CachingHeaderRegistry). Keyed by what folding depends
    on, not by the policy object: the generator clones its policy for every part."""
    if not hasattr(value, "fold"):
        return bytes(fold_policy.fold_binary(name, value))
    key = (id(value), type(fold_policy), fold_policy.linesep, fold_policy.max_line_length,
           fold_policy.utf8, fold_policy.cte_type)
    hit = _FOLDED.get(key)
    if hit is not None and hit[0] is value:
        return hit[1]
    folded = bytes(fold_policy.fold_binary(name, value))
    if len(_FOLDED) >= 4096:
        _FOLDED.clear()
    _FOLDED[key] = (value, folded)
    return folded


class _BytesGenerator(BytesGenerator):
    """BytesGenerator's output with less work: folded headers remembered, and each body
    converted to CRLF lines in one pass rather than two writes per line."""

    # The private attributes _fp and _NL are BytesGenerator's own (typeshed omits them).

    def _write_headers(self, msg: Any) -> None:
        for name, value in msg.raw_items():
            self._fp.write(_folded(self.policy, name, value))  # type: ignore[attr-defined]
        self.write(self._NL)  # type: ignore[attr-defined]

    def _write_lines(self, lines: str) -> None:
        if lines:
            self.write(_NEWLINE.sub(self._NL, lines))  # type: ignore[attr-defined]


def message_bytes(msg: EmailMessage, serialize_policy: Any) -> bytes:
    """``msg.as_bytes(policy=serialize_policy)``, faster: see _alternative_bytes and
    _BytesGenerator."""
    fast = _alternative_bytes(msg, serialize_policy)
    if fast is not None:
        return fast
    out = BytesIO()
    _BytesGenerator(out, mangle_from_=False, policy=serialize_policy).flatten(msg)
    return out.getvalue()


def _ascii_text_part(part: object) -> bool:
    if not isinstance(part, EmailMessage) or part.is_multipart():
        return False
    payload = part.get_payload()
    return isinstance(payload, str) and payload.isascii()


def _alternative_bytes(msg: EmailMessage, serialize_policy: Any) -> bytes | None:
    """What the generator writes for a message as build_message makes it (multipart
    with its boundary set, no preamble or epilogue, parts of ASCII text), without the
    generator's machinery; None for any other message."""
    boundary = msg.get_boundary()
    parts = msg.get_payload()
    if boundary is None or not msg.is_multipart() or msg.preamble is not None \
            or msg.epilogue is not None or not isinstance(parts, list) \
            or not all(_ascii_text_part(part) for part in parts):
        return None
    linesep = serialize_policy.linesep
    newline, delimiter = linesep.encode("ascii"), f"--{boundary}".encode("ascii")

    def headers(message: EmailMessage) -> bytes:
        return b"".join(_folded(serialize_policy, name, value)
                        for name, value in message.raw_items()) + newline

    chunks = [headers(msg), delimiter + newline]
    for index, part in enumerate(parts):
        if index:
            chunks.append(newline + delimiter + newline)
        payload = str(part.get_payload())
        lines = payload.replace("\n", linesep) if "\r" not in payload else \
            _NEWLINE.sub(linesep, payload)
        chunks += [headers(part), lines.encode("ascii")]
    chunks.append(newline + delimiter + b"--" + newline)
    return b"".join(chunks)


def _check_headers(msg: EmailMessage) -> None:
    """Last line of defence: no header value may hold a line break once parsed."""
    for name, raw in msg.raw_items():
        # A plain value (see _set_header) parses to itself: no need to parse it here.
        plain = isinstance(raw, str) and not hasattr(raw, "name") and \
            _PLAIN_HEADER.fullmatch(raw)
        value = raw if plain else msg.policy.header_fetch_parse(name, raw)
        if "\r" in str(value) or "\n" in str(value):
            raise ValueError(f"the {name} header would hold a line break")


def recipient_variables(recipient: EmailRecipient) -> dict[str, Any]:
    display = recipient.name or recipient.address
    return {
        "recipient": SimpleNamespace(first_name=recipient.first_name, display_name=display,
                                     email=recipient.address),
        "greeting_name": recipient.first_name or display,
    }


_ADDRESS_SPECIALS = re.compile(r'[<>()\[\]:;@\\,"]')


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
