"""Email through a provider's HTTP API: SendGrid, Amazon SES, Postmark and Mailgun.

Selected by ``EMAIL_BACKEND`` with the names Django projects already use
(``sendgrid_backend.SendgridBackend``, ``anymail.backends.<provider>.EmailBackend``) or
the short ones (``sendgrid``, ``ses``, ``postmark``, ``mailgun``), and by the settings
django-anymail reads (``SENDGRID_API_KEY``, ``POSTMARK_SERVER_TOKEN``,
``MAILGUN_API_KEY``, ``MAILGUN_SENDER_DOMAIN``, ``MAILGUN_API_URL``, ...).

What goes out is the message the SMTP path sends (``Outgoing.data``): as it is where
the API takes raw MIME (SES v2 ``SendEmail`` with ``Content.Raw``, Mailgun
``messages.mime``), else as the provider's fields read back from it (SendGrid v3
``mail/send``, Postmark ``/email``: see ``mime.py``). Each provider's answers are read
with its own error shapes and codes into the outcome model of ``http.py``; the
provider's message id is kept (``Outcome.provider_id``).

None of the four send APIs takes an idempotency key, so a request whose answer is lost
(a timeout after the provider accepted it) can send twice on retry, as a dropped SMTP
connection can; every retry carries the same Message-ID header, which threading and
most mailbox providers' de-duplication key on.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from ..config import Settings
from ..errors import ConfigError, TransportError
from .base import Answered, Outcome, Outgoing, RateLimiter, rate_limited
from .http import (
    Endpoint,
    Exchange,
    Judgement,
    Verdict,
    default_verdict,
    error_text,
    json_body,
    make_client,
    retry_after_seconds,
    run_workers,
    unexpected,
    untried,
)
from .mime import Mailbox, MessageFields, read_message


class EmailApi(Protocol):
    """One provider: how to ask it to send a message, and how to read its answer."""

    label: str
    """The provider's name, as outcomes and errors say it."""

    def request(self, client: httpx.Client, out: Outgoing) -> httpx.Request:
        ...

    def judge(self, response: httpx.Response) -> Judgement:
        ...


def _compact_json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get("Retry-After"))


def _judge(response: httpx.Response, *, label: str, url_setting: str, refused: str,
           provider_id: str | None = None, reason: str | None = None) -> Judgement:
    """The verdict of a status, with the sentences every provider shares: ``refused`` is
    the fix for a 401/403 (the key), a 404 means a wrong API URL; ``reason`` is the
    provider's error as read (default: ``error_text``)."""
    status = response.status_code
    verdict = default_verdict(status)
    retry = _retry_after(response)
    if verdict is Verdict.ACCEPTED:
        return Judgement(verdict, f"{status} accepted by {label}", provider_id, retry)
    reason = reason or error_text(response)
    if verdict is Verdict.CONFIGURATION:
        return Judgement(verdict, f"{label} refused the request ({reason}): {refused}.")
    if status == 404:
        return Judgement(Verdict.CONFIGURATION, f"{label} answered {reason} at "
                         f"{response.request.url.copy_with(query=None)}: check {url_setting}.")
    return Judgement(verdict, reason, retry_after=retry)


def _base(url: str) -> str:
    return url if url.endswith("/") else url + "/"


# ---------------------------------------------------------------------- SendGrid

SENDGRID_RESERVED = frozenset({"x-sg-id", "x-sg-eid", "received", "dkim-signature"})
"""Headers SendGrid's ``headers`` object refuses, besides those it sets from its own
fields (``mime.OWN_FIELDS``: From, To, Subject, Reply-To, Content-Type, ...)."""


def _sendgrid_mailbox(mailbox: Mailbox) -> dict[str, str]:
    return {"email": mailbox.address, "name": mailbox.name} if mailbox.name \
        else {"email": mailbox.address}


def sendgrid_payload(fields: MessageFields) -> dict[str, Any]:
    """The v3 ``mail/send`` body of one message to one recipient."""
    payload: dict[str, Any] = {
        "personalizations": [{"to": [_sendgrid_mailbox(fields.to)]}],
        "from": _sendgrid_mailbox(fields.sender),
        "subject": fields.subject,
    }
    if len(fields.reply_to) == 1:
        payload["reply_to"] = _sendgrid_mailbox(fields.reply_to[0])
    elif fields.reply_to:
        payload["reply_to_list"] = [_sendgrid_mailbox(m) for m in fields.reply_to]
    # "text/plain first, then text/html" is an order SendGrid requires.
    payload["content"] = [{"type": kind, "value": value} for kind, value in
                          (("text/plain", fields.text), ("text/html", fields.html)) if value]
    headers = {name: value for name, value in fields.headers
               if name.lower() not in SENDGRID_RESERVED}
    if headers:
        payload["headers"] = headers
    return payload


class SendGridApi:
    """SendGrid v3 ``POST /v3/mail/send``: 202 with the id in ``X-Message-Id``; errors
    as ``{"errors": [{"message", "field", "help"}]}``; a 429 says when its window resets
    in ``X-RateLimit-Reset`` (epoch seconds) rather than ``Retry-After``."""

    label = "SendGrid"

    def __init__(self, settings: Settings) -> None:
        self.url = _base(settings.sendgrid_api_url) + "mail/send"
        self.key = settings.sendgrid_api_key

    def request(self, client: httpx.Client, out: Outgoing) -> httpx.Request:
        body = _compact_json(sendgrid_payload(read_message(out.data, out.rcpt)))
        return client.build_request("POST", self.url, content=body, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json",
            "Accept": "application/json"})

    def judge(self, response: httpx.Response) -> Judgement:
        judgement = _judge(
            response, label=self.label, url_setting="SENDGRID_API_URL",
            provider_id=response.headers.get("X-Message-Id"),
            refused="check SENDGRID_API_KEY (a valid key with Mail Send access) and that "
                    "DEFAULT_FROM_EMAIL is a verified sender identity")
        reset = response.headers.get("X-RateLimit-Reset", "").strip()
        if judgement.verdict is Verdict.THROTTLED and judgement.retry_after is None \
                and reset.isdigit():
            return Judgement(judgement.verdict, judgement.reason,
                             retry_after=max(0.0, int(reset) - time.time()))
        return judgement


# ---------------------------------------------------------------------- Postmark

POSTMARK_CONFIG_CODES = {
    10: "set POSTMARK_SERVER_TOKEN to the Server API token of the Postmark server",
    400: "add DEFAULT_FROM_EMAIL as a sender signature (or its domain) in Postmark",
    401: "confirm DEFAULT_FROM_EMAIL's sender signature in Postmark",
    405: "the Postmark account may not send (out of credits?): see its billing page",
    412: "the Postmark account is pending approval: it may only send to its own domain",
    413: "the Postmark account may not send: see its dashboard",
}
"""Postmark ``ErrorCode``s that say the configuration is wrong, with the fix."""
POSTMARK_INACTIVE_RECIPIENT = 406
"""The address hard-bounced or complained: Postmark will not send to it."""


def postmark_payload(fields: MessageFields) -> dict[str, Any]:
    """The ``POST /email`` body of one message to one recipient."""
    payload: dict[str, Any] = {"From": fields.sender.formatted(), "To": fields.to.formatted(),
                               "Subject": fields.subject}
    if fields.reply_to:
        payload["ReplyTo"] = ", ".join(m.formatted() for m in fields.reply_to)
    if fields.text is not None:
        payload["TextBody"] = fields.text
    if fields.html is not None:
        payload["HtmlBody"] = fields.html
    if fields.headers:
        payload["Headers"] = [{"Name": name, "Value": value} for name, value in fields.headers]
    return payload


class PostmarkApi:
    """Postmark ``POST /email``: ``{"MessageID", "ErrorCode": 0}``; errors as
    ``{"ErrorCode", "Message"}``, mostly with 422, the ErrorCode telling them apart."""

    label = "Postmark"

    def __init__(self, settings: Settings) -> None:
        self.url = _base(settings.postmark_api_url) + "email"
        self.token = settings.postmark_server_token

    def request(self, client: httpx.Client, out: Outgoing) -> httpx.Request:
        body = _compact_json(postmark_payload(read_message(out.data, out.rcpt)))
        return client.build_request("POST", self.url, content=body, headers={
            "X-Postmark-Server-Token": self.token, "Content-Type": "application/json",
            "Accept": "application/json"})

    def judge(self, response: httpx.Response) -> Judgement:
        body = json_body(response)
        body = body if isinstance(body, dict) else {}
        code = body.get("ErrorCode")
        if isinstance(code, int) and code in POSTMARK_CONFIG_CODES:
            return Judgement(Verdict.CONFIGURATION, f"Postmark refused the request "
                             f"({error_text(response)}, ErrorCode {code}): "
                             f"{POSTMARK_CONFIG_CODES[code]}.")
        if code == POSTMARK_INACTIVE_RECIPIENT:
            return Judgement(Verdict.REFUSED_RECIPIENT, f"{error_text(response)} "
                             f"(ErrorCode {code})")
        if 200 <= response.status_code < 300 and code not in (0, None):
            return Judgement(Verdict.REJECTED, f"{error_text(response)} (ErrorCode {code})")
        message_id = body.get("MessageID")
        return _judge(response, label=self.label, url_setting="POSTMARK_API_URL",
                      provider_id=message_id if isinstance(message_id, str) else None,
                      refused="set POSTMARK_SERVER_TOKEN to the Server API token of the "
                              "Postmark server")


# ----------------------------------------------------------------------- Mailgun


class MailgunApi:
    """Mailgun ``POST /v3/<domain>/messages.mime`` (multipart: ``to`` and the MIME
    ``message``), HTTP basic auth ``api:<key>``: ``{"id", "message": "Queued. Thank
    you."}``; errors as ``{"message"}`` (a bare ``Forbidden`` for a wrong key or an
    EU domain asked of the US API)."""

    label = "Mailgun"

    def __init__(self, settings: Settings) -> None:
        domain = settings.mailgun_sender_domain or settings.from_domain
        self.url = f"{_base(settings.mailgun_api_url)}{quote(domain, safe='')}/messages.mime"
        credentials = f"api:{settings.mailgun_api_key}".encode()
        self.authorization = f"Basic {base64.b64encode(credentials).decode('ascii')}"

    def request(self, client: httpx.Client, out: Outgoing) -> httpx.Request:
        return client.build_request(
            "POST", self.url, data={"to": out.rcpt},
            files={"message": ("message.mime", out.data, "message/rfc822")},
            headers={"Authorization": self.authorization, "Accept": "application/json"})

    def judge(self, response: httpx.Response) -> Judgement:
        body = json_body(response)
        if response.status_code == 200 and not (isinstance(body, dict) and "id" in body):
            # Mailgun answers a wrong path with 200 and its "Mailgun Magnificent API" page.
            return Judgement(Verdict.CONFIGURATION, "Mailgun answered without a message id "
                             f"at {response.request.url}: check MAILGUN_SENDER_DOMAIN and "
                             "MAILGUN_API_URL.")
        return _judge(response, label=self.label, url_setting="MAILGUN_SENDER_DOMAIN and "
                      "MAILGUN_API_URL (https://api.eu.mailgun.net/v3 for an EU domain)",
                      provider_id=str(body["id"]) if isinstance(body, dict) and "id" in body
                      else None,
                      refused="check MAILGUN_API_KEY, and MAILGUN_API_URL for an EU domain "
                              "(https://api.eu.mailgun.net/v3)")


# ------------------------------------------------------------------- Amazon SES

SES_CONFIG_ERRORS = {
    "MailFromDomainNotVerifiedException": "verify DEFAULT_FROM_EMAIL's domain (or its MAIL "
                                          "FROM domain) in Amazon SES in AWS_REGION",
    "AccountSuspendedException": "the SES account is suspended: see the SES console",
    "SendingPausedException": "sending is paused for the SES account or configuration set",
    "NotFoundException": "AMAZON_SES_CONFIGURATION_SET_NAME names no configuration set in "
                         "AWS_REGION",
}
SES_QUOTA_ERROR = "LimitExceededException"
"""The account's daily sending quota (or the like) is spent: retried later, unused."""
SES_QUOTA_WAIT = 3600.0


def ses_error_type(response: httpx.Response) -> str:
    """SES's error name: the ``x-amzn-ErrorType`` header (``Name:namespace``), or the
    body's ``__type``/``code``."""
    kind = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0].strip()
    body = json_body(response)
    if not kind and isinstance(body, dict):
        kind = str(body.get("__type") or body.get("code") or "")
    return kind.rsplit("#", 1)[-1]


def ses_payload(out: Outgoing, configuration_set: str | None) -> dict[str, Any]:
    """The SES v2 ``SendEmail`` body: the raw MIME, the envelope recipient. No
    FromEmailAddress: SES would replace the From header (and its display name) with it."""
    payload: dict[str, Any] = {
        "Destination": {"ToAddresses": [out.rcpt]},
        "Content": {"Raw": {"Data": base64.b64encode(out.data).decode("ascii")}},
    }
    if configuration_set:
        payload["ConfigurationSetName"] = configuration_set
    return payload


class SesApi:
    """Amazon SES v2 ``POST /v2/email/outbound-emails``, signed with AWS Signature
    Version 4 by botocore (the ``ses`` extra), with credentials from the settings or
    botocore's chain (environment, shared files, SSO, container or instance role)."""

    label = "Amazon SES"

    def __init__(self, settings: Settings) -> None:
        try:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
            from botocore.session import Session
        except ImportError:
            raise ConfigError("EMAIL_BACKEND is ses but botocore is not installed: "
                              "pip install 'itsm-notify[ses]'.") from None
        self._sigv4, self._aws_request = SigV4Auth, AWSRequest
        session = Session()
        region = settings.aws_region or session.get_config_variable("region")
        if not region:
            raise ConfigError("EMAIL_BACKEND is ses but no AWS region is set: set AWS_REGION "
                              "(e.g. eu-west-1) to the region SES sends from.")
        self.region = str(region)
        if settings.aws_access_key_id:
            self.credentials: Any = Credentials(settings.aws_access_key_id,
                                                settings.aws_secret_access_key,
                                                settings.aws_session_token or None)
        else:
            self.credentials = session.get_credentials()
        if self.credentials is None:
            raise ConfigError("EMAIL_BACKEND is ses but no AWS credentials were found: set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile "
                              "or role.")
        endpoint = settings.aws_endpoint_url_sesv2 or f"https://email.{self.region}.amazonaws.com"
        self.url = endpoint.rstrip("/") + "/v2/email/outbound-emails"
        self.configuration_set = settings.amazon_ses_configuration_set_name

    def request(self, client: httpx.Client, out: Outgoing) -> httpx.Request:
        body = _compact_json(ses_payload(out, self.configuration_set))
        aws = self._aws_request(method="POST", url=self.url, data=body,
                                headers={"Content-Type": "application/json"})
        # Frozen per request: refreshable credentials (a role's) renew themselves here.
        self._sigv4(self.credentials.get_frozen_credentials(), "ses", self.region).add_auth(aws)
        return client.build_request("POST", self.url, content=body, headers=dict(aws.headers))

    def judge(self, response: httpx.Response) -> Judgement:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            message_id = body.get("MessageId") if isinstance(body, dict) else None
            return Judgement(Verdict.ACCEPTED, f"{response.status_code} accepted by Amazon SES",
                             str(message_id) if message_id else None)
        kind = ses_error_type(response)
        reason = f"{error_text(response)} ({kind})" if kind else error_text(response)
        if kind in SES_CONFIG_ERRORS:
            return Judgement(Verdict.CONFIGURATION, f"Amazon SES refused to send ({reason}): "
                             f"{SES_CONFIG_ERRORS[kind]}.")
        if kind == SES_QUOTA_ERROR:
            return Judgement(Verdict.THROTTLED, reason, retry_after=SES_QUOTA_WAIT)
        return _judge(response, label=self.label, url_setting="AWS_ENDPOINT_URL_SESV2",
                      reason=reason,
                      refused=f"check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the "
                              f"AWS profile or role), and that they may ses:SendEmail in "
                              f"{self.region}")


# --------------------------------------------------------------------- transport

APIS: Mapping[str, type[SendGridApi] | type[PostmarkApi] | type[MailgunApi] | type[SesApi]] = {
    "sendgrid": SendGridApi, "postmark": PostmarkApi, "mailgun": MailgunApi, "ses": SesApi}


class HttpEmailTransport:
    """Sends each message with one API request, up to ``connections`` at a time over
    one pooled client; drop-in for ``SmtpTransport`` (same outcomes, ``gave_up`` and
    ``last_error``)."""

    def __init__(self, name: str, api: EmailApi, *, connections: int, timeout: float,
                 client: httpx.Client | None = None) -> None:
        self.name = name
        self.api = api
        self.connections = connections
        self.client = client or make_client(connections, timeout)
        self._exchange = Exchange(self.client, timeout=timeout, timeout_setting="EMAIL_TIMEOUT")
        self._endpoint: Endpoint | None = None  # the current or last deliver()'s

    @property
    def gave_up(self) -> str | None:
        """Why delivery was cut short (the provider unreachable, the key rejected, a long
        rate limit), or None: the sender then claims no more events."""
        return self._endpoint.gave_up if self._endpoint else None

    @property
    def last_error(self) -> TransportError | None:
        """The configuration error delivery gave up on, if it did (the CLI: exit 2)."""
        return self._endpoint.error if self._endpoint else None

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Answered) -> None:
        endpoint = self._endpoint = Endpoint(self.api.label)

        def handle(out: Outgoing) -> Outcome:
            try:
                if endpoint.gave_up:
                    return untried(out.key, endpoint)
                if not limiter.acquire():
                    return rate_limited(out)
                return self._exchange.send(out.key, endpoint,
                                           lambda: self.api.request(self.client, out),
                                           self.api.judge)
            except Exception as exc:  # a bug must not lose the message
                return unexpected(out.key, exc)

        run_workers(messages, self.connections, handle, answered,
                    name=f"itsm-notify-{self.name}")

    def close(self) -> None:
        self.client.close()


def make_http_email_transport(settings: Settings,
                              client: httpx.Client | None = None) -> HttpEmailTransport:
    """The transport of ``EMAIL_BACKEND`` (sendgrid, ses, postmark or mailgun)."""
    api = APIS[settings.email_backend](settings)
    return HttpEmailTransport(settings.email_backend, api,
                              connections=settings.http_connections,
                              timeout=settings.email_timeout, client=client)
