"""Templates to MIME messages (contract §3). Pure: no database, no sockets.

Templates are compiled once per process (one Jinja environment per Renderer) and the
ticket part of a template's variables is built once per event, not per recipient.
Nothing a ticket contains can reach a header unfolded: every header value built from
ticket or user text passes through ``one_line``, and the email library then encodes it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import css_inline
from jinja2 import (
    ChoiceLoader,
    FileSystemLoader,
    StrictUndefined,
    Template,
    select_autoescape,
)

from ..config import Settings, ticket_path
from ..events.audience import EmailRecipient
from ..events.model import EventContext
from ..events.types import event_type
from ..inbound.tokens import make_reply_address
from .headers import (
    SMTP_POLICY,
    SMTPUTF8_POLICY,
    RawField,
    _date,
    _fold_all,
    _refuse_line_breaks,
    fold_header,
    header_address,
    needs_smtputf8,
    one_line,
    safe_text,
)
from .i18n import Language, Languages, template_languages
from .inline import StructureInliner
from .mime import (
    _BOUNDARY_PLACEHOLDER,
    _HTML_PART_HEAD,
    _MULTIPART_HEAD,
    _TEXT_PART_HEAD,
    _boundary,
    _qp_part,
    body_of,
)
from .present import cut
from .slots import SlotRenderer
from .translated import TranslatedEnvironment


def packaged_template_dir() -> Path:
    """The built-in templates: inside the installed package (wheel), or the checkout's
    top-level ``templates/`` folder (editable install, source tree)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "templates", package.parents[1] / "templates"):
        if (candidate / "emails" / "base.html").is_file():
            return candidate
    raise FileNotFoundError("itsm-notify's templates folder is missing from the installation")


def message_id(event_id: int | str, recipient_key: str, domain: str) -> str:
    """The same email (event, recipient) keeps the same Message-ID when retried."""
    return f"<itsm-notify.{event_id}.{address_digest(recipient_key)}@{domain}>"


@functools.lru_cache(maxsize=4096)
def address_digest(recipient_key: str) -> str:
    """The 16-hex digest of a recipient's address that names it in a Message-ID and in a
    VERP return path (never the address itself)."""
    return hashlib.sha256(recipient_key.encode()).hexdigest()[:16]


def thread_id(ticket_id: int, domain: str) -> str:
    """Every email about one ticket refers to this id, so mail clients thread them."""
    return f"<itsm-notify.ticket-{ticket_id}@{domain}>"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class Renderer:
    """Renders the email templates; one per process, each language's templates compiled
    once (``_LanguageTemplates``)."""

    def __init__(self, settings: Settings, languages: Languages | None = None, *,
                 compile_words: bool = True) -> None:
        """``compile_words``: translate the templates' words when they are compiled (the
        fast path); False: at each rendering, as Jinja's i18n extension does (the plain
        path, which tests/test_fast_paths.py holds the fast one to)."""
        self.settings = settings
        self.compile_words = compile_words
        self.sender_address = sender_address(settings)
        self.languages = languages or Languages(
            settings.default_locale, settings.time_zone,
            also=template_languages(settings.template_dir))
        # One inliner for every language: a page's structure holds its words, so the
        # languages' structures never meet.
        self.structures = StructureInliner(css_inline.CSSInliner(keep_at_rules=True),
                                           remembered=1024)
        self._by_language: dict[str, _LanguageTemplates] = {}
        self._lock = threading.Lock()

    def language(self, locale: str | None = None, zone: str | None = None) -> Language:
        """The language and time zone of a reader (the defaults when both are None)."""
        return self.languages.get(locale, zone)

    def language_of(self, recipient: EmailRecipient) -> Language:
        return self.languages.get(recipient.locale, recipient.time_zone)

    def templates_for(self, language: Language) -> _LanguageTemplates:
        found = self._by_language.get(language.code)
        if found is None:
            with self._lock:
                found = self._by_language.get(language.code)
                if found is None:
                    found = self._by_language[language.code] = _LanguageTemplates(
                        language, self.settings.template_dir, self.structures,
                        compile_words=self.compile_words)
        return found

    # ------------------------------------------------------------------ rendering

    def render(self, template: str, variables: Mapping[str, Any],
               language: Language | None = None) -> tuple[str, str]:
        """The (text, html) pair of ``template`` in ``language`` (the default one when
        None); the HTML with its CSS inlined."""
        return self.templates_for(language or self.language()).render(template, variables)

    def event_variables(self, ctx: EventContext, language: Language | None = None
                        ) -> dict[str, Any]:
        """The variables an event's templates share across all its recipients who read
        ``language``: the site's, and its event type's (``EventType.variables``)."""
        language = language or self.language()
        return {"site_name": self.settings.site_name, "site_url": self.settings.site_url,
                "event_type": ctx.event.event_type, "language": language.code,
                **event_type(ctx.event.event_type).variables(ctx, self.settings, language)}

    def subject(self, ctx: EventContext, language: Language | None = None) -> str:
        """The event's subject in ``language`` (the default one when None), on one line
        (made header-safe when composed), after its ticket's tracking tag when the
        source has one (a reply then joins the ticket)."""
        spec = event_type(ctx.event.event_type)
        tag = ctx.ticket.tag if spec.about_one_ticket(ctx) else ""
        return one_line(tag + spec.subject(ctx, language or self.language()), limit=300)

    def render_event(self, ctx: EventContext, recipient: EmailRecipient,
                     shared: Mapping[str, Any] | None = None,
                     unsubscribe_url: str | None = None,
                     subject: str | None = None, ticket_url: str | None = None,
                     alone: bool = False) -> RenderedEmail:
        """One event's email for one recipient, in their language. Pass ``shared`` (from
        ``event_variables``) and ``subject``, in the recipient's language, when
        rendering several recipients of one event; ``ticket_url``: the ticket's link for
        this recipient (the source's: the requester's own page, or the staff's), else
        the staff's. ``alone``: no other recipient of the event reads it in this
        language (with this shape of link): rendered directly, since the slots would
        save nothing for one email."""
        if ctx.comment is not None and ctx.comment.is_internal and not recipient.is_staff:
            # Belt and braces: the rules never email internal comments outside staff.
            raise ValueError("internal comments are never emailed outside staff")
        personal = {**recipient_variables(recipient), "unsubscribe_url": unsubscribe_url,
                    "ticket_url": ticket_url or ctx.ticket.links.get("staff")
                    or self.settings.ticket_url(ctx.ticket.id)}
        template = event_type(ctx.event.event_type).template
        language = self.language_of(recipient)
        templates = self.templates_for(language)
        if shared and not alone:  # rendered once for all the event's readers (slots.py)
            text, html = templates.slots.render(template, shared, personal)
        elif shared:
            text, html = templates.render(template, {**shared, **personal})
        else:
            text, html = templates.render(template,
                                          {**self.event_variables(ctx, language), **personal})
        return RenderedEmail(subject=subject or self.subject(ctx, language), text=text,
                             html=html)

    # ------------------------------------------------------------------ messages

    def header_fields(self, subject: str, recipient: EmailRecipient, *, event_type_name: str,
                      ticket_number: str | None, msg_id: str, thread: str | None,
                      is_thread_start: bool = False, unsubscribe_url: str | None = None,
                      now: datetime | None = None, reply_to: str | None = None,
                      personal_reply_to: Address | None = None
                      ) -> list[tuple[str, str | Address]]:
        """The contract's headers of one email, in order; the MIME ones follow them.
        ``reply_to``: the team's own address, shared by an event's recipients;
        ``personal_reply_to``: this recipient's own Reply-To (``reply_to_for``), instead
        of either."""
        return [*self._shared_fields(subject, event_type_name=event_type_name,
                                     ticket_number=ticket_number, thread=thread,
                                     is_thread_start=is_thread_start, now=now,
                                     reply_to=reply_to,
                                     shared_reply_to=personal_reply_to is None),
                *self._personal_fields(recipient, msg_id, unsubscribe_url, personal_reply_to)]

    def reply_to_for(self, ticket_id: int | None, user_id: int | None) -> Address | None:
        """The Reply-To of one ticket's email to one user when REPLY_TO_EMAIL and
        SECRET_KEY are both set: REPLY_TO_EMAIL with a signed plus-tag naming the
        ticket and the user (``support+42.7.<mac>@...``), so a reply finds its ticket
        even when the client drops In-Reply-To. None (the shared Reply-To, or none) for
        mail about no one ticket, to an address without an account, or when the tagged
        address would pass the 64 characters a local part may have."""
        settings = self.settings
        if not (settings.reply_to_email and settings.secret_key) or ticket_id is None \
                or user_id is None:
            return None
        name, address = getaddresses([settings.reply_to_email])[0]
        try:
            tagged = make_reply_address(settings.secret_key, address, ticket_id, user_id)
        except ValueError:
            return None
        local, _, domain = tagged.rpartition("@")
        return Address(name, local, domain)

    def _shared_fields(self, subject: str, *, event_type_name: str, ticket_number: str | None,
                       thread: str | None, is_thread_start: bool, now: datetime | None,
                       reply_to: str | None = None, shared_reply_to: bool = True
                       ) -> tuple[tuple[str, str], ...]:
        """The headers every recipient of an email gets alike: they come first, so that
        compose writes them once for all of an event's recipients."""
        settings = self.settings
        fields = [("Subject", safe_text("Subject", subject)),
                  ("From", settings.default_from_email)]
        if shared_reply_to and (reply_to or settings.reply_to_email):  # the team's own first
            fields.append(("Reply-To", reply_to or settings.reply_to_email or ""))
        fields.append(("Date", _date(int(now.timestamp() if now else time.time()))))
        if thread and not is_thread_start:
            fields.append(("In-Reply-To", thread))
        if thread:
            fields.append(("References", thread))
        fields += [("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All")]
        if ticket_number:
            fields.append(("X-ITSM-Ticket", safe_text("X-ITSM-Ticket", ticket_number)))
        fields.append(("X-ITSM-Event", event_type_name))
        return tuple(fields)

    def _personal_fields(self, recipient: EmailRecipient, msg_id: str,
                         unsubscribe_url: str | None, reply_to: Address | None = None
                         ) -> list[tuple[str, str | Address]]:
        to = header_address(recipient.name, recipient.address)
        fields: list[tuple[str, str | Address]] = []
        if reply_to is not None:
            fields.append(("Reply-To", reply_to))
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
                      now: datetime | None = None, reply_to: str | None = None,
                      personal_reply_to: Address | None = None) -> EmailMessage:
        """A multipart/alternative message with the contract's headers, built the email
        package's own way. ``compose`` gives its bytes faster."""
        msg = EmailMessage(policy=SMTP_POLICY)
        for name, value in self.header_fields(
                rendered.subject, recipient, event_type_name=event_type_name,
                ticket_number=ticket_number, msg_id=msg_id, thread=thread,
                is_thread_start=is_thread_start, unsubscribe_url=unsubscribe_url, now=now,
                reply_to=reply_to, personal_reply_to=personal_reply_to):
            if isinstance(value, RawField):
                msg.set_raw(name, value)  # in wire form already: never re-parsed
            else:
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
                unsubscribe_url: str | None = None, now: datetime | None = None,
                reply_to: str | None = None,
                personal_reply_to: Address | None = None) -> bytes:
        """The message ``build_message`` makes, as the SMTP transport sends it: its
        ``as_bytes`` under policy.SMTP, or under SMTPUTF8 when the envelope needs it
        (a non-ASCII address: then it is built that way, a rare case).

        The common case skips the email package's message objects, which cost more than
        rendering the templates: each header field is folded by the policy on its own (as
        the generator does) and remembered, since most recur from email to email (the
        fields an event's recipients share, a user's To...); each body line's
        quoted-printable encoding is remembered too (see ``_qp_part``; a page filled
        from an inlined structure has the structure's encoding, ``body_of``); and the MIME
        structure around them is the fixed one ``set_content`` and ``add_alternative``
        make. tests/test_fast_paths.py holds the two byte for byte against each other."""
        if needs_smtputf8(self.sender_address, self.settings.redirect_to or recipient.address):
            return self.build_message(
                rendered, recipient, event_type_name=event_type_name,
                ticket_number=ticket_number, msg_id=msg_id, thread=thread,
                is_thread_start=is_thread_start, unsubscribe_url=unsubscribe_url, now=now,
                reply_to=reply_to, personal_reply_to=personal_reply_to,
            ).as_bytes(policy=SMTPUTF8_POLICY)
        boundary = _boundary(thread or msg_id).encode("ascii")
        return b"".join([
            _fold_all(self._shared_fields(rendered.subject, event_type_name=event_type_name,
                                          ticket_number=ticket_number, thread=thread,
                                          is_thread_start=is_thread_start, now=now,
                                          reply_to=reply_to,
                                          shared_reply_to=personal_reply_to is None)),
            *(fold_header(name, value) for name, value in
              self._personal_fields(recipient, msg_id, unsubscribe_url, personal_reply_to)),
            _MULTIPART_HEAD.replace(_BOUNDARY_PLACEHOLDER, boundary), b"\r\n",
            b"--", boundary, b"\r\n", _TEXT_PART_HEAD, _qp_part(rendered.text),
            b"\r\n--", boundary, b"\r\n", _HTML_PART_HEAD, body_of(rendered.html),
            b"\r\n--", boundary, b"--\r\n"])


def recipient_variables(recipient: EmailRecipient) -> dict[str, Any]:
    display = recipient.name or recipient.address
    return {
        "recipient": SimpleNamespace(first_name=recipient.first_name, display_name=display,
                                     email=recipient.address),
        "greeting_name": recipient.first_name or display,
    }


def sender_address(settings: Settings) -> str:
    """The envelope sender: the bare address of DEFAULT_FROM_EMAIL."""
    return getaddresses([settings.default_from_email])[0][1]


def in_app_text(ctx: EventContext, subject: str, language: Language
                ) -> tuple[str, str, str]:
    """(title, body, relative url) of an in-app notification row: the subject, the event
    type's body (``EventType.in_app``), the ticket's path; in the user's language."""
    make_body = event_type(ctx.event.event_type).in_app
    body = make_body(ctx, language) if make_body is not None else subject
    return one_line(subject, limit=500), cut(body, 400)[0], \
        ctx.ticket.links.get("in_app") or ticket_path(ctx.ticket.id)


class _LanguageTemplates:
    """One language's templates: a Jinja environment with its catalog installed and its
    override folders first (``emails/<code>/``, then ``emails/<language>/`` for a
    regional code), compiled once; and its slot renderer."""

    def __init__(self, language: Language, override_dir: str | None,
                 structures: StructureInliner, *, compile_words: bool = True) -> None:
        loaders = []
        if override_dir:
            emails = Path(override_dir) / "emails"
            for code in dict.fromkeys((language.code, language.code.split("-")[0])):
                loaders.append(FileSystemLoader(str(emails / code)))
            loaders += [FileSystemLoader(str(emails)), FileSystemLoader(override_dir)]
        loaders.append(FileSystemLoader(str(packaged_template_dir() / "emails")))
        self.structures = structures
        self.env = TranslatedEnvironment(
            language, compile_words=compile_words,
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=StrictUndefined,
            auto_reload=False,  # compiled once per process: no stat() per message
            finalize=structures.finalize,  # values become markers while inlining
        )
        self._templates: dict[str, Template] = {}
        self.slots = SlotRenderer(self.env, self.render)

    def render(self, template: str, variables: Mapping[str, Any]) -> tuple[str, str]:
        text = self._template(f"{template}.txt").render(variables)
        return text, self.structures.render(self._template(f"{template}.html"), variables)

    def _template(self, name: str) -> Template:
        """A compiled template, kept here: Jinja's own cache costs a lock and a lookup
        that show in a profile of thousands of messages."""
        found = self._templates.get(name)
        if found is None:
            found = self._templates[name] = self.env.get_template(name)
        return found
