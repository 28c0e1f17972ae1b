"""Templates to MIME messages (contract §3). Pure: no database, no sockets.

Templates are compiled once per process (one Jinja environment per Renderer) and the
ticket part of a template's variables is built once per event, not per recipient.
Nothing a ticket contains can reach a header unfolded: every header value built from
ticket or user text passes through ``one_line``, and the email library then encodes it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address, HeaderRegistry
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


class _CachingHeaderRegistry(HeaderRegistry):
    """The email package's header factory, made cheap for a sender of many similar
    messages: CPython builds a new header class for every header it stores, and parses
    every value again although From, Auto-Submitted, the content types and the like are
    the same in every message. Both are cached here; parsed headers are immutable, so
    messages may share them. The messages are byte for byte what ``policy.SMTP`` makes."""

    def __init__(self) -> None:
        super().__init__()
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
        self.slots = SlotRenderer(self.env, self.render)

    # ------------------------------------------------------------------ rendering

    def render(self, template: str, variables: Mapping[str, Any]) -> tuple[str, str]:
        """The (text, html) pair of ``template``; the HTML with its CSS inlined."""
        text = self.env.get_template(f"{template}.txt").render(variables)
        html = self.env.get_template(f"{template}.html").render(variables)
        return text, self.inliner.inline(html)

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
            msg["To"] = to
        if settings.reply_to_email:
            msg["Reply-To"] = settings.reply_to_email
        msg["Date"] = formatdate(now.timestamp() if now else None, usegmt=True)
        msg["Message-ID"] = msg_id
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
        msg.set_content(rendered.text, cte="quoted-printable")
        msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
        return msg


def _check_headers(msg: EmailMessage) -> None:
    """Last line of defence: no header value may hold a line break once parsed."""
    for name, value in msg.items():
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
        label = "internal note" if ctx.comment.is_internal else "comment"
        body = f"{who} added an {label}: {cut(ctx.comment.body, 280)[0]}" if \
            ctx.comment.is_internal else f"{who} added a {label}: {cut(ctx.comment.body, 280)[0]}"
    else:
        body = subject
    return one_line(subject, limit=500), body, ticket_path(ticket.id)
