"""The fields SendGrid and Postmark get are the message's own: the direct reader of
``Renderer.compose``'s shape gives exactly what the email package's parser gives, for
any subject, name and body text (Hypothesis), and other shapes go to the parser."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from itsm_notify.channels.mime import _read_composed, read_message, read_parsed
from itsm_notify.compose.render import RenderedEmail, Renderer, message_id, thread_id
from itsm_notify.config import load_settings
from itsm_notify.events.audience import EmailRecipient

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(subject=text, name=text, body=text, html=text, from_name=text,
       debug=st.booleans(), reply_to=st.booleans(), unsubscribe=st.booleans(),
       thread_start=st.booleans())
def test_the_direct_reader_equals_the_parser(subject: str, name: str, body: str, html: str,
                                             from_name: str, debug: bool, reply_to: bool,
                                             unsubscribe: bool, thread_start: bool) -> None:
    clean = " ".join(from_name.replace('"', "").replace("\\", "").split()) or "Desk"
    assume(clean.isprintable())  # a control character in DEFAULT_FROM_EMAIL is refused
    settings_ = load_settings({
        "default_from_email": f'"{clean}" <helpdesk@example.com>',
        "reply_to_email": "Support <support@example.com>" if reply_to else "",
        "debug": debug, "development_email": "dev@example.com"}, environ={}, dotenv_path=None)
    data = Renderer(settings_).compose(
        RenderedEmail(subject, body, html), EmailRecipient("zoe@example.com", name, "Z", 1),
        event_type_name="ticket_created", ticket_number="TKT-1",
        msg_id=message_id(1, "zoe@example.com", "example.com"),
        thread=thread_id(1, "example.com"), is_thread_start=thread_start,
        unsubscribe_url="https://h.example.com/u/t/" if unsubscribe else None)
    rcpt = "dev@example.com" if debug else "zoe@example.com"
    direct = _read_composed(data, rcpt)
    assert direct is not None
    assert direct == read_parsed(data, rcpt)


def test_another_shape_goes_to_the_parser() -> None:
    message = EmailMessage()
    message["From"] = "Desk <desk@example.com>"
    message["To"] = "Zoë <zoe@example.com>"
    message["Subject"] = "Only text"
    message.set_content("Just a line.\n")
    data = message.as_bytes(policy=policy.SMTP)
    assert _read_composed(data, "zoe@example.com") is None
    fields = read_message(data, "zoe@example.com")
    assert (fields.subject, fields.text, fields.html, fields.to.name) == \
        ("Only text", "Just a line.\n", None, "Zoë")
