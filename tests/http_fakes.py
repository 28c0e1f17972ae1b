"""Small HTTP servers on loopback that speak the providers' APIs, for the channel tests.

Each is a ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive, a thread per connection) that
records every request as it arrived (method, path, headers in order, raw body, the
client's port, when it came) and answers as the real service does: its paths, its auth
check, its success body and its error bodies (``http_fakes.<Provider>Fake``). A test can
``script`` the next answers (a 429 with ``Retry-After``, a 500, a delay longer than the
client's timeout) before the service's own behaviour resumes.

    with SendGridFake() as sendgrid:
        sendgrid.script(Reply(429, {"Retry-After": "1"}, SENDGRID_RATE_LIMITED))
        ... send to sendgrid.url + "/v3/" ...
        assert sendgrid.requests[1].json()["subject"] == "..."
"""

from __future__ import annotations

import email
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from itsm_notify.channels import signing

HOST = "127.0.0.1"


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: int
    arrived: float

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, tuple[bytes, str | None]]:
        """A multipart/form-data body (RFC 7578), cut at its boundary byte for byte: field
        name → (content, filename)."""
        content_type = self.header("Content-Type") or ""
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        assert content_type.startswith("multipart/form-data") and boundary, content_type
        delimiter = b"--" + boundary.group(1).encode()
        parts = self.body.split(b"\r\n" + delimiter)
        assert parts[0].startswith(delimiter) and parts[-1].startswith(b"--"), "not closed"
        fields = {}
        for part in [parts[0][len(delimiter):], *parts[1:-1]]:
            head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
            disposition = email.message_from_bytes(head + b"\r\n\r\n", policy=policy.HTTP)
            name = disposition.get_param("name", header="content-disposition")
            fields[str(name)] = (content, disposition.get_filename())
        return fields


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    delay: float = 0.0
    """Seconds to wait before answering (a slow or hung server)."""

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, dict | list):
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
            return json.dumps(self.body).encode(), headers
        if isinstance(self.body, str):
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            return self.body.encode(), headers
        return self.body or b"", headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Recorded(self.command, self.path, list(self.headers.items()), body,
                           self.client_address[1], time.monotonic())
        reply = self.server.fake.handle(request)
        if reply.delay and self.server.fake.stopping.wait(reply.delay):
            return  # shutting down
        content, headers = reply.encoded()
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
        except OSError:  # the client gave up waiting (a timeout test)
            self.close_connection = True
        finally:
            self.server.fake.finished()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-request is part of the tests


class FakeServer:
    """A started server (``with``); subclasses answer in ``answer``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._script: deque[Reply | Callable[[Recorded], Reply]] = deque()
        self._in_flight = 0
        self.max_in_flight = 0
        self._server = _Server((HOST, 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def connections(self) -> int:
        """Distinct client connections the requests came over."""
        return len({r.client_port for r in self.requests})

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, *replies: Reply | Callable[[Recorded], Reply]) -> None:
        """Answer the next requests with these, in order, then as the service does."""
        with self._lock:
            self._script.extend(replies)

    def handle(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            scripted = self._script.popleft() if self._script else None
        if scripted is None:
            return self.answer(request)
        return scripted(request) if callable(scripted) else scripted

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def answer(self, request: Recorded) -> Reply:
        return Reply(200, body="ok")


# ------------------------------------------------------------------ email APIs

SENDGRID_UNAUTHORIZED = {"errors": [{"field": None, "message": "The provided authorization "
                                     "grant is invalid, expired, or revoked", "help": None}]}
SENDGRID_RATE_LIMITED = {"errors": [{"field": None, "message": "too many requests"}]}
SENDGRID_SERVER_ERROR = {"errors": [{"field": None, "message": "internal error"}]}


class SendGridFake(FakeServer):
    """``POST /v3/mail/send`` with ``Authorization: Bearer <key>``: 202, no body, the
    message id in ``X-Message-Id``; a wrong key 401; a body without the required
    fields 400 with SendGrid's ``{"errors": [{"message", "field", "help"}]}``."""

    def __init__(self, api_key: str = "SG.test-key") -> None:
        super().__init__()
        self.api_key = api_key

    def answer(self, request: Recorded) -> Reply:
        if request.path != "/v3/mail/send":
            return Reply(404, body={"errors": [{"message": "Not Found"}]})
        if request.header("Authorization") != f"Bearer {self.api_key}":
            return Reply(401, body=SENDGRID_UNAUTHORIZED)
        payload = request.json()
        for name in ("personalizations", "from", "subject", "content"):
            if name not in payload:
                return Reply(400, body={"errors": [{"message": f"The {name} field is "
                                                    "required.", "field": name, "help": None}]})
        return Reply(202, {"X-Message-Id": uuid.uuid4().hex[:22]})


class PostmarkFake(FakeServer):
    """``POST /email`` with ``X-Postmark-Server-Token``: 200 ``{"To", "SubmittedAt",
    "MessageID", "ErrorCode": 0, "Message": "OK"}``; a wrong token 401 ErrorCode 10; an
    inactive recipient 422 ErrorCode 406."""

    def __init__(self, token: str = "pm-server-token", *,
                 inactive: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.token = token
        self.inactive = inactive

    def answer(self, request: Recorded) -> Reply:
        if request.header("X-Postmark-Server-Token") != self.token:
            return Reply(401, body={"ErrorCode": 10, "Message": "No Account or Server API "
                                    "tokens were supplied in the HTTP headers."})
        payload = request.json()
        address = re.sub(r".*<(.*)>", r"\1", payload["To"])
        if address in self.inactive:
            return Reply(422, body={"ErrorCode": 406, "Message": "You tried to send to "
                                    f"recipient(s) that have been marked as inactive. Found "
                                    f"inactive addresses: {address}."})
        return Reply(200, body={"To": payload["To"], "SubmittedAt": "2026-12-06T10:00:00Z",
                                "MessageID": str(uuid.uuid4()), "ErrorCode": 0,
                                "Message": "OK"})


class MailgunFake(FakeServer):
    """``POST /v3/<domain>/messages.mime`` (multipart ``to`` and ``message``), basic auth
    ``api:<key>``: 200 ``{"id", "message": "Queued. Thank you."}``; a wrong key 401
    ``Forbidden``; an unknown domain 404 ``{"message": "Domain not found: ..."}``."""

    def __init__(self, api_key: str = "mg-key", domain: str = "mg.example.com") -> None:
        super().__init__()
        self.api_key = api_key
        self.domain = domain

    def answer(self, request: Recorded) -> Reply:
        import base64

        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if request.header("Authorization") != expected:
            return Reply(401, body="Forbidden")
        match = re.fullmatch(r"/v3/([^/]+)/messages\.mime", request.path)
        if not match or match.group(1) != self.domain:
            domain = match.group(1) if match else "?"
            return Reply(404, body={"message": f"Domain not found: {domain}"})
        return Reply(200, body={"id": f"<{uuid.uuid4().hex}@{self.domain}>",
                                "message": "Queued. Thank you."})


class SesFake(FakeServer):
    """Amazon SES v2 ``POST /v2/email/outbound-emails``: checks the AWS Signature
    Version 4 by recomputing it with botocore from the request as it arrived (the
    headers it names as signed, the raw body, the ``X-Amz-Date``), as SES does; 200
    ``{"MessageId"}``; an unknown key id 403 ``UnrecognizedClientException``, a wrong
    signature 403 ``InvalidSignatureException``; ``rejected`` addresses 400
    ``MessageRejected``."""

    def __init__(self, access_key: str = "AKIDEXAMPLE", secret_key: str = "ses-secret",
                 region: str = "eu-west-1", *, rejected: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.rejected = rejected
        self.signatures_checked = 0

    @staticmethod
    def error(status: int, kind: str, message: str) -> Reply:
        return Reply(status, {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/"
                                                  "com.amazon.coral.service/"},
                     {"message": message})

    def answer(self, request: Recorded) -> Reply:
        problem = self.check_signature(request)
        if problem is not None:
            return problem
        if request.path != "/v2/email/outbound-emails":
            return self.error(404, "NotFoundException", "no such operation")
        payload = request.json()
        [address] = payload["Destination"]["ToAddresses"]
        if address in self.rejected:
            return self.error(400, "MessageRejected", "Email address is not verified. The "
                              f"following identities failed the check in region "
                              f"{self.region.upper()}: {address}")
        return Reply(200, body={"MessageId": f"0102019{uuid.uuid4().hex}-000000"})

    def check_signature(self, request: Recorded) -> Reply | None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        authorization = request.header("Authorization") or ""
        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/"
                             r"aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})",
                             authorization)
        if not match:
            return self.error(403, "IncompleteSignatureException", "Authorization header "
                              "requires 'Credential', 'Signature' and 'SignedHeaders'.")
        key_id, day, region, service, signed, signature = match.groups()
        if key_id != self.access_key:
            return self.error(403, "UnrecognizedClientException", "The security token included "
                              "in the request is invalid.")
        amz_date = request.header("X-Amz-Date") or ""
        if region != self.region or service != "ses" or not amz_date.startswith(day):
            return self.error(403, "InvalidSignatureException", "Credential should be scoped "
                              f"to a valid region and service: {region}/{service}.")
        names = signed.split(";")
        headers = {name: request.header(name) or "" for name in names}
        aws = AWSRequest(method=request.method, url=f"http://{headers['host']}{request.path}",
                         data=request.body, headers=headers)
        aws.context["timestamp"] = amz_date
        token = request.header("X-Amz-Security-Token")
        auth = SigV4Auth(Credentials(self.access_key, self.secret_key, token), "ses",
                         self.region)
        expected = auth.signature(auth.string_to_sign(aws, auth.canonical_request(aws)), aws)
        self.signatures_checked += 1
        if signature != expected or auth.signed_headers(auth.headers_to_sign(aws)) != signed:
            return self.error(403, "InvalidSignatureException", "The request signature we "
                              "calculated does not match the signature you provided.")
        return None


# -------------------------------------------------------------- chat webhooks


class SlackFake(FakeServer):
    """An incoming webhook (``/services/T…/B…/…``): ``ok``, or Slack's error code as the
    body (``invalid_payload`` when the JSON has neither text nor blocks)."""

    path = "/services/T0001/B0001/abcdefghijklmnopqrstuvwx"

    def answer(self, request: Recorded) -> Reply:
        if request.path != self.path:
            return Reply(404, body="no_service")
        try:
            payload = request.json()
        except ValueError:
            return Reply(400, body="invalid_payload")
        if not payload.get("text") and not payload.get("blocks"):
            return Reply(400, body="invalid_payload")
        return Reply(200, body="ok")


class TeamsFake(FakeServer):
    """A Workflows "when a webhook request is received" trigger: 202 Accepted, no body,
    ``x-ms-workflow-run-id``, for the ``attachments`` envelope of an Adaptive Card; 400
    ``{"error": {"code", "message"}}`` otherwise (as a Logic App answers)."""

    path = "/workflows/0a1b/triggers/manual/paths/invoke?api-version=1&sig=s3cr3t"

    def answer(self, request: Recorded) -> Reply:
        if request.path != self.path:
            return Reply(404, body={"error": {"code": "WorkflowNotFound",
                                              "message": "The workflow could not be found."}})
        payload = request.json()
        attachments = payload.get("attachments") or [{}]
        card = attachments[0]
        if payload.get("type") != "message" or card.get("contentType") != \
                "application/vnd.microsoft.card.adaptive" or \
                card.get("content", {}).get("type") != "AdaptiveCard":
            return Reply(400, body={"error": {"code": "InvalidRequestContent",
                                              "message": "Not an Adaptive Card message."}})
        return Reply(202, {"x-ms-workflow-run-id": "08584" + uuid.uuid4().hex[:20]})


class MattermostFake(FakeServer):
    """``/hooks/<id>``: 200 ``ok``; 400 with Mattermost's AppError JSON for no text."""

    path = "/hooks/xw1d6y3gwf8x5k4tj6r1h5oyzo"

    def answer(self, request: Recorded) -> Reply:
        if request.path != self.path:
            return Reply(404, body={"id": "app.webhooks.get_incoming.app_error",
                                    "message": "Unable to get the webhook.",
                                    "status_code": 404})
        if not request.json().get("text"):
            return Reply(400, body={"id": "web.incoming_webhook.text.app_error",
                                    "message": "No text specified", "status_code": 400})
        return Reply(200, body="ok")


class RocketChatFake(FakeServer):
    """``/hooks/<id>/<token>``: 200 ``{"success": true}``; ``{"success": false, "error"}``
    otherwise."""

    path = "/hooks/6xJq2gH3/kC7f9ZpQrT"

    def answer(self, request: Recorded) -> Reply:
        if request.path != self.path:
            return Reply(404, body={"success": False, "error": "Invalid integration id or "
                                    "token provided."})
        if not request.json().get("text"):
            return Reply(400, body={"success": False, "error": "No text"})
        return Reply(200, body={"success": True})


class WebhookReceiver(FakeServer):
    """A receiver of the signed JSON webhook that does what the docs tell receivers to:
    checks the signature over the raw body and the timestamp's age (``signing.verify``,
    with this receiver's clock), answers 400 to a forged, altered or replayed request,
    and 200 to a delivery id it has already processed without processing it again."""

    path = "/itsm/events"

    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.secret = secret
        self.clock = clock
        self.processed: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []

    def answer(self, request: Recorded) -> Reply:
        headers = dict(request.headers)
        try:
            signing.verify(self.secret, headers, request.body, now=self.clock())
        except signing.InvalidSignature as exc:
            self.refused.append(str(exc))
            return Reply(400, body={"error": str(exc)})
        delivery = request.header(signing.ID_HEADER) or ""
        if delivery not in self.processed:
            self.processed[delivery] = request.json()
        return Reply(200, body={"received": delivery})

