"""Email through provider APIs: SendGrid, Postmark, Mailgun and Amazon SES, each against
a loopback server that speaks its API (tests/http_fakes.py).

Each request is checked as the provider would read it: the path, the auth header, the
JSON fields built from the MIME message (or the MIME bytes themselves, where the API
takes raw MIME), SES's Signature Version 4 recomputed by botocore. Then the faults: a
429 then 202 (Retry-After waited out), a long Retry-After, a 500, a hung server, a
refused connection, a revoked key, and a slow server served over several connections
at once.
"""

from __future__ import annotations

import base64
import email
import time
from email import policy
from email.utils import formatdate
from typing import Any

import pytest

from http_fakes import (
    SENDGRID_RATE_LIMITED,
    SENDGRID_SERVER_ERROR,
    MailgunFake,
    PostmarkFake,
    Reply,
    SendGridFake,
    SesFake,
)
from itsm_notify.channels.base import Outcome, Outgoing, RateLimiter, deliver_all
from itsm_notify.channels.http import retry_after_seconds
from itsm_notify.channels.http_email import HttpEmailTransport, make_http_email_transport
from itsm_notify.compose.render import RenderedEmail, Renderer, message_id, thread_id
from itsm_notify.config import Settings, load_settings
from itsm_notify.errors import ConfigError, TransportError
from itsm_notify.events.audience import EmailRecipient

pytestmark = pytest.mark.timeout(60)

SUBJECT = "New Comment on Ticket: Imprimante cassée — VPN (TKT-001)"
TEXT = "Hi Zoë,\n\nBob wrote: it works again.\n\nhttps://helpdesk.example.com/tickets/1/\n"
HTML = "<p>Hi Zoë,</p>\n<p>Bob wrote: it works again.</p>\n"
UNSUBSCRIBE = "https://helpdesk.example.com/notifications/unsubscribe/tok-123/"
MSG_ID = message_id(3, "zoe@example.com", "example.com")
THREAD = thread_id(1, "example.com")
BASE = {"default_from_email": "Help Desk <helpdesk@example.com>",
        "reply_to_email": "Support <support@example.com>",
        "site_url": "https://helpdesk.example.com", "email_timeout": 5}


def make_settings(**overrides: Any) -> Settings:
    return load_settings({**BASE, **overrides}, environ={}, dotenv_path=None)


def outgoing(settings: Settings, rcpt: str = "zoe@example.com", name: str = "Zoë Ñandú",
             key: Any = None) -> Outgoing:
    """A comment email as send-pending composes it: threading, unsubscribe, ticket
    headers; a non-ASCII subject and name (RFC 2047-encoded in the MIME)."""
    data = Renderer(settings).compose(
        RenderedEmail(SUBJECT, TEXT, HTML), EmailRecipient(rcpt, name, "Zoë", 7),
        event_type_name="comment_added", ticket_number="TKT-001", msg_id=MSG_ID,
        thread=THREAD, unsubscribe_url=UNSUBSCRIBE)
    return Outgoing(key=key or (3, rcpt), sender="helpdesk@example.com", rcpt=rcpt, data=data)


EXTRA_HEADERS = [("In-Reply-To", THREAD), ("References", THREAD),
                 ("Auto-Submitted", "auto-generated"), ("X-Auto-Response-Suppress", "All"),
                 ("X-ITSM-Ticket", "TKT-001"), ("X-ITSM-Event", "comment_added"),
                 ("Message-ID", MSG_ID), ("List-Unsubscribe", f"<{UNSUBSCRIBE}>"),
                 ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]


# ------------------------------------------------------------------- SendGrid


def sendgrid(fake: SendGridFake, **overrides: Any) -> Settings:
    return make_settings(email_backend="sendgrid_backend.SendgridBackend",
                         sendgrid_api_key="SG.test-key", sendgrid_api_url=fake.url + "/v3/",
                         **overrides)


def test_sendgrid_sends_the_mime_messages_fields() -> None:
    with SendGridFake() as fake:
        settings = sendgrid(fake)
        transport = make_http_email_transport(settings)
        [outcome] = deliver_all(transport, [outgoing(settings)])
        transport.close()
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.header("Authorization") == "Bearer SG.test-key"
    assert request.header("Content-Type") == "application/json"
    assert request.json() == {
        "personalizations": [{"to": [{"email": "zoe@example.com", "name": "Zoë Ñandú"}]}],
        "from": {"email": "helpdesk@example.com", "name": "Help Desk"},
        "subject": SUBJECT,
        "reply_to": {"email": "support@example.com", "name": "Support"},
        "content": [{"type": "text/plain", "value": TEXT}, {"type": "text/html", "value": HTML}],
        "headers": dict(EXTRA_HEADERS)}
    assert "Zoë Ñandú".encode() in request.body  # UTF-8 JSON, not encoded words
    assert outcome.status == "sent" and outcome.code == 202
    assert outcome.provider_id is not None and len(outcome.provider_id) == 22


def test_sendgrid_in_debug_mode_sends_to_the_development_address() -> None:
    with SendGridFake() as fake:
        settings = sendgrid(fake, debug=True, development_email="dev@example.com")
        out = outgoing(settings)
        out = Outgoing(out.key, out.sender, "dev@example.com", out.data)
        deliver_all(make_http_email_transport(settings), [out])
    payload = fake.requests[0].json()
    assert payload["personalizations"] == [{"to": [{"email": "dev@example.com"}]}]
    assert payload["headers"]["X-Original-To"] == "Zoë Ñandú <zoe@example.com>"


# ------------------------------------------------------------------- Postmark


def postmark(fake: PostmarkFake, **overrides: Any) -> Settings:
    return make_settings(email_backend="anymail.backends.postmark.EmailBackend",
                         postmark_server_token="pm-server-token", postmark_api_url=fake.url,
                         **overrides)


def test_postmark_sends_the_fields_and_records_the_message_id() -> None:
    with PostmarkFake() as fake:
        settings = postmark(fake)
        [outcome] = deliver_all(make_http_email_transport(settings), [outgoing(settings)])
    [request] = fake.requests
    assert request.path == "/email"
    assert request.header("X-Postmark-Server-Token") == "pm-server-token"
    assert request.json() == {
        "From": "Help Desk <helpdesk@example.com>", "To": "Zoë Ñandú <zoe@example.com>",
        "Subject": SUBJECT, "ReplyTo": "Support <support@example.com>",
        "TextBody": TEXT, "HtmlBody": HTML,
        "Headers": [{"Name": n, "Value": v} for n, v in EXTRA_HEADERS]}
    assert outcome.status == "sent" and outcome.code == 200 and outcome.provider_id


def test_postmark_inactive_recipient_is_refused_and_others_go_on() -> None:
    with PostmarkFake(inactive=frozenset({"gone@example.com"})) as fake:
        settings = postmark(fake)
        outcomes = deliver_all(make_http_email_transport(settings),
                               [outgoing(settings, "gone@example.com"), outgoing(settings)])
    refused, sent = sorted(outcomes, key=lambda o: o.key)  # gone@ before zoe@
    assert refused.status == "failed" and refused.refused_recipient and refused.code == 422
    assert "inactive" in refused.detail and "ErrorCode 406" in refused.detail
    assert sent.status == "sent"


def test_postmark_unconfirmed_sender_stops_the_run_naming_the_fix() -> None:
    with PostmarkFake() as fake:
        fake.script(Reply(422, body={"ErrorCode": 401, "Message": "Sender signature not "
                                     "confirmed."}))
        settings = postmark(fake, http_connections=1)
        transport = make_http_email_transport(settings)
        outcomes = deliver_all(transport, [outgoing(settings), outgoing(settings, "b@x.org")])
    assert [o.status for o in outcomes] == ["deferred", "deferred"]
    assert not any(o.counts_as_attempt for o in outcomes)
    assert isinstance(transport.last_error, TransportError)
    assert "DEFAULT_FROM_EMAIL" in str(transport.last_error)
    assert len(fake.requests) == 1  # the second message was not sent


# -------------------------------------------------------------------- Mailgun


def test_mailgun_posts_the_exact_mime_to_its_eu_url() -> None:
    with MailgunFake(domain="mg.example.com") as fake:
        settings = make_settings(email_backend="mailgun", mailgun_api_key="mg-key",
                                 mailgun_sender_domain="mg.example.com",
                                 mailgun_api_url=fake.url + "/v3")
        out = outgoing(settings)
        [outcome] = deliver_all(make_http_email_transport(settings), [out])
    [request] = fake.requests
    assert request.path == "/v3/mg.example.com/messages.mime"
    assert request.header("Authorization") == \
        "Basic " + base64.b64encode(b"api:mg-key").decode()
    form = request.form()
    assert form["to"] == (b"zoe@example.com", None)
    assert form["message"] == (out.data, "message.mime")  # byte for byte
    assert outcome.status == "sent" and outcome.provider_id.endswith("@mg.example.com>")


def test_mailgun_unknown_domain_is_a_configuration_error() -> None:
    with MailgunFake(domain="mg.example.com") as fake:
        settings = make_settings(email_backend="mailgun", mailgun_api_key="mg-key",
                                 mailgun_api_url=fake.url + "/v3")  # domain: example.com
        transport = make_http_email_transport(settings)
        [outcome] = deliver_all(transport, [outgoing(settings)])
    assert fake.requests[0].path == "/v3/example.com/messages.mime"
    assert outcome.status == "deferred" and not outcome.counts_as_attempt
    assert "Domain not found" in outcome.detail and "MAILGUN_SENDER_DOMAIN" in outcome.detail
    assert isinstance(transport.last_error, TransportError)


# ---------------------------------------------------------------- Amazon SES


def ses(fake: SesFake, **overrides: Any) -> Settings:
    values = {"email_backend": "anymail.backends.amazon_ses.EmailBackend",
              "aws_region": "eu-west-1", "aws_access_key_id": "AKIDEXAMPLE",
              "aws_secret_access_key": "ses-secret", "aws_endpoint_url_sesv2": fake.url}
    return make_settings(**(values | overrides))


def test_ses_sends_the_raw_mime_signed_with_sigv4() -> None:
    with SesFake() as fake:
        settings = ses(fake, amazon_ses_configuration_set_name="itsm")
        out = outgoing(settings)
        [outcome] = deliver_all(make_http_email_transport(settings), [out])
    [request] = fake.requests
    assert fake.signatures_checked == 1
    assert request.header("Authorization").startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    payload = request.json()
    assert payload == {"Destination": {"ToAddresses": ["zoe@example.com"]},
                       "Content": {"Raw": {"Data": base64.b64encode(out.data).decode()}},
                       "ConfigurationSetName": "itsm"}
    assert "FromEmailAddress" not in payload  # it would replace the From header
    assert outcome.status == "sent" and outcome.provider_id.startswith("0102019")


def test_ses_temporary_credentials_sign_the_session_token() -> None:
    with SesFake() as fake:
        settings = ses(fake, aws_session_token="FwoGZXIvYXdzE-token")
        [outcome] = deliver_all(make_http_email_transport(settings), [outgoing(settings)])
    request = fake.requests[0]
    assert request.header("X-Amz-Security-Token") == "FwoGZXIvYXdzE-token"
    assert "x-amz-security-token" in request.header("Authorization")
    assert outcome.status == "sent"


def test_ses_wrong_secret_fails_the_signature_and_stops_the_run() -> None:
    with SesFake() as fake:
        settings = ses(fake, aws_secret_access_key="not-the-secret")
        transport = make_http_email_transport(settings)
        [outcome] = deliver_all(transport, [outgoing(settings)])
    assert outcome.status == "deferred" and outcome.code == 403
    assert "InvalidSignatureException" in outcome.detail
    assert "AWS_SECRET_ACCESS_KEY" in str(transport.last_error)
    assert "not-the-secret" not in outcome.detail


def test_ses_rejected_message_fails_that_recipient_only() -> None:
    with SesFake(rejected=frozenset({"unverified@example.com"})) as fake:
        settings = ses(fake)
        rejected, sent = sorted(deliver_all(make_http_email_transport(settings), [
            outgoing(settings, "unverified@example.com"), outgoing(settings)]),
            key=lambda o: o.key)  # unverified@ before zoe@
    assert rejected.status == "failed" and rejected.code == 400
    assert "MessageRejected" in rejected.detail and "not verified" in rejected.detail
    assert not rejected.refused_recipient and sent.status == "sent"


def test_ses_without_a_region_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    settings = make_settings(email_backend="ses", aws_access_key_id="AKID",
                             aws_secret_access_key="s")
    with pytest.raises(ConfigError, match="AWS_REGION"):
        make_http_email_transport(settings)


# ------------------------------------------------------------------ faults


def send(settings: Settings, messages: list[Outgoing]) -> tuple[list[Outcome],
                                                                 HttpEmailTransport]:
    transport = make_http_email_transport(settings)
    try:
        return deliver_all(transport, messages), transport
    finally:
        transport.close()


def test_429_then_202_waits_the_retry_after_and_sends() -> None:
    with SendGridFake() as fake:
        fake.script(Reply(429, {"Retry-After": "1"}, SENDGRID_RATE_LIMITED))
        settings = sendgrid(fake, http_connections=1)
        [outcome], transport = send(settings, [outgoing(settings)])
    first, second = fake.requests
    assert second.arrived - first.arrived >= 0.95
    assert outcome.status == "sent" and transport.gave_up is None


def test_a_long_retry_after_defers_without_using_a_retry() -> None:
    with SendGridFake() as fake:
        fake.script(Reply(429, {"Retry-After": "120"}, SENDGRID_RATE_LIMITED))
        settings = sendgrid(fake, http_connections=1)
        started = time.monotonic()
        outcomes, transport = send(settings, [outgoing(settings, key=1),
                                              outgoing(settings, "b@example.com", key=2)])
    assert time.monotonic() - started < 5
    first, second = outcomes
    assert first.status == "deferred" and first.code == 429 and not first.counts_as_attempt
    assert first.retry_after == 120.0 and "too many requests" in first.detail
    assert second.status == "deferred" and not second.counts_as_attempt
    assert second.retry_after is not None and second.retry_after > 100
    assert len(fake.requests) == 1 and "asked to wait 120 s" in (transport.gave_up or "")


def test_sendgrid_429_without_retry_after_reads_its_rate_limit_reset() -> None:
    with SendGridFake() as fake:
        reset = str(int(time.time()) + 600)
        fake.script(Reply(429, {"X-RateLimit-Reset": reset}, SENDGRID_RATE_LIMITED))
        settings = sendgrid(fake)
        [outcome], _ = send(settings, [outgoing(settings)])
    assert outcome.status == "deferred" and 590 <= (outcome.retry_after or 0) <= 600


def test_500_defers_as_an_attempt_and_honours_an_http_date_retry_after() -> None:
    with SendGridFake() as fake:
        later = formatdate(time.time() + 90, usegmt=True)
        fake.script(Reply(500, body=SENDGRID_SERVER_ERROR),
                    Reply(503, {"Retry-After": later}, SENDGRID_SERVER_ERROR))
        settings = sendgrid(fake, http_connections=1)
        outcomes, transport = send(settings, [outgoing(settings, key=1),
                                              outgoing(settings, key=2), outgoing(settings,
                                                                                  key=3)])
    failed, unavailable, sent = outcomes
    assert failed.status == "deferred" and failed.counts_as_attempt and failed.code == 500
    assert failed.detail == "500 internal error" and failed.retry_after is None
    assert unavailable.code == 503 and 80 <= (unavailable.retry_after or 0) <= 90
    assert sent.status == "sent" and transport.gave_up is None


def test_a_hung_server_times_out_and_defers_the_rest_untried() -> None:
    with SendGridFake() as fake:
        fake.script(Reply(202, delay=5))
        settings = sendgrid(fake, email_timeout=0.5, http_connections=1)
        started = time.monotonic()
        outcomes, transport = send(settings, [outgoing(settings, key=1),
                                              outgoing(settings, key=2)])
    assert time.monotonic() - started < 3
    assert [o.status for o in outcomes] == ["deferred", "deferred"]
    assert not any(o.counts_as_attempt for o in outcomes)
    assert transport.gave_up == ("SendGrid did not answer within 0.5 s (EMAIL_TIMEOUT); "
                                 "retried later")
    assert transport.last_error is None and len(fake.requests) == 1


def test_a_refused_connection_defers_without_using_a_retry() -> None:
    with SendGridFake() as fake:
        settings = sendgrid(fake)
    [outcome], transport = send(settings, [outgoing(settings)])  # the server is stopped
    assert outcome.status == "deferred" and not outcome.counts_as_attempt
    assert transport.gave_up == "cannot reach SendGrid (connection refused); retried later"


def test_a_revoked_key_is_a_configuration_error_naming_the_setting() -> None:
    with SendGridFake(api_key="SG.new-key") as fake:
        settings = sendgrid(fake, http_connections=1)  # still the old key
        outcomes, transport = send(settings, [outgoing(settings, key=n) for n in range(3)])
    assert [o.status for o in outcomes] == ["deferred"] * 3
    assert not any(o.counts_as_attempt for o in outcomes)
    error = transport.last_error
    assert isinstance(error, TransportError)
    assert str(error) == (
        "SendGrid refused the request (401 The provided authorization grant is invalid, "
        "expired, or revoked): check SENDGRID_API_KEY (a valid key with Mail Send access) "
        "and that DEFAULT_FROM_EMAIL is a verified sender identity.")
    assert transport.gave_up == str(error) and "SG.test-key" not in str(error)
    assert len(fake.requests) == 1


def test_a_slow_server_is_sent_to_over_several_connections_at_once() -> None:
    with SendGridFake() as fake:
        fake.script(*[Reply(202, {"X-Message-Id": f"id{n}"}, delay=0.3) for n in range(8)])
        settings = sendgrid(fake, http_connections=4)
        started = time.monotonic()
        outcomes, _ = send(settings, [outgoing(settings, key=n) for n in range(8)])
        elapsed = time.monotonic() - started
    assert [o.status for o in outcomes] == ["sent"] * 8
    assert elapsed < 1.5  # one at a time: 2.4 s
    assert fake.max_in_flight == 4
    assert fake.connections == 4  # 8 requests over 4 kept-alive connections


def test_the_rate_ceiling_applies() -> None:
    with SendGridFake() as fake:
        settings = sendgrid(fake)
        transport = make_http_email_transport(settings)
        outcomes: list[Outcome] = []
        transport.deliver([outgoing(settings, key=n) for n in range(3)],
                          RateLimiter(per_hour=2), outcomes.append)
    assert sorted(o.status for o in outcomes) == ["deferred", "sent", "sent"]
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0), (None, None), ("", None), ("soon", None)])
def test_retry_after_reads_seconds_and_http_dates(value: str | None,
                                                  seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert retry_after_seconds(value, now=now) == seconds


# ------------------------------------------------------------- configuration


def test_arctyks_env_selects_sendgrid(tmp_path: Any) -> None:
    (tmp_path / ".env").write_text("EMAIL_BACKEND=sendgrid_backend.SendgridBackend\n"
                                   "SENDGRID_API_KEY=SG.from-dotenv\n")
    settings = load_settings(environ={}, dotenv_path=tmp_path / ".env")
    assert settings.email_backend == "sendgrid"
    assert settings.sendgrid_api_key == "SG.from-dotenv"
    assert "SG.from-dotenv" not in repr(settings)


@pytest.mark.parametrize(("name", "backend"), [
    ("anymail.backends.sendgrid.EmailBackend", "sendgrid"),
    ("anymail.backends.amazon_ses.EmailBackend", "ses"),
    ("anymail.backends.amazon_sesv2.EmailBackend", "ses"),
    ("anymail.backends.postmark.EmailBackend", "postmark"),
    ("anymail.backends.mailgun.EmailBackend", "mailgun"),
    ("ses", "ses"), ("postmark", "postmark")])
def test_django_backend_names_select_the_provider(name: str, backend: str) -> None:
    settings = load_settings({"email_backend": name, "postmark_server_token": "t",
                              "mailgun_api_key": "k", "sendgrid_api_key": "k"},
                             environ={}, dotenv_path=None)
    assert settings.email_backend == backend


@pytest.mark.parametrize(("backend", "setting"), [
    ("sendgrid", "SENDGRID_API_KEY"), ("postmark", "POSTMARK_SERVER_TOKEN"),
    ("mailgun", "MAILGUN_API_KEY")])
def test_a_missing_key_is_one_sentence_naming_it(backend: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"EMAIL_BACKEND is {backend} but {setting} is not set"):
        load_settings({"email_backend": backend}, environ={}, dotenv_path=None)


def test_a_provider_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="SENDGRID_API_URL must start with https://"):
        load_settings({"sendgrid_api_url": "api.sendgrid.com"}, environ={}, dotenv_path=None)


def test_the_message_read_back_has_the_smtp_paths_headers() -> None:
    """The fields come from the bytes SMTP sends: their headers, parsed independently."""
    settings = make_settings()
    out = outgoing(settings)
    parsed = email.message_from_bytes(out.data, policy=policy.default)
    names = [name for name, _ in EXTRA_HEADERS]
    assert [n for n in parsed if n in names] == names


def test_test_email_through_sendgrid_shows_the_settings_masked() -> None:
    from contract_app import run_cli

    with SendGridFake() as fake:
        env = {"EMAIL_BACKEND": "sendgrid", "SENDGRID_API_KEY": "SG.test-key",
               "SENDGRID_API_URL": fake.url + "/v3/",
               "DEFAULT_FROM_EMAIL": "Help Desk <helpdesk@example.com>"}
        sent = run_cli(["test-email", "zoe@example.com"], env)
        refused = run_cli(["test-email", "zoe@example.com"],
                          env | {"SENDGRID_API_KEY": "SG.revoked"})
    assert sent.exit_code == 0, sent.stdout
    assert "SENDGRID_API_KEY     ********" in sent.stdout and "SG.test-key" not in sent.stdout
    assert "202 accepted by SendGrid" in sent.stdout
    assert refused.exit_code == 1 and "check SENDGRID_API_KEY" in refused.stdout
    assert fake.requests[0].json()["personalizations"] == [{"to": [{"email": "zoe@example.com"}]}]
