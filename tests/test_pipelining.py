"""SMTP command pipelining (RFC 2920) against a real aiosmtpd server.

A server that offers PIPELINING gets MAIL, RCPT and DATA in one write; one that does
not gets them one at a time. Either way a refusal is classified alike and the session
stays usable, and every reply of a pipelined group is read: a refused recipient whose
DATA the server accepts all the same gets an empty message, not the email.

No database: the transport alone, over loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from itsm_notify.channels.base import Outgoing, deliver_all
from itsm_notify.channels.smtp import SmtpTransport
from itsm_notify.config import load_settings
from smtp_server import SmtpSink

ALICE, BOB = "alice@example.com", "bob@example.com"


def transport(sink: SmtpSink) -> SmtpTransport:
    return SmtpTransport(load_settings(
        {"email_backend": "smtp", "email_host": sink.host, "email_port": sink.port,
         "email_timeout": 10, "smtp_connections": 1}, environ={}, dotenv_path=None))


def email(n: int, rcpt: str) -> Outgoing:
    return Outgoing(key=n, sender="desk@example.com", rcpt=rcpt,
                    data=f"Subject: message {n}\r\n\r\n.line starting with a period\r\n"
                         .encode())


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    with SmtpSink(pipelining=request.param) as server:
        yield server


def test_the_commands_go_in_one_write_only_to_a_server_that_offers_it(sink: SmtpSink) -> None:
    outcomes = deliver_all(transport(sink), [email(n, ALICE) for n in range(4)])
    assert [o.status for o in outcomes] == ["sent"] * 4
    assert sink.wait_for(4)
    assert [m.subject for m in sink.messages] == [f"message {n}" for n in range(4)]
    assert all(m.data.endswith(b"\r\n\r\n.line starting with a period\r\n")
               for m in sink.messages)  # the period quoted on the wire, unquoted there
    assert sink.pipelined == (4 if sink.pipelining else 0)
    assert sink.connection_count == 1


@pytest.mark.parametrize(("code", "status"), [(550, "failed"), (451, "deferred")])
def test_a_refused_recipient_ends_its_transaction_and_the_session_goes_on(
        sink: SmtpSink, code: int, status: str) -> None:
    sink.refuse(BOB, code, "refused", times=1)
    outcomes = deliver_all(transport(sink), [email(1, BOB), email(2, ALICE), email(3, BOB)])
    assert [(o.status, o.code) for o in outcomes] == [(status, code), ("sent", 250),
                                                       ("sent", 250)]
    assert outcomes[0].refused_recipient == (code == 550)
    assert sink.wait_for(2)
    assert [(m.subject, m.rcpt_tos) for m in sink.messages] == [
        ("message 2", [ALICE]), ("message 3", [BOB])]
    assert sink.connection_count == 1


def test_a_server_closing_at_rcpt_is_left_and_reopened(sink: SmtpSink) -> None:
    sink.refuse(BOB, 421, "4.3.2 shutting down", times=1)
    outcomes = deliver_all(transport(sink), [email(1, BOB), email(2, ALICE)])
    assert [(o.status, o.code) for o in outcomes] == [("deferred", 421), ("sent", 250)]
    assert sink.wait_for(1)
    assert sink.connection_count == 2


def test_a_data_accepted_after_a_refused_recipient_gets_an_empty_message() -> None:
    with SmtpSink(pipelining=True) as sink:
        sink.data_without_recipients = True
        sink.refuse(BOB, 550, "5.1.1 no such user", times=1)
        outcomes = deliver_all(transport(sink), [email(1, BOB), email(2, ALICE)])
        assert [(o.status, o.code) for o in outcomes] == [("failed", 550), ("sent", 250)]
        assert sink.wait_for(2)
        ended, sent = sink.messages
        assert ended.data == b"" and ended.rcpt_tos == [""]  # the email itself never went
        assert (sent.subject, sent.rcpt_tos) == ("message 2", [ALICE])
        assert sink.connection_count == 1


def test_a_line_break_in_an_address_is_refused_before_anything_is_written(
        sink: SmtpSink) -> None:
    """Refused before MAIL goes out: the next message on the session is not stuck in a
    transaction left open (it would get 503 nested MAIL)."""
    outcome, next_one = deliver_all(
        transport(sink), [email(1, f"{ALICE}\r\nRCPT TO:<x@evil>"), email(2, ALICE)])
    assert outcome.status == "deferred" and "newline" in outcome.detail
    assert next_one.status == "sent"
    assert sink.wait_for(1)
    assert [m.rcpt_tos for m in sink.messages] == [[ALICE]]
    assert sink.connection_count == 1
