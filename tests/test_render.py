"""The email itself (contract §3): subjects, parts, headers, links, escaping, templates.

Pure: a Renderer, hand-built contexts, and the bytes parsed back with ``email.parser``
exactly as a receiving server would see them. No database, no socket.
"""

from __future__ import annotations

import email
import json
from dataclasses import replace
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from itsm_notify.compose.render import Renderer, message_id, thread_id
from itsm_notify.config import Settings, load_settings
from itsm_notify.events.audience import EmailRecipient
from itsm_notify.events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import parse_payload

SITE = "https://helpdesk.example.com"
ALICE = User(1, "alice", "alice@example.com", "Alice", "Lopez")
BOB = User(2, "bob", "bob@example.com", "Bob", "Okafor")
USERS = {1: ALICE, 2: BOB}
TICKET = Ticket(id=42, number="TKT-042", title="VPN drops every 10 minutes",
                description="Since this morning the VPN disconnects.", status="open",
                priority="high", requester_id=1, assignee_id=2, project_id=1, due_at=None,
                created_at=None)
TO_ALICE = EmailRecipient("alice@example.com", "Alice Lopez", "Alice", 1)
TO_BOB = EmailRecipient("bob@example.com", "Bob Okafor", "Bob", 2)

PAYLOADS: dict[str, dict[str, Any]] = {
    "ticket_created": {},
    "ticket_assigned": {"assignee_id": 2},
    "status_changed": {"old_status": "open", "new_status": "waiting_on_customer"},
    "comment_added": {"comment_id": 9},
}


def settings(**overrides: Any) -> Settings:
    base = {"site_url": SITE, "default_from_email": "Help Desk <helpdesk@example.com>"}
    return load_settings(base | overrides, environ={}, dotenv_path=None)


def context(event_type: str, ticket: Ticket = TICKET, *, event_id: int = 100,
            comment_body: str = "Please send the VPN log.") -> EventContext:
    raw = json.dumps(PAYLOADS[event_type])
    event = OutboxEvent(id=event_id, event_type=event_type, ticket_id=ticket.id, actor_id=2,
                        payload=raw)
    comment = Comment(9, ticket.id, 2, comment_body, False, None) \
        if event_type == "comment_added" else None
    return EventContext(event=event, payload=parse_payload(event_type, raw), ticket=ticket,
                        users=USERS, project=Project(1, "Network"), comment=comment, manager_ids=())


def compose(renderer: Renderer, ctx: EventContext, recipient: EmailRecipient) -> bytes:
    """The bytes send-pending sends to one recipient of one event."""
    domain = renderer.settings.from_domain
    rendered = renderer.render_event(ctx, recipient)
    return renderer.compose(
        rendered, recipient, event_type_name=ctx.event.event_type,
        ticket_number=ctx.ticket.number, msg_id=message_id(ctx.event.id, recipient.key, domain),
        thread=thread_id(ctx.ticket.id, domain),
        is_thread_start=ctx.event.event_type == "ticket_created")


def on_the_wire(data: bytes) -> EmailMessage:
    """The message as a receiving server parses its bytes."""
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(msg: EmailMessage) -> tuple[str, str]:
    """(text/plain, text/html) of a multipart/alternative message."""
    assert msg.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in msg.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def mail(event_type: str = "ticket_created", recipient: EmailRecipient = TO_ALICE,
         s: Settings | None = None, **ctx_args: Any) -> EmailMessage:
    return on_the_wire(compose(Renderer(s or settings()), context(event_type, **ctx_args),
                               recipient))


# ------------------------------------------------------------------------- subjects


@pytest.mark.parametrize(("event_type", "subject"), [
    ("ticket_created", "New Ticket: VPN drops every 10 minutes (TKT-042)"),
    ("ticket_assigned", "Ticket Assigned: VPN drops every 10 minutes (TKT-042)"),
    ("status_changed", "Ticket Status Changed: VPN drops every 10 minutes → waiting_on_customer"),
    ("comment_added", "New Comment on Ticket: VPN drops every 10 minutes (TKT-042)"),
])
def test_exact_subjects(event_type: str, subject: str) -> None:
    msg = mail(event_type)
    assert msg["Subject"] == subject
    assert msg.get_all("Subject") == [subject]
    assert msg["X-ITSM-Event"] == event_type


def test_non_ascii_subject_is_encoded_and_decodes_back() -> None:
    ticket = _retitled("Drucker kaputt – Büro 3")
    raw = compose(Renderer(settings()), context("status_changed", ticket), TO_ALICE)
    assert raw.isascii(), "headers and parts are 7-bit on the wire"
    msg = on_the_wire(compose(Renderer(settings()), context("status_changed", ticket), TO_ALICE))
    assert msg["Subject"] == "Ticket Status Changed: Drucker kaputt – Büro 3 → waiting_on_customer"


def _retitled(title: str, description: str | None = None) -> Ticket:
    return replace(TICKET, title=title,
                   description=TICKET.description if description is None else description)


# ------------------------------------------------------------------- parts and body


@pytest.mark.parametrize("event_type", sorted(PAYLOADS))
def test_both_parts_greet_by_first_name_and_link_absolutely(event_type: str) -> None:
    text, html = parts(mail(event_type))
    link = f"{SITE}/tickets/42/"
    for body in (text, html):
        assert "Hi Alice," in body
        assert "TKT-042" in body and "VPN drops every 10 minutes" in body
        assert "High" in body  # priority
        assert link in body
    assert f'href="{link}"' in html
    assert "<html" in html and "<html" not in text


def test_body_shows_status_description_and_comment() -> None:
    text, html = parts(mail("status_changed"))
    assert "waiting_on_customer" in text and "waiting_on_customer" in html
    text, html = parts(mail("ticket_created"))
    assert "Since this morning the VPN disconnects." in text
    assert "Since this morning the VPN disconnects." in html
    text, html = parts(mail("comment_added"))
    assert "Please send the VPN log." in text and "Please send the VPN log." in html
    assert "Bob Okafor" in text  # the comment's author


def test_greeting_falls_back_to_the_name_when_no_first_name() -> None:
    ops = EmailRecipient("ops@example.com", "Ops Team")
    text, html = parts(mail("ticket_created", ops))
    assert "Hi Ops Team," in text and "Hi Ops Team," in html
    bare = EmailRecipient("noc@example.com", "")
    text, _ = parts(mail("ticket_created", bare))
    assert "Hi noc@example.com," in text


def test_site_url_with_a_trailing_slash_gives_one_slash() -> None:
    text, html = parts(mail("ticket_created", s=settings(site_url=SITE + "/")))
    assert f"{SITE}/tickets/42/" in text and f"{SITE}//" not in text + html


def test_css_is_inlined_into_style_attributes() -> None:
    _, html = parts(mail("ticket_created"))
    styles = _styles_by_class(html)
    assert "padding: 24px" in styles["card"]          # .card { padding: 24px; ... }
    assert "background-color: #2563eb" in styles["button-cell"]
    assert "font-weight: bold" in styles["button"]


def _styles_by_class(html: str) -> dict[str, str]:
    """class name → the inline style of the first element carrying it."""
    found: dict[str, str] = {}

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            for name in (values.get("class") or "").split():
                found.setdefault(name, values.get("style") or "")

    Collector().feed(html)
    return found


# -------------------------------------------------------------------------- escaping


def test_markup_in_ticket_text_is_escaped_in_html() -> None:
    ticket = _retitled("<script>alert(1)</script>", "<img src=x onerror=alert(2)> & more")
    msg = on_the_wire(compose(Renderer(settings()), context("ticket_created", ticket),
                              TO_ALICE))
    text, html = parts(msg)
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; more" in html
    assert "<script>alert(1)</script>" in text  # plain text shows it as typed
    assert msg["Subject"] == "New Ticket: <script>alert(1)</script> (TKT-042)"


def test_markup_in_a_comment_is_escaped_in_html() -> None:
    msg = on_the_wire(compose(Renderer(settings()),
                              context("comment_added", comment_body="<b>bold</b><script>x"),
                              TO_ALICE))
    _, html = parts(msg)
    assert "&lt;b&gt;bold&lt;/b&gt;&lt;script&gt;x" in html and "<b>bold" not in html


@pytest.mark.parametrize("injection", [
    "Printer\r\nBcc: x@evil.example", "Printer\nBcc: x@evil.example",
    "Printer\rBcc: x@evil.example", "Printer\u2028Bcc: x@evil.example",
    "Printer\x00\r\n\r\nBcc: x@evil.example",
])
def test_a_title_cannot_add_a_header(injection: str) -> None:
    ticket = _retitled(injection)
    data = compose(Renderer(settings()), context("ticket_created", ticket), TO_ALICE)
    msg = email.message_from_bytes(data, policy=policy.default)
    assert msg["Bcc"] is None
    assert len(msg.get_all("Subject") or []) == 1
    assert msg["Subject"] == "New Ticket: Printer Bcc: x@evil.example (TKT-042)"
    assert msg.get_content_type() == "multipart/alternative"  # the body was not split off
    assert sorted(set(msg.keys())) == sorted(msg.keys()), "no header appears twice"


def test_a_name_cannot_add_a_header() -> None:
    evil = EmailRecipient("alice@example.com", "Alice\r\nBcc: x@evil.example", "Alice", 1)
    msg = mail("ticket_created", evil)
    assert msg["Bcc"] is None
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert len(msg.get_all("To") or []) == 1


# --------------------------------------------------------------------------- headers


def test_headers() -> None:
    s = settings(reply_to_email="support@example.com")
    msg = mail("comment_added", s=s)
    assert msg["From"] == "Help Desk <helpdesk@example.com>"
    assert msg["To"] == "Alice Lopez <alice@example.com>"
    assert msg["Reply-To"] == "support@example.com"
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-ITSM-Ticket"] == "TKT-042"
    assert msg["X-ITSM-Event"] == "comment_added"
    thread = "<itsm-notify.ticket-42@example.com>"
    assert msg["In-Reply-To"] == thread and msg["References"] == thread
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@example.com>")
    assert msg["X-Original-To"] is None


def test_no_reply_to_unless_configured() -> None:
    assert mail("ticket_created")["Reply-To"] is None


def test_every_email_about_a_ticket_refers_to_the_same_thread() -> None:
    threads = {(m["References"], m["In-Reply-To"]) for m in
               (mail(kind, event_id=i) for i, kind in enumerate(sorted(PAYLOADS)))}
    thread = "<itsm-notify.ticket-42@example.com>"
    # The opening email starts the thread; the others reply into it.
    assert threads == {(thread, None), (thread, thread)}
    other_ticket = context("ticket_assigned", _ticket_with_id(43))
    msg = on_the_wire(compose(Renderer(settings()), other_ticket, TO_ALICE))
    assert msg["References"] == "<itsm-notify.ticket-43@example.com>"


def _ticket_with_id(ticket_id: int) -> Ticket:
    return replace(TICKET, id=ticket_id, number=f"TKT-{ticket_id:03d}")


def test_message_id_is_stable_per_event_and_recipient() -> None:
    renderer = Renderer(settings())
    first = on_the_wire(compose(renderer, context("ticket_created"), TO_ALICE))
    again = on_the_wire(compose(Renderer(settings()), context("ticket_created"), TO_ALICE))
    to_bob = on_the_wire(compose(renderer, context("ticket_created"), TO_BOB))
    next_event = on_the_wire(compose(renderer, context("ticket_created", event_id=101),
                                     TO_ALICE))
    assert first["Message-ID"] == again["Message-ID"]
    assert len({first["Message-ID"], to_bob["Message-ID"], next_event["Message-ID"]}) == 3
    # The address compares case-insensitively, like the de-duplication.
    shouting = EmailRecipient("ALICE@Example.com", "Alice Lopez", "Alice", 1)
    assert on_the_wire(compose(renderer, context("ticket_created"), shouting))["Message-ID"] \
        == first["Message-ID"]


def test_debug_mode_redirects_to_the_development_address() -> None:
    s = settings(debug=True, development_email="dev@example.com")
    msg = mail("ticket_created", s=s)
    assert msg["To"] == "dev@example.com"
    assert msg["X-Original-To"] == "Alice Lopez <alice@example.com>"
    assert len(msg.get_all("To") or []) == 1
    assert msg["Cc"] is None and msg["Bcc"] is None


def test_internal_comments_refuse_to_render() -> None:
    internal = replace(context("comment_added"),
                       comment=Comment(9, 42, 2, "internal only", True, None))
    with pytest.raises(ValueError, match="never emailed"):
        Renderer(settings()).render_event(internal, TO_ALICE)


# ----------------------------------------------------------------- template override


def test_a_template_folder_overrides_single_templates(tmp_path: Path) -> None:
    folder = tmp_path / "my-templates" / "emails"
    folder.mkdir(parents=True)
    (folder / "ticket_created.html").write_text(
        '{% extends "base.html" %}{% block content %}'
        '<p class="custom">OVERRIDDEN {{ ticket.title }}</p>{% endblock %}')
    (folder / "ticket_created.txt").write_text("CUSTOM TEXT for {{ ticket.number }}\n")
    s = settings(template_dir=str(tmp_path / "my-templates"))
    text, html = parts(mail("ticket_created", s=s, ticket=_retitled("<i>x</i>")))
    assert text.strip() == "CUSTOM TEXT for TKT-042"
    assert "OVERRIDDEN &lt;i&gt;x&lt;/i&gt;" in html  # still autoescaped
    assert "Hi Alice," in html  # the packaged base.html around it
    assert "style=" in html  # and CSS still inlined
    # The other templates still come from the package.
    text, html = parts(mail("status_changed", s=s))
    assert "CUSTOM" not in text and "Status changed from open to waiting_on_customer" in text
    assert "OVERRIDDEN" not in html and "Status update on TKT-042" in html
