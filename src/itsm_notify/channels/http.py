"""What the HTTP channels share: one pooled client per run, parallel workers, and the
mapping of an HTTP answer to a transport ``Outcome``.

The outcome model is the SMTP path's (transport.py): accepted is ``sent``; a refusal
that may pass later is ``deferred`` (retried with backoff); one that will not is
``failed`` for that message; a configuration the provider will not accept (a rejected
key) is a ``TransportError``, after which the run stops and nothing is lost. On top:

* **429 Too Many Requests**: the provider's ceiling, not the message's fault. A short
  ``Retry-After`` (at most ``WAIT_IN_RUN_AT_MOST`` seconds; 1, 2, 4 s when it says
  none) is waited out in the run, by every worker sending to that endpoint, and the
  request sent again; a longer one defers the message, without using up a retry, with
  ``Outcome.retry_after`` set, and the endpoint's other messages with it.
* **5xx** (and 408): deferred, as an attempt (backoff), its ``Retry-After`` in
  ``Outcome.retry_after``.
* **A server that cannot be reached or does not answer** (refused connection, unknown
  host, untrusted certificate, a timeout): deferred without using up a retry, and the
  endpoint given up for the run, as SMTP does with a server that is down. A connection
  that drops before the answer (a kept-alive connection the server had closed) is
  reopened and the request sent once more; a second drop gives up too.

httpx keeps the connections alive across requests (``ITSM_HTTP_CONNECTIONS`` of them,
one per worker thread) and enforces the timeouts; its transport exceptions are told
apart here by type, never by their text, so no URL (a chat webhook's is a secret)
reaches an outcome.
"""

from __future__ import annotations

import email.utils
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar

import httpx

from ..errors import TransportError
from ..states import DeliveryState
from .base import Answered, Outcome

WAIT_IN_RUN_AT_MOST = 20.0
"""Seconds of Retry-After a run waits out before sending again; beyond, it defers."""
THROTTLED_RETRIES = 3
"""Times one message is sent again after a 429 within a run."""
REASON_LIMIT = 300
"""Characters of a provider's error text kept in an outcome's detail."""

try:
    USER_AGENT = f"itsm-notify/{version('itsm-notify')}"
except PackageNotFoundError:  # running from a source tree that was never installed
    USER_AGENT = "itsm-notify"


class Verdict(Enum):
    """What an HTTP answer means for the message that was sent."""

    ACCEPTED = "accepted"
    RETRY = "retry"
    """Deferred, using up an attempt (5xx, 408): the provider failed, maybe briefly."""
    THROTTLED = "throttled"
    """429: wait (in the run when short) and send again; no attempt used up."""
    REJECTED = "rejected"
    """Failed for this message, with the provider's reason."""
    REFUSED_RECIPIENT = "refused recipient"
    """Failed, and the address goes on the suppression list (a hard-bounced address)."""
    CONFIGURATION = "configuration"
    """The provider will not accept the configuration (a rejected key, an unverified
    sender): TransportError, the run stops, the message is deferred."""
    GONE = "gone"
    """The destination no longer exists (a deleted chat webhook): failed, and the
    destination should be disabled."""


@dataclass(frozen=True)
class Judgement:
    """An HTTP answer read: its verdict, the reason (for CONFIGURATION, the sentence
    with the fix), the provider's message id, the seconds it asked to wait."""

    verdict: Verdict
    reason: str
    provider_id: str | None = None
    retry_after: float | None = None


def default_verdict(status: int) -> Verdict:
    """The verdict a status alone gives, before a provider's own error codes refine it."""
    if 200 <= status < 300:
        return Verdict.ACCEPTED
    if status in (401, 403):
        return Verdict.CONFIGURATION
    if status == 429:
        return Verdict.THROTTLED
    if status == 408 or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECTED


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` value in seconds: delta-seconds, or an HTTP date (RFC 9110
    §10.2.3) from ``now`` (default: the clock). None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is GMT; a sloppy one has no zone
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it has none (or not valid JSON)."""
    try:
        return json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        return None


def error_text(response: httpx.Response) -> str:
    """``<status> <the provider's own words>``, read from the error shapes the providers
    use: SendGrid ``{"errors": [{"message"}]}``, Postmark ``{"Message"}``, Mailgun, SES
    and Mattermost ``{"message"}``, Teams (Logic Apps) ``{"error": {"code", "message"}}``,
    Rocket.Chat ``{"error": "..."}``; else the body's text, else the reason phrase."""
    body = json_body(response)
    words: list[str] = []
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            words += [str(e.get("message")) for e in errors
                      if isinstance(e, dict) and e.get("message")]
        for key in ("Message", "message"):
            if isinstance(body.get(key), str):
                words.append(body[key])
        error = body.get("error")
        if isinstance(error, dict):
            words += [str(error[k]) for k in ("code", "message") if error.get(k)]
        elif isinstance(error, str):
            words.append(error)
    if not words and body is None:
        words.append(response.content.decode("utf-8", "replace"))
    text = one_line("; ".join(w for w in words if w.strip()))
    return f"{response.status_code} {text or response.reason_phrase}".strip()


def describe_http_error(exc: BaseException) -> str:
    """What went wrong on the network, in a few words, from the exception types alone
    (httpx's messages can quote the URL, which may be a secret)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {cause.verify_message}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection without answering"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    return type(exc).__name__


def make_client(connections: int, timeout: float, **options: Any) -> httpx.Client:
    """One client for a run: up to ``connections`` kept-alive connections, each step of
    a request (connect, write, each read) limited to ``timeout`` seconds; redirects are
    not followed (an API that redirects a POST is misconfigured, and a redirect could
    carry a credential elsewhere)."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"User-Agent": USER_AGENT}, follow_redirects=False, **options)


# ------------------------------------------------------------------- endpoints


class Endpoint:
    """What a run knows of one HTTP endpoint (an email API, a chat destination): paused
    until a moment (a short Retry-After), or given up (unreachable, a rejected
    configuration, a long Retry-After). Shared by the workers; thread-safe."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._changed = threading.Condition()
        self._resume_at = 0.0
        self.gave_up: str | None = None
        self.error: TransportError | None = None

    def give_up(self, reason: str, error: TransportError | None = None) -> None:
        with self._changed:
            if self.gave_up is None:
                self.gave_up, self.error = reason, error
            self._changed.notify_all()

    def pause(self, seconds: float) -> None:
        """Send nothing to this endpoint for ``seconds`` (every worker waits)."""
        with self._changed:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)
            self._changed.notify_all()

    def paused_for(self) -> float:
        with self._changed:
            return max(0.0, self._resume_at - time.monotonic())

    def wait_turn(self) -> None:
        """Wait while the endpoint is paused (another worker may extend the pause),
        unless it is given up meanwhile."""
        with self._changed:
            while self.gave_up is None and (left := self._resume_at - time.monotonic()) > 0:
                self._changed.wait(left)


def untried(key: Hashable, endpoint: Endpoint) -> Outcome:
    """The deferral of a message not sent because its endpoint was given up: it uses
    up no retry, and waits at least as long as the endpoint asked."""
    return Outcome(key, DeliveryState.DEFERRED, detail=endpoint.gave_up or "",
                   counts_as_attempt=False, retry_after=endpoint.paused_for() or None)


class Exchange:
    """Sends one request and turns the answer into an Outcome, as the module says."""

    def __init__(self, client: httpx.Client, *, timeout: float, timeout_setting: str) -> None:
        self.client = client
        self.timeout = timeout
        self.timeout_setting = timeout_setting
        """The setting that sets ``timeout``, named when a server does not answer."""

    def send(self, key: Hashable, endpoint: Endpoint, build: Callable[[], httpx.Request],
             judge: Callable[[httpx.Response], Judgement]) -> Outcome:
        """``build`` makes the request afresh for every try (a signature's timestamp);
        ``judge`` reads the answer."""
        throttled = dropped = 0
        while True:
            if endpoint.gave_up:
                return untried(key, endpoint)
            endpoint.wait_turn()
            try:
                response = self.client.send(build())
            except httpx.TimeoutException:
                endpoint.give_up(f"{endpoint.label} did not answer within {self.timeout:g} s "
                                 f"({self.timeout_setting}); retried later")
                return untried(key, endpoint)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if dropped:
                    endpoint.give_up(f"the connection to {endpoint.label} dropped twice "
                                     f"({describe_http_error(exc)}); retried later")
                    return untried(key, endpoint)
                dropped += 1
                continue
            except httpx.TransportError as exc:
                endpoint.give_up(f"cannot reach {endpoint.label} "
                                 f"({describe_http_error(exc)}); retried later")
                return untried(key, endpoint)
            judgement = judge(response)
            code = response.status_code
            if judgement.verdict is Verdict.THROTTLED:
                wait = judgement.retry_after
                if wait is None:
                    wait = float(2 ** throttled)
                if wait <= WAIT_IN_RUN_AT_MOST and throttled < THROTTLED_RETRIES:
                    throttled += 1
                    endpoint.pause(wait)
                    continue
                endpoint.pause(wait)
                endpoint.give_up(f"{endpoint.label} asked to wait {wait:g} s "
                                 f"({judgement.reason}); retried later")
                return Outcome(key, DeliveryState.DEFERRED, code,
                               f"{judgement.reason} (asked to wait {wait:g} s)",
                               counts_as_attempt=False, retry_after=wait)
            return outcome_of(key, code, judgement, endpoint)


def outcome_of(key: Hashable, code: int, judgement: Judgement, endpoint: Endpoint) -> Outcome:
    """The outcome of an answer that is not a 429 (pure but for giving up ``endpoint``)."""
    verdict, reason = judgement.verdict, judgement.reason
    if verdict is Verdict.ACCEPTED:
        return Outcome(key, DeliveryState.SENT, code, reason, provider_id=judgement.provider_id)
    if verdict is Verdict.RETRY:
        return Outcome(key, DeliveryState.DEFERRED, code, reason, retry_after=judgement.retry_after)
    if verdict is Verdict.CONFIGURATION:
        endpoint.give_up(reason, TransportError(reason))
        return Outcome(key, DeliveryState.DEFERRED, code, reason, counts_as_attempt=False)
    if verdict is Verdict.THROTTLED:  # judged outside Exchange (a test, a probe)
        return Outcome(key, DeliveryState.DEFERRED, code, reason, counts_as_attempt=False,
                       retry_after=judgement.retry_after)
    return Outcome(key, DeliveryState.FAILED, code, reason,
                   refused_recipient=verdict is Verdict.REFUSED_RECIPIENT,
                   destination_gone=verdict is Verdict.GONE)


# --------------------------------------------------------------------- workers

T = TypeVar("T")


class _Feed(Generic[T]):
    """The items of one ``deliver`` call, taken one at a time by the workers."""

    def __init__(self, items: Iterable[T]) -> None:
        self._items: Iterator[T] = iter(items)
        self._lock = threading.Lock()
        self.failure: BaseException | None = None

    def take(self) -> tuple[bool, T | None]:
        with self._lock:
            for item in self._items:
                return True, item
            return False, None

    def stop(self, failure: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = failure
            self._items = iter(())


def run_workers(items: Iterable[T], workers: int, handle: Callable[[T], Outcome],
                answered: Answered, *, name: str = "itsm-notify-http") -> None:
    """``workers`` threads (the caller's own when one) each take the next item, handle
    it and report the outcome, until ``items`` is exhausted. ``items`` is advanced
    under a lock, one item at a time, so a generator may number what it yields. If
    ``answered`` raises, no further item is taken and this raises it once the workers
    stop (the items left are the caller's to retry), as ``SmtpTransport`` does."""
    feed: _Feed[T] = _Feed(items)

    def work() -> None:
        while True:
            more, item = feed.take()
            if not more:
                return
            outcome = handle(item)  # type: ignore[arg-type]
            try:
                answered(outcome)
            except BaseException as exc:  # raised below once every worker stopped
                feed.stop(exc)

    if workers == 1:
        work()
    else:
        threads = [threading.Thread(target=work, name=f"{name}-{n}", daemon=True)
                   for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if feed.failure is not None:
        raise feed.failure


def unexpected(key: Hashable, exc: Exception) -> Outcome:
    """A bug must not lose the message: deferred, with what happened."""
    return Outcome(key, DeliveryState.DEFERRED, detail=f"unexpected error: {type(exc).__name__}: "
                                         f"{one_line(str(exc), 200)}")
