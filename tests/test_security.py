"""Safe by default (issue 6): hostile ticket text, tokens, internal comments, TLS."""

from __future__ import annotations

import re
from datetime import datetime
from email import policy
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer

from itsm_notify.channels.base import Outgoing, deliver_all
from itsm_notify.channels.smtp import SmtpTransport
from itsm_notify.compose.render import Renderer, message_id, thread_id
from itsm_notify.config import load_settings
from itsm_notify.errors import InvalidToken, TransportError
from itsm_notify.events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import resolve
from itsm_notify.ops.unsubscribe import SALT, make_token, read_token, unsubscribe_url

SETTINGS = load_settings({"site_url": "https://desk.example.com", "secret_key": "s3cret",
                          "default_from_email": "Desk <desk@example.com>",
                          "admins": "Ops <ops@example.com>"},
                         environ={}, dotenv_path=None)
RENDERER = Renderer(SETTINGS)

EXPECTED_HEADERS = {"subject", "from", "to", "date", "message-id", "references",
                    "auto-submitted", "x-auto-response-suppress", "x-itsm-ticket",
                    "x-itsm-event", "list-unsubscribe", "list-unsubscribe-post",
                    "mime-version", "content-type"}

# Any text at all, with the dangerous characters made likely.
hostile = st.lists(
    st.one_of(st.text(max_size=8),
              st.sampled_from(["\r", "\n", "\r\n", "\x00", "\u2028", "\u2029", "\x85",
                               "<", ">", "&", '"', "'", ":", "\r\nBcc: x@evil.com",
                               "=?utf-8?q?=0D=0ABcc:_x@evil.com?="])),
    max_size=8).map("".join)


def _context(event_type: str, *, title: str, description: str, first: str, last: str,
             body: str, status: str) -> EventContext:
    users = {
        1: User(1, "req", "req@example.com", first, last),
        2: User(2, "agent", "agent@example.com", first, last),
        3: User(3, "actor", "actor@example.com", "Act", "Or"),
    }
    ticket = Ticket(id=7, number="TKT-007", title=title, description=description,
                    status=status or "open", priority="high", requester_id=1, assignee_id=2,
                    project_id=1, due_at=None, created_at=datetime(2026, 1, 1))
    payload: dict[str, object] = {}
    comment = None
    if event_type == "status_changed":
        payload = {"old_status": "open", "new_status": status or "x"}
    if event_type == "ticket_assigned":
        payload = {"assignee_id": 2}
    if event_type == "comment_added":
        payload = {"comment_id": 9}
        comment = Comment(9, 7, 3, body, False, datetime(2026, 1, 2))
    return EventContext(event=OutboxEvent(1, event_type, 7, 3, None), payload=payload,
                        ticket=ticket, users=users, project=Project(1, f"P {title}", True),
                        comment=comment, manager_ids=())


def _tag_names(html: str) -> set[str]:
    return {name.lower() for name in re.findall(r"<([A-Za-z][A-Za-z0-9]*)", html)}


def _benign_tag_names() -> set[str]:
    """Every tag name the templates themselves write."""
    names: set[str] = set()
    for kind in ("ticket_created", "ticket_assigned", "status_changed", "comment_added"):
        ctx = _context(kind, title="t", description="d\nd", first="f", last="l", body="b\nb",
                       status="open")
        recipient = resolve(ctx, SETTINGS).email[0]
        names |= _tag_names(RENDERER.render_event(ctx, recipient, unsubscribe_url="https://u").html)
    return names


TEMPLATE_TAGS = _benign_tag_names()
MARK = "<zq-injected onload=alert(1)>"


@pytest.mark.parametrize("event_type", ["ticket_created", "ticket_assigned", "status_changed",
                                        "comment_added"])
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=hostile, description=hostile, first=hostile, last=hostile, body=hostile,
       status=hostile)
def test_hostile_text_cannot_add_headers_or_markup(event_type: str, title: str,
                                                   description: str, first: str, last: str,
                                                   body: str, status: str) -> None:
    ctx = _context(event_type, title=title + MARK, description=MARK + description,
                   first=first + MARK, last=last, body=body + MARK, status=status)
    recipients = resolve(ctx, SETTINGS)
    assert recipients.email, "every event here has email recipients"
    for recipient in recipients.email:
        url = unsubscribe_url(SETTINGS.site_url, SETTINGS.secret_key, recipient.user_id,
                              event_type)
        rendered = RENDERER.render_event(ctx, recipient, unsubscribe_url=url)
        wire = RENDERER.compose(  # what the SMTP transport sends
            rendered, recipient, event_type_name=event_type, ticket_number="TKT-007",
            msg_id=message_id(1, recipient.key, SETTINGS.from_domain),
            thread=thread_id(7, SETTINGS.from_domain), is_thread_start=True,
            unsubscribe_url=url)
        parsed = BytesParser(policy=policy.default).parsebytes(wire)
        names = [name.lower() for name in parsed]
        assert len(names) == len(set(names)), f"a header repeats: {names}"
        expected = EXPECTED_HEADERS if recipient.user_id is not None else \
            EXPECTED_HEADERS - {"list-unsubscribe", "list-unsubscribe-post"}
        assert set(names) == expected
        assert parsed["To"].addresses[0].addr_spec == recipient.address
        assert len(parsed["To"].addresses) == 1
        assert parsed["X-ITSM-Event"] == event_type
        assert "\n" not in parsed["Subject"] and "\r" not in parsed["Subject"]
        html = parsed.get_body(("html",)).get_content()
        assert "<zq-" not in html and "&lt;zq-injected" in html
        assert _tag_names(html) <= TEMPLATE_TAGS


def test_internal_comment_is_never_rendered_into_an_email() -> None:
    ctx = _context("comment_added", title="t", description="d", first="f", last="l",
                   body="INTERNAL-SECRET", status="open")
    internal = EventContext(**{**ctx.__dict__,
                               "comment": Comment(9, 7, 3, "INTERNAL-SECRET", True, None)})
    assert resolve(internal, SETTINGS).email == ()
    recipient = resolve(ctx, SETTINGS).email[0]
    with pytest.raises(ValueError):
        RENDERER.render_event(internal, recipient)


# ------------------------------------------------------------------------ tokens


def test_token_round_trip() -> None:
    token = make_token("key", 42, "comment_added")
    assert read_token("key", token) == (42, "comment_added")
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", token), "the token is URL-safe"


@hsettings(max_examples=300, deadline=None)
@given(key=st.text(min_size=1, max_size=40), user_id=st.integers(min_value=-2**63, max_value=2**63),
       event_type=st.text(max_size=60))
def test_token_is_itsdangerous_own_where_it_does_not_compress(key: str, user_id: int,
                                                              event_type: str) -> None:
    """make_token skips itsdangerous's attempt to compress: byte for byte its token
    wherever it would not have compressed, and read by it (read_token) everywhere."""
    plain = URLSafeSerializer(key, salt=SALT).dumps([user_id, event_type])
    token = make_token(key, user_id, event_type)
    if not plain.startswith("."):  # itsdangerous marks a compressed payload with a dot
        assert token == plain
    assert read_token(key, token) == (user_id, event_type)


def test_token_of_a_compressible_payload_is_read() -> None:
    """A payload itsdangerous would compress (it repeats itself) is signed uncompressed,
    and read the same; a compressed token made by itsdangerous is read too."""
    event_type = "ticket_" * 20
    assert URLSafeSerializer("key", salt=SALT).dumps([7, event_type]).startswith(".")
    assert read_token("key", make_token("key", 7, event_type)) == (7, event_type)
    assert read_token("key", URLSafeSerializer("key", salt=SALT).dumps([7, event_type])) \
        == (7, event_type)


@pytest.mark.parametrize("change", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),      # signature altered
    lambda t: ("X" if t[0] != "X" else "Y") + t[1:],          # payload altered
    lambda t: make_token("key", 43, "comment_added").split(".")[0] + "." + t.split(".")[1],
])
def test_tampered_token_is_refused(change) -> None:
    token = make_token("key", 42, "comment_added")
    with pytest.raises(InvalidToken):
        read_token("key", change(token))


def test_token_from_another_key_is_refused() -> None:
    with pytest.raises(InvalidToken):
        read_token("other-key", make_token("key", 42, "comment_added"))


def test_unsubscribe_header_only_over_https() -> None:
    assert unsubscribe_url("https://d.example.com", "", 1, "x") is None
    assert unsubscribe_url("https://d.example.com", "k", None, "x") is None
    url = unsubscribe_url("https://d.example.com", "k", 1, "ticket_created")
    assert url is not None and url.startswith("https://d.example.com/notifications/unsubscribe/")
    ctx = _context("ticket_created", title="t", description="d", first="f", last="l", body="",
                   status="open")
    for site, expect_header in (("https://d.example.com", True), ("http://d.example.com", False)):
        recipient = resolve(ctx, SETTINGS).email[0]
        link = unsubscribe_url(site, "k", recipient.user_id, "ticket_created")
        msg = RENDERER.build_message(RENDERER.render_event(ctx, recipient, unsubscribe_url=link),
                                     recipient, event_type_name="ticket_created",
                                     ticket_number="TKT-007", msg_id="<a@b>", thread=None,
                                     unsubscribe_url=link)
        assert ("List-Unsubscribe" in msg) is expect_header
        if expect_header:
            assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert link in msg.get_body(("html",)).get_content()


# --------------------------------------------------------------------------- TLS


def _outgoing() -> Outgoing:
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("x")
    return Outgoing(key=1, sender="desk@example.com", rcpt="a@example.com",
                    data=message.as_bytes(policy=policy.SMTP))


def test_untrusted_certificate_fails_clearly(server_tls_context) -> None:
    from smtp_server import SmtpSink

    with SmtpSink(tls_context=server_tls_context, require_starttls=True) as sink:
        settings = load_settings({"email_backend": "smtp", "email_host": sink.host,
                                  "email_port": sink.port, "email_use_tls": True,
                                  "smtp_connections": 1}, environ={}, dotenv_path=None)
        transport = SmtpTransport(settings)
        [outcome] = deliver_all(transport, [_outgoing()])
        assert outcome.status == "deferred"
        assert "certificate is not trusted" in outcome.detail
        assert isinstance(transport.last_error, TransportError)
        assert sink.messages == []


def test_trusted_certificate_delivers(server_tls_context, ca_bundle_path) -> None:
    from smtp_server import SmtpSink

    with SmtpSink(tls_context=server_tls_context, require_starttls=True) as sink:
        settings = load_settings({"email_backend": "smtp", "email_host": sink.host,
                                  "email_port": sink.port, "email_use_tls": True,
                                  "email_ssl_cafile": str(ca_bundle_path),
                                  "smtp_connections": 1}, environ={}, dotenv_path=None)
        [outcome] = deliver_all(SmtpTransport(settings), [_outgoing()])
        assert outcome.status == "sent"
        assert sink.messages[0].tls


def test_auth_is_refused_over_plaintext_unless_allowed() -> None:
    from smtp_server import SmtpSink

    with SmtpSink(auth_credentials={"desk": "pw-123"}, auth_require_tls=False) as sink:
        base = {"email_backend": "smtp", "email_host": sink.host, "email_port": sink.port,
                "email_host_user": "desk", "email_host_password": "pw-123",
                "smtp_connections": 1}
        refused = SmtpTransport(load_settings(base, environ={}, dotenv_path=None))
        [outcome] = deliver_all(refused, [_outgoing()])
        assert outcome.status == "deferred" and "unencrypted" in outcome.detail
        assert "pw-123" not in outcome.detail and sink.messages == []
        allowed = SmtpTransport(load_settings({**base, "email_allow_plaintext_auth": True},
                                              environ={}, dotenv_path=None))
        [outcome] = deliver_all(allowed, [_outgoing()])
        assert outcome.status == "sent"
        assert sink.messages[0].auth_login == "desk"


def test_wrong_password_is_one_sentence_without_the_password() -> None:
    from smtp_server import SmtpSink

    with SmtpSink(auth_credentials={"desk": "right"}, auth_require_tls=False) as sink:
        settings = load_settings({"email_backend": "smtp", "email_host": sink.host,
                                  "email_port": sink.port, "email_host_user": "desk",
                                  "email_host_password": "wrong-pw-987",
                                  "email_allow_plaintext_auth": True, "smtp_connections": 1},
                                 environ={}, dotenv_path=None)
        transport = SmtpTransport(settings)
        [outcome] = deliver_all(transport, [_outgoing()])
        assert outcome.status == "deferred"
        assert "refused the login" in outcome.detail and "535" in outcome.detail
        assert "wrong-pw-987" not in outcome.detail
        assert "wrong-pw-987" not in repr(settings)


def test_non_ascii_names_and_subjects_are_encoded() -> None:
    ctx = _context("ticket_created", title="Imprimante cassée — 打印机", description="d",
                   first="Zoë", last="Ñandú", body="", status="open")
    recipient = next(r for r in resolve(ctx, SETTINGS).email if r.user_id == 2)
    raw = RENDERER.compose(RENDERER.render_event(ctx, recipient), recipient,
                           event_type_name="ticket_created", ticket_number="TKT-007",
                           msg_id="<a@example.com>", thread=None)
    assert raw.isascii(), "headers and bodies are 7-bit on the wire without SMTPUTF8"
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Subject"] == "New Ticket: Imprimante cassée — 打印机 (TKT-007)"
    assert parsed["To"].addresses[0].display_name == "Zoë Ñandú"
    assert "Hi Zoë," in parsed.get_body(("plain",)).get_content()


def _utf8_and_ascii_messages() -> list[Outgoing]:
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = "Grüße"
    message["To"] = "José <josé@example.com>"
    message.set_content("x")
    return [Outgoing(key=1, sender="desk@example.com", rcpt="josé@example.com",
                     data=message.as_bytes(policy=policy.SMTPUTF8)), _outgoing()]


def _smtp_settings(sink):  # type: ignore[no-untyped-def]
    return load_settings({"email_backend": "smtp", "email_host": sink.host,
                          "email_port": sink.port, "smtp_connections": 1},
                         environ={}, dotenv_path=None)


def test_non_ascii_address_uses_smtputf8_where_offered(smtp_sink) -> None:
    first, second = deliver_all(SmtpTransport(_smtp_settings(smtp_sink)),
                                _utf8_and_ascii_messages())
    assert (first.status, second.status) == ("sent", "sent")
    assert smtp_sink.messages[0].rcpt_tos == ["josé@example.com"]
    assert "To: José <josé@example.com>".encode() in smtp_sink.messages[0].data


def test_non_ascii_address_without_smtputf8_fails_that_message_only() -> None:
    from smtp_server import SmtpSink

    with SmtpSink(smtputf8=False) as sink:
        first, second = deliver_all(SmtpTransport(_smtp_settings(sink)),
                                    _utf8_and_ascii_messages())
        assert first.status == "failed" and "SMTPUTF8" in first.detail
        assert second.status == "sent"
        assert [m.rcpt_tos for m in sink.messages] == [["a@example.com"]]
