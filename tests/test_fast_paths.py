"""The fast paths of send-pending (issue 5) give exactly what the plain paths give.

* ``render_event(ctx, recipient, shared)`` renders and inlines an event's templates once
  and fills in each recipient (compose/slots.py); it must equal rendering that recipient
  directly, for any name, first name and unsubscribe link.
* ``compose`` writes the message's bytes from remembered header fields and body lines:
  they must equal what the email package's ``build_message`` (``msg[name] = value``,
  ``set_content``, ``add_alternative``) and ``as_bytes`` make.
* The templates' words translated when they are compiled (compose/translated.py) give
  what translating them at each rendering, as Jinja's i18n extension does, gives: in
  every language, for any ticket text and reader.
* The delivery log's cheaper rollover test still rotates at its size.

Pure: no database, no socket.
"""

from __future__ import annotations

import email
import json
import logging
from dataclasses import replace
from datetime import datetime
from email import policy, quoprimime
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itsm_notify.compose import headers as header_module
from itsm_notify.compose import inline, mime
from itsm_notify.compose import render as render_module
from itsm_notify.compose.i18n import available_languages
from itsm_notify.compose.render import RenderedEmail, Renderer
from itsm_notify.config import Settings, load_settings
from itsm_notify.events.audience import EmailRecipient
from itsm_notify.events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import parse_payload

SITE = "https://helpdesk.example.com"
USERS = {1: User(1, "alice", "alice@example.com", "Alice", "Lopez"),
         2: User(2, "bob", "bob@example.com", "Bob", "O'Brien")}
TICKET = Ticket(id=42, number="TKT-042", title="VPN drops every 10 minutes",
                description="Since this morning the VPN disconnects.\nTwice an hour.",
                status="open", priority="high", requester_id=1, assignee_id=2, project_id=1,
                due_at=None, created_at=None)
PAYLOADS: dict[str, dict[str, Any]] = {
    "ticket_created": {}, "ticket_assigned": {"assignee_id": 2},
    "status_changed": {"old_status": "open", "new_status": "waiting"},
    "comment_added": {"comment_id": 9}}
NOW = datetime(2026, 3, 4, 5, 6, 7)

names = st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z0-9 ._+@<>-]{0,60}", fullmatch=True))
addresses = st.sampled_from(["alice@example.com", "o'brien+tag@example.org",
                             "zoë@exämple.com", "x@localhost"])
links = st.one_of(st.none(), st.just("https://x.example/?a=1&b=2"),
                  st.from_regex(r"https://helpdesk\.example\.com/u/[A-Za-z0-9._-]{1,30}/",
                                fullmatch=True))


def make_settings(**overrides: Any) -> Settings:
    base = {"site_url": SITE, "default_from_email": "Help Desk <helpdesk@example.com>"}
    return load_settings(base | overrides, environ={}, dotenv_path=None)


RENDERER = Renderer(make_settings())


def context(event_type: str) -> EventContext:
    raw = json.dumps(PAYLOADS[event_type])
    event = OutboxEvent(id=7, event_type=event_type, ticket_id=TICKET.id, actor_id=2,
                        payload=raw)
    comment = Comment(9, TICKET.id, 2, "See <the> log & retry", False, None) \
        if event_type == "comment_added" else None
    return EventContext(event=event, payload=parse_payload(event_type, raw), ticket=TICKET,
                        users=USERS, project=Project(1, "Network"), comment=comment, manager_ids=())


# ------------------------------------------------------------ words compiled in

PLAIN_WORDS = Renderer(make_settings(), compile_words=False)
DIGEST = {"recipient": {"user_id": 2}, "ticket_ids": [TICKET.id]}


@settings(max_examples=120, deadline=None)
@given(event_type=st.sampled_from([*sorted(PAYLOADS), "overdue"]),
       language=st.sampled_from(available_languages()), title=names, first=names,
       total=st.integers(1, 150), link=links)
def test_words_compiled_in_equal_words_translated_at_rendering(
        event_type: str, language: str, title: str, first: str, total: int,
        link: str | None) -> None:
    ticket = replace(TICKET, title=title, due_at=NOW)
    if event_type == "overdue":
        raw = json.dumps({**DIGEST, "total": total})
        ctx = EventContext(event=OutboxEvent(8, "overdue", None, None, raw, created_at=NOW),
                           payload=parse_payload("overdue", raw), ticket=ticket,
                           users=USERS, manager_ids=())
    else:
        ctx = replace(context(event_type), ticket=ticket)
    reader = EmailRecipient("bob@example.com", "Bob", first, 2, locale=language)
    compiled = RENDERER.render_event(ctx, reader, unsubscribe_url=link)
    assert compiled == PLAIN_WORDS.render_event(ctx, reader, unsubscribe_url=link)
    assert RENDERER.language_of(reader).code == language


OVERRIDE_SENTENCES = (
    '{{ _("%(n)s, again %(n)s", n=ticket.number) }}',          # a value used twice
    '{{ _("only %(a)s", a=ticket.number, b=ticket.title) }}',  # a value never used
    '{{ _("100%% of %(t)s", t=ticket.title) }}',               # a literal percent
    '{{ _("<b>%(t)s</b>", t=ticket.title)|upper }}',           # a sentence in an expression
    '{{ _("%(c)d tickets", c=ticket.id) }}',                   # another conversion
    '{{ _("%(t)s", t=ticket.title) }} {{ _("%(t)r", t=ticket.title) }}',
    '{{ _("Hi %(name)s, <em>%(t)s</em>", name=greeting_name, t=ticket.title) }}',
)


@pytest.mark.parametrize("sentence", OVERRIDE_SENTENCES)
def test_an_override_templates_sentences_compile_to_what_they_render(
        tmp_path: Path, sentence: str) -> None:
    """An operator's override templates hold sentences of any shape: those the compiler
    cannot splice are left to ``%`` at rendering; every one renders as the plain path
    renders it, a hostile title included."""
    emails = tmp_path / "emails"
    emails.mkdir()
    (emails / "ticket_created.txt").write_text(sentence + "\n")
    (emails / "ticket_created.html").write_text(f"<html><body><p>{sentence}</p></body></html>")
    settings = make_settings(template_dir=str(tmp_path))
    ctx = replace(context("ticket_created"),
                  ticket=replace(TICKET, title="<script>&\"'%s 100%"))
    reader = EmailRecipient("bob@example.com", "Bob", "B<o>b", 2)
    compiled = Renderer(settings).render_event(ctx, reader)
    assert compiled == Renderer(settings, compile_words=False).render_event(ctx, reader)
    assert "<script>" not in compiled.html


def test_a_stray_percent_in_an_override_fails_alike_on_both_paths(tmp_path: Path) -> None:
    emails = tmp_path / "emails"
    emails.mkdir()
    sentence = '{{ _("50 % off %(t)s", t=ticket.title) }}'
    (emails / "ticket_created.txt").write_text(sentence)
    (emails / "ticket_created.html").write_text(sentence)
    settings = make_settings(template_dir=str(tmp_path))
    errors = []
    for compile_words in (True, False):
        with pytest.raises(TypeError) as raised:  # "% o": an octal conversion of the dict
            Renderer(settings, compile_words=compile_words).render_event(
                context("ticket_created"), EmailRecipient("bob@example.com", "Bob", "Bob", 2))
        errors.append(str(raised.value))
    assert errors[0] == errors[1]


# ------------------------------------------------------------ render once, fill in


@settings(max_examples=150, deadline=None)
@given(event_type=st.sampled_from(sorted(PAYLOADS)), name=names, first=names,
       address=addresses, link=links)
def test_filled_rendering_equals_direct_rendering(event_type: str, name: str, first: str,
                                                  address: str, link: str | None) -> None:
    ctx = context(event_type)
    shared = RENDERER.event_variables(ctx)
    recipient = EmailRecipient(address, name, first, 3)
    for _ in range(2):  # the second time comes from the event's cached rendering
        fast = RENDERER.render_event(ctx, recipient, shared, unsubscribe_url=link)
        assert fast == RENDERER.render_event(ctx, recipient, unsubscribe_url=link)
    assert not RENDERER.templates_for(RENDERER.language()).slots._broken


def test_one_event_is_rendered_once_for_all_its_recipients() -> None:
    renderer = Renderer(make_settings())
    ctx = context("ticket_created")
    shared = renderer.event_variables(ctx)
    calls: list[str] = []
    slots = renderer.templates_for(renderer.language()).slots
    render_directly = slots.direct
    with mock.patch.object(slots, "direct", lambda name, variables: (
            calls.append(name), render_directly(name, variables))[1]):
        people = [EmailRecipient(f"p{i}@example.com", f"Person {i}", f"P{i}", i)
                  for i in range(10)]
        for person in people:
            renderer.render_event(ctx, person, shared,
                                  unsubscribe_url=f"{SITE}/u/t{person.user_id}/")
        # once with slots, once more for the one-time check against direct rendering
        assert len(calls) == 2
        fast = renderer.render_event(ctx, people[4], shared, unsubscribe_url=f"{SITE}/u/t4/")
    assert fast == renderer.render_event(ctx, people[4], unsubscribe_url=f"{SITE}/u/t4/")
    assert "Hi P4," in fast.text and f"{SITE}/u/t4/" in fast.html


def test_a_rendering_is_cut_at_its_slots_and_nowhere_else() -> None:
    from itsm_notify.compose.slots import _cut

    o = "itsmabcdefs"
    cut = _cut(f"Hi {o}0e, see {o}1e{o}x and {o}e and {o}", o)
    assert cut.pieces == ("Hi ", 0, ", see ", 1, f"{o}x and {o}e and {o}")
    assert cut.fill(["Bob", "<link>"]) == f"Hi Bob, see <link>{o}x and {o}e and {o}"


def test_a_template_that_transforms_a_recipient_value_renders_directly(tmp_path: Path) -> None:
    emails = tmp_path / "emails"
    emails.mkdir()
    (emails / "ticket_created.txt").write_text("Hello {{ greeting_name|upper }}!\n")
    (emails / "ticket_created.html").write_text(
        '<html><body><p title="{{ recipient.email }}">{{ greeting_name[:3] }}</p></body>'
        '</html>')
    renderer = Renderer(make_settings(template_dir=str(tmp_path)))
    ctx = context("ticket_created")
    shared = renderer.event_variables(ctx)
    for first in ("Alice", "Bob"):
        recipient = EmailRecipient(f"{first.lower()}@example.com", first, first, 1)
        fast = renderer.render_event(ctx, recipient, shared)
        assert fast.text == f"Hello {first.upper()}!"
        assert f">{first[:3]}</p>" in fast.html
        assert fast == renderer.render_event(ctx, recipient)
    slots = renderer.templates_for(renderer.language()).slots
    assert list(slots._plain.values()) == [False]  # checked once, never slotted


# ------------------------------------------------------------------- the MIME bytes

msg_ids = st.sampled_from(["<m.1@example.com>", "<itsm-notify.7.0123456789abcdef@example.com>",
                           "<itsm-notify.7.0123456789abcdef@" + "sub." * 16 + "example.com>"])


def headers(link: str | None, msg_id: str = "<m.1@example.com>", *, thread_start: bool = False,
            ticket: str | None = "TKT-042") -> dict[str, Any]:
    return {"event_type_name": "ticket_created", "ticket_number": ticket, "msg_id": msg_id,
            "thread": "<t.42@example.com>", "is_thread_start": thread_start,
            "unsubscribe_url": link, "now": NOW}


def _stdlib_policy() -> Any:
    """policy.SMTP with the email package's own header factory (no cached classes), and
    List-Unsubscribe never made encoded words (header_module.ListUrlHeader)."""
    registry = HeaderRegistry()
    registry.map_to_type("list-unsubscribe", header_module.ListUrlHeader)
    return policy.SMTP.clone(header_factory=registry)


def wanted(renderer: Renderer, rendered: RenderedEmail, recipient: EmailRecipient,
           fields: dict[str, Any]) -> bytes:
    """The same message built and serialized by the email package itself, under a policy
    of its own (not the one compose's caches use)."""
    envelope = renderer.settings.redirect_to or recipient.address
    stdlib = _stdlib_policy()
    with mock.patch.object(render_module, "SMTP_POLICY", stdlib):
        message = renderer.build_message(rendered, recipient, **fields)
    return message.as_bytes(policy=stdlib.clone(utf8=not envelope.isascii()))


REPLYING = Renderer(make_settings(reply_to_email="Support <support@example.com>"))
REDIRECTING = Renderer(make_settings(debug=True, development_email="dev@example.com"))
TAGGING = Renderer(make_settings(reply_to_email="IT Support <support@example.com>",
                                 secret_key="fast-paths"))  # a signed Reply-To per user


@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=120), text=st.text(max_size=600), html=st.text(max_size=600),
       name=names, address=addresses, link=links, msg_id=msg_ids,
       renderer=st.sampled_from([RENDERER, REPLYING, REDIRECTING, TAGGING]),
       thread_start=st.booleans(), ticket=st.sampled_from([None, "TKT-042", "T" * 90]))
def test_composed_bytes_equal_the_email_packages(subject: str, text: str, html: str, name: str,
                                                 address: str, link: str | None, msg_id: str,
                                                 renderer: Renderer, thread_start: bool,
                                                 ticket: str | None) -> None:
    rendered = RenderedEmail(subject or "s", text, html)
    recipient = EmailRecipient(address, name, "", 1)
    fields = headers(link, msg_id, thread_start=thread_start, ticket=ticket)
    fields["personal_reply_to"] = renderer.reply_to_for(42, recipient.user_id)
    expected = wanted(renderer, rendered, recipient, fields)
    for _ in range(2):  # the second time from the caches
        assert renderer.compose(rendered, recipient, **fields) == expected


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(["Subject", "X-ITSM-Ticket", "X-ITSM-Event", "Auto-Submitted",
                             "List-Unsubscribe", "List-Unsubscribe-Post"]),
       value=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
                     max_size=90) | st.sampled_from(["Re: =?utf-8?q?x?=", "a  b", " a", "a ",
                                                     "[#T-1] (x) \"q\" <a@b> \\ ;,:"]))
def test_header_fields_written_unparsed_are_what_the_policy_writes(name: str,
                                                                    value: str) -> None:
    """Unstructured fields (and List-Unsubscribe, which is not written that way) with any
    printable ASCII: fold_header's unparsed line is the policy's, or both refuse."""
    try:
        expected: bytes | type[Exception] = header_module._fold(name, value)
    except Exception as exc:  # a value the policy refuses must be refused alike
        expected = type(exc)
    try:
        written: bytes | type[Exception] = header_module.fold_header(name, value)
    except Exception as exc:
        written = type(exc)
    assert written == expected


@settings(max_examples=500, deadline=None)
@given(line=st.binary(max_size=100).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
       | st.text(st.sampled_from(list("ab =~\t")), max_size=90).map(str.encode)
       | st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="="),
                 max_size=82).map(str.encode)  # mostly lines left as they are
       | st.sampled_from([b"", b"x" * 78, b"x" * 79, b"x" * 77 + b" ", b"a\t", b"=", b"\x7f"]))
def test_a_line_left_as_it_is_is_what_the_encoder_writes(line: bytes) -> None:
    """The lines _qp_line leaves alone (no encoder call) encode to themselves."""
    encoded = quoprimime.body_encode(line.decode("latin-1"), 78).replace("\n", "\r\n")
    assert mime._qp_line.__wrapped__(line) == encoded.encode("ascii")


@settings(max_examples=1500, deadline=None)
@given(line=st.binary(max_size=400).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
       | st.text(st.sampled_from(list("ab =\t\xe9\x7f.")), max_size=400).map(str.encode)
       | st.lists(st.sampled_from([b'<a href="https://x.example/?a=1&amp;b=2" style="c: #2;">',
                                   b"x" * 75, b"=", b" ", b"\t", b"\xc3\xa9", b"ab", b"==",
                                   b"\x00", b"\x85", b"\x0b"]), max_size=30).map(b"".join))
def test_the_line_encoder_is_the_email_packages(line: bytes) -> None:
    """_qp_encode (escapes by replace, the package's cutting on bytes) writes what
    quoprimime.body_encode writes, soft breaks and escaped trailing white space alike."""
    encoded = quoprimime.body_encode(line.decode("latin-1"), 78).replace("\n", "\r\n")
    assert mime._qp_encode(line) == encoded.encode("ascii")


page_text = st.text(st.sampled_from(list("ab =\t\r\n\xe9<>&")), max_size=120) \
    | st.sampled_from(["", "\n", "\r\n", "\r", "x" * 80, "<td style=\"color: #fff\">"])


@settings(max_examples=800, deadline=None)
@given(texts=st.lists(page_text, min_size=1, max_size=8),
       values=st.lists(st.text(st.sampled_from(list("ab =\t\r\n\xe9&\"")), max_size=90),
                       min_size=1, max_size=4),
       holes=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=7))
def test_a_page_encoded_from_its_structure_is_the_page_encoded_whole(
        texts: list[str], values: list[str], holes: list[tuple[int, bool]]) -> None:
    """EncodedPage (the structure's lines without a value encoded once) writes what
    _qp_part writes for the filled page, or declines (None)."""
    escapes = (inline.escape_text, inline.escape_attribute)
    pieces: list[Any] = [texts[0]]
    for (index, attribute), text in zip(holes, [*texts[1:], *[""] * len(holes)][:len(holes)],
                                        strict=True):
        pieces += [(index % len(values), escapes[attribute]), text]
    page = inline._Inlined(tuple(pieces)).fill(values)
    encoded = page.quoted_printable()
    if all(values) and not any("\r" in v or "\n" in v for v in values):
        assert encoded is not None
    assert encoded is None or encoded == mime._qp_part(page)
    assert mime.body_of(page) == mime._qp_part(page) == mime.body_of(str(page))


@settings(max_examples=60, deadline=None)
@given(event_type=st.sampled_from(sorted(PAYLOADS)), title=names, first=names, link=links)
def test_a_rendered_page_composes_as_the_email_package_writes_it(
        event_type: str, title: str, first: str, link: str | None) -> None:
    """An email rendered directly (its HTML a page filled from an inlined structure,
    encoded from the structure's) is the message the email package builds from it."""
    ctx = replace(context(event_type), ticket=replace(TICKET, title=title))
    recipient = EmailRecipient("bob@example.com", "Bob", first, 2)
    rendered = RENDERER.render_event(ctx, recipient, RENDERER.event_variables(ctx),
                                     unsubscribe_url=link, alone=True)
    if not any(c in title + first for c in "\r\n\x00"):  # else encoded whole (None)
        assert isinstance(rendered.html, inline.FilledPage)
        assert rendered.html.quoted_printable() is not None
    fields = headers(link)
    assert RENDERER.compose(rendered, recipient, **fields) == \
        wanted(RENDERER, rendered, recipient, fields)


def test_long_lines_trailing_space_and_crlf_encode_alike() -> None:
    text = ("word " * 40 + "\r\n" + "é" * 100 + " \n\tTab line\t\n" + "=" * 90 + "\n\n.\n"
            + "x" * 77 + " \r")
    rendered = RenderedEmail("Subject", text, "<p>" + text + "</p>")
    recipient = EmailRecipient("alice@example.com", "Alice Lopez", "Alice", 1)
    data = RENDERER.compose(rendered, recipient, **headers(None))
    assert data == wanted(RENDERER, rendered, recipient, headers(None))
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert [p.get_content().splitlines() for p in parsed.iter_parts()] == \
        [text.splitlines(), ("<p>" + text + "</p>").splitlines()]


def test_a_long_unsubscribe_link_stays_one_readable_url() -> None:
    link = f"{SITE}/notifications/unsubscribe/{'WzQsInRpY2tldF9jcmVhdGVkIl0' * 3}.eqYFsw/"
    recipient = EmailRecipient("alice@example.com", "Alice Lopez", "Alice", 1)
    data = RENDERER.compose(RenderedEmail("s", "t", "<p>h</p>"), recipient, **headers(link))
    assert f"\r\nList-Unsubscribe: <{link}>\r\n".encode() in data
    assert b"=?utf-8?" not in data


def test_the_boundary_is_shared_by_a_tickets_messages_and_not_in_the_parts() -> None:
    recipient = EmailRecipient("alice@example.com", "Alice Lopez", "Alice", 1)
    body = "--===============0000000000000000000==\n" * 3
    first, second = (RENDERER.build_message(
        RenderedEmail("s", body, body), recipient, event_type_name="ticket_created",
        ticket_number="TKT-1", msg_id=f"<m{i}@x>", thread="<t.1@x>") for i in (1, 2))
    assert first.get_boundary() == second.get_boundary()
    assert first.get_boundary().startswith("===============")
    data = first.as_bytes(policy=policy.SMTP)
    assert data.count(f"--{first.get_boundary()}".encode()) == 3
    assert [p.get_content() for p in first.iter_parts()] == [body, body]


# ------------------------------------------------------------------- the delivery log


def test_the_delivery_log_still_rotates_at_its_size(tmp_path: Path) -> None:
    from itsm_notify.engine.delivery_log import _RotatingLog

    path = tmp_path / "email.log"
    handler = _RotatingLog(path, maxBytes=200, backupCount=2, encoding="utf-8")
    logger = logging.getLogger("test_fast_paths.rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(12):
            logger.warning("event=%s channel=email recipient=a@example.com outcome=sent", n)
    finally:
        logger.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["email.log", "email.log.1", "email.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    assert "event=11 " in path.read_text()


# --------------------------------------------------------------- SQLite timestamps


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes())
def test_sqlite_timestamps_are_written_as_sqlalchemy_writes_them(moment: datetime) -> None:
    from sqlalchemy.dialects import sqlite

    from itsm_notify.storage.schema import _SQLiteTimestamp

    dialect = sqlite.dialect()
    fast = _SQLiteTimestamp().bind_processor(dialect)
    plain = sqlite.DATETIME().bind_processor(dialect)
    assert fast(moment) == plain(moment)


# ------------------------------------------------------------------ dot-stuffing


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
                     | st.sampled_from([b".", b"..", b".x", b""]), max_size=8)
       .map(b"\r\n".join))
def test_dot_stuffing_follows_rfc_5321(data: bytes) -> None:
    """Lines end in CRLF; a line that starts with a period gets another; the data ends
    with CRLF (RFC 5321 4.5.2), checked line by line."""
    from itsm_notify.channels.smtp import _dot_stuffed

    lines = data.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    expected = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                        for line in lines) or b"\r\n"
    assert _dot_stuffed(data) == expected


@given(data=st.binary(max_size=60) | st.text(alphabet="\r\n.a", max_size=30).map(str.encode))
def test_a_bare_cr_or_lf_is_found(data: bytes) -> None:
    from itsm_notify.channels.smtp import bare_line_break

    assert bare_line_break(data) == (b"\r" in data.replace(b"\r\n", b"")
                                     or b"\n" in data.replace(b"\r\n", b""))


@settings(max_examples=500, deadline=None)
@given(display=st.one_of(st.text(max_size=40),
                         st.from_regex(r"[A-Za-z0-9]{1,12}( [A-Za-z0-9]{1,12}){0,4}",
                                       fullmatch=True), st.just("")),
       local=st.one_of(st.from_regex(r"[A-Za-z0-9_+-]{1,20}(\.[A-Za-z0-9_+-]{1,10}){0,2}",
                                     fullmatch=True), st.sampled_from(["o'brien", "a.b", "zoë"])),
       domain=st.sampled_from(["example.com", "mail.corp.local", "x" * 60 + ".org", "localhost"]))
def test_an_address_written_unparsed_is_what_the_policy_writes(display: str, local: str,
                                                                 domain: str) -> None:
    """The To field of a plain name and address is written without the email package;
    it must be exactly the policy's folding, or both must refuse."""
    from email.headerregistry import Address

    try:
        expected: bytes | type[Exception] = header_module._fold(
            "To", (header_module.one_line(display), local, domain))
    except Exception as exc:
        expected = type(exc)
    try:
        written: bytes | type[Exception] = header_module.fold_header(
            "To", Address(header_module.one_line(display), local, domain))
    except Exception as exc:
        written = type(exc)
    assert written == expected


@settings(max_examples=300, deadline=None)
@given(url=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                   max_size=400) | st.from_regex(r"https://[a-z.]{3,20}/u/[A-Za-z0-9._=?-]{5,80}/",
                                                 fullmatch=True))
def test_a_list_unsubscribe_link_written_unparsed_is_what_the_policy_writes(url: str) -> None:
    value = f"<{url}>"
    try:
        expected: bytes | type[Exception] = header_module._fold("List-Unsubscribe", value)
    except Exception as exc:
        expected = type(exc)
    try:
        written: bytes | type[Exception] = header_module.fold_header("List-Unsubscribe", value)
    except Exception as exc:
        written = type(exc)
    assert written == expected
