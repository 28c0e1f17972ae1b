"""The SMTP sink itself, exercised with plain smtplib: if these fail, mail tests lie."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from email.message import EmailMessage

import pytest

from smtp_server import SmtpSink

pytestmark = pytest.mark.timeout(60)


def make_message(to: str = "alice@example.com", subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "helpdesk@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"Body for {to}: {subject}")
    return msg


def client(sink: SmtpSink) -> smtplib.SMTP:
    return smtplib.SMTP(sink.host, sink.port, timeout=10)


def test_accepts_and_records(smtp_sink: SmtpSink) -> None:
    with client(smtp_sink) as smtp:
        refused = smtp.send_message(make_message(subject="Ticket TKT-001 — ünïcode"),
                                    to_addrs=["alice@example.com", "bob@example.com"])
    assert refused == {}
    assert smtp_sink.wait_for(1)
    [msg] = smtp_sink.messages
    assert msg.mail_from == "helpdesk@example.com"
    assert msg.rcpt_tos == ["alice@example.com", "bob@example.com"]
    assert msg.subject == "Ticket TKT-001 — ünïcode"
    assert msg.to == "alice@example.com"
    body = msg.message.get_content().strip()
    assert body == "Body for alice@example.com: Ticket TKT-001 — ünïcode"
    assert b"Subject:" in msg.data
    assert msg.session_id == 1
    assert msg.auth_login is None and msg.tls is False
    assert smtp_sink.messages_to("BOB@example.com") == [msg]
    assert smtp_sink.messages_to("carol@example.com") == []
    smtp_sink.clear()
    assert smtp_sink.messages == []


def test_connection_count_counts_sessions(smtp_sink: SmtpSink) -> None:
    assert smtp_sink.connection_count == 0  # Controller's own start-up probe is not counted
    with client(smtp_sink) as smtp:
        for i in range(3):
            smtp.send_message(make_message(subject=f"batch {i}"))
    assert smtp_sink.connection_count == 1
    assert {m.session_id for m in smtp_sink.messages} == {1}
    with client(smtp_sink) as smtp:
        smtp.send_message(make_message(subject="second session"))
    assert smtp_sink.connection_count == 2
    assert [m.session_id for m in smtp_sink.messages] == [1, 1, 1, 2]


def test_refuse_451_once_then_accept(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("alice@example.com", 451, "4.7.1 Try again later", times=1)
    with client(smtp_sink) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            smtp.send_message(make_message())
        assert info.value.recipients == {"alice@example.com": (451, b"4.7.1 Try again later")}
        smtp.rset()
        assert smtp.send_message(make_message()) == {}
    assert len(smtp_sink.messages) == 1


def test_refuse_550_always_and_partial_refusal(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("gone@example.com", 550, "5.1.1 User unknown")
    with client(smtp_sink) as smtp:
        for _ in range(3):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                smtp.send_message(make_message(to="gone@example.com"))
            assert info.value.recipients["gone@example.com"][0] == 550
            smtp.rset()
        refused = smtp.send_message(make_message(to="gone@example.com"),
                                    to_addrs=["gone@example.com", "ok@example.com"])
    assert refused == {"gone@example.com": (550, b"5.1.1 User unknown")}
    [msg] = smtp_sink.messages
    assert msg.rcpt_tos == ["ok@example.com"]
    smtp_sink.accept("gone@example.com")
    with client(smtp_sink) as smtp:
        assert smtp.send_message(make_message(to="gone@example.com")) == {}


def test_refuse_rejects_codes_outside_4xx_5xx(smtp_sink: SmtpSink) -> None:
    with pytest.raises(ValueError):
        smtp_sink.refuse("a@example.com", 250, "OK")


def test_drop_after_disconnects_the_sender(smtp_sink: SmtpSink) -> None:
    smtp_sink.drop_after(2)
    smtp = client(smtp_sink)
    smtp.send_message(make_message(subject="one"))
    smtp.send_message(make_message(subject="two"))
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.send_message(make_message(subject="three"))
    smtp.close()
    assert [m.subject for m in smtp_sink.messages] == ["one", "two"]
    assert smtp_sink.drops == 1
    # one-shot: a new connection delivers again
    with client(smtp_sink) as smtp:
        smtp.send_message(make_message(subject="three again"))
    assert [m.subject for m in smtp_sink.messages] == ["one", "two", "three again"]
    assert smtp_sink.connection_count == 2


def test_drop_after_zero_drops_the_next_message(smtp_sink: SmtpSink) -> None:
    smtp_sink.drop_after(0)
    with client(smtp_sink) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.send_message(make_message())
    assert smtp_sink.messages == []


def test_stop_refuses_connections_and_start_reuses_the_port(smtp_sink: SmtpSink) -> None:
    port = smtp_sink.port
    with client(smtp_sink) as smtp:
        smtp.send_message(make_message(subject="before"))
    open_client = client(smtp_sink)
    open_client.ehlo()
    smtp_sink.stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(smtp_sink.host, port, timeout=5)
    # a session open when the server went down is cut
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
        open_client.send_message(make_message(subject="during"))
    open_client.close()
    smtp_sink.start()
    assert smtp_sink.port == port
    with client(smtp_sink) as smtp:
        smtp.send_message(make_message(subject="after"))
    assert [m.subject for m in smtp_sink.messages] == ["before", "after"]
    assert smtp_sink.connection_count == 3


def test_latency_delays_data_but_not_other_sessions(smtp_sink: SmtpSink) -> None:
    smtp_sink.latency = 0.5
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with client(smtp_sink) as smtp:
                smtp.send_message(make_message(subject=f"slow {i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert errors == []
    assert len(smtp_sink.messages) == 4
    assert 0.5 <= elapsed < 1.5  # concurrent, not 4 × 0.5 s


def test_wait_for_times_out(smtp_sink: SmtpSink) -> None:
    assert smtp_sink.wait_for(1, timeout=0.1) is False


def test_no_auth_advertised_without_credentials(smtp_sink: SmtpSink) -> None:
    with client(smtp_sink) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert not smtp.has_extn("starttls")


# ---------------------------------------------------------------- TLS and AUTH

CREDENTIALS = {"mailer": "s3cret"}


@pytest.fixture
def tls_sink(server_tls_context: ssl.SSLContext):
    with SmtpSink(tls_context=server_tls_context, auth_credentials=CREDENTIALS) as sink:
        yield sink


def test_starttls_and_auth(tls_sink: SmtpSink, client_tls_context: ssl.SSLContext) -> None:
    with client(tls_sink) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")  # only after STARTTLS
        smtp.starttls(context=client_tls_context)  # verifies the trustme certificate
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features["auth"]
        smtp.login("mailer", "s3cret")
        smtp.send_message(make_message())
    [msg] = tls_sink.messages
    assert msg.tls is True
    assert msg.auth_login == "mailer"
    assert tls_sink.connection_count == 1


def test_starttls_rejected_by_default_trust_store(tls_sink: SmtpSink) -> None:
    with client(tls_sink) as smtp, pytest.raises(ssl.SSLCertVerificationError):
        smtp.starttls(context=ssl.create_default_context())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_wrong_password_gets_535(tls_sink: SmtpSink, client_tls_context: ssl.SSLContext,
                                      mechanism: str) -> None:
    with client(tls_sink) as smtp:
        smtp.starttls(context=client_tls_context)
        smtp.ehlo()
        smtp.esmtp_features["auth"] = mechanism  # make smtplib try just this one
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login("mailer", "wrong")
        assert info.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("nobody", "s3cret")
    assert tls_sink.messages == []


def test_require_starttls(server_tls_context: ssl.SSLContext,
                          client_tls_context: ssl.SSLContext) -> None:
    with SmtpSink(tls_context=server_tls_context, require_starttls=True) as sink:
        with client(sink) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as info:
            smtp.send_message(make_message())
        assert info.value.smtp_code == 530
        with client(sink) as smtp:
            smtp.starttls(context=client_tls_context)
            smtp.send_message(make_message())
        assert len(sink.messages) == 1


def test_auth_without_tls_when_allowed() -> None:
    with SmtpSink(auth_credentials=CREDENTIALS, auth_require_tls=False) as sink:
        with client(sink) as smtp:
            smtp.login("mailer", "s3cret")
            smtp.send_message(make_message())
        assert sink.messages[0].auth_login == "mailer"
        assert sink.messages[0].tls is False


def test_implicit_tls(server_tls_context: ssl.SSLContext,
                      client_tls_context: ssl.SSLContext) -> None:
    with SmtpSink(implicit_tls_context=server_tls_context,
                  auth_credentials=CREDENTIALS) as sink:
        with smtplib.SMTP_SSL(sink.host, sink.port, context=client_tls_context,
                              timeout=10) as smtp:
            smtp.login("mailer", "s3cret")
            smtp.send_message(make_message())
        [msg] = sink.messages
        assert msg.tls is True and msg.auth_login == "mailer"
        assert sink.connection_count == 1
        sink.stop()
        sink.start()
        with smtplib.SMTP_SSL(sink.host, sink.port, context=client_tls_context,
                              timeout=10) as smtp:
            smtp.noop()
        assert sink.connection_count == 2


def test_ca_bundle_path_is_a_usable_cafile(tls_sink: SmtpSink, ca_bundle_path) -> None:
    ctx = ssl.create_default_context(cafile=str(ca_bundle_path))
    with client(tls_sink) as smtp:
        smtp.starttls(context=ctx)
        smtp.ehlo()
        assert smtp.has_extn("auth")
