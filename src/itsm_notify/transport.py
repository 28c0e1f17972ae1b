"""Transports: where rendered messages go (console, a folder of .eml files, SMTP).

Every transport takes a batch of messages and yields one ``Outcome`` per message as
soon as it is known, so the sender can record it before the next one goes out.

SMTP keeps K sessions open for the whole run (not one per message, django-mailer's
cost) and sends over them in parallel. A reply is classified: 2xx sent, 4xx deferred
(retried later), 5xx failed at once. A session that drops is reopened once; after a
second drop, or when the server cannot be reached, the rest of the batch is deferred.
"""

from __future__ import annotations

import queue
import smtplib
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import IO, Protocol, cast

from .config import Settings

SENT, DEFERRED, FAILED = "sent", "deferred", "failed"


@dataclass(frozen=True)
class Outgoing:
    """One message for one envelope recipient, as it goes on the wire."""

    key: Hashable
    sender: str
    rcpt: str
    data: bytes
    """The message's bytes (CRLF line ends): ``Renderer.compose``'s, with 8-bit headers
    only when the envelope needs SMTPUTF8."""

    @property
    def needs_smtputf8(self) -> bool:
        return not (self.sender.isascii() and self.rcpt.isascii())

    def parsed(self) -> EmailMessage:
        """The message read back, for the console and file backends."""
        return cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(self.data))


@dataclass(frozen=True)
class Outcome:
    key: Hashable
    status: str  # sent, deferred or failed
    code: int | None = None
    detail: str = ""
    refused_recipient: bool = False
    """True when the server refused the recipient address itself (5xx at RCPT): the
    address goes on the suppression list."""
    counts_as_attempt: bool = True
    """False when the message never reached the server through no fault of its own
    (the rate ceiling): such a deferral does not use up a retry."""


class Messages(Protocol):
    """What a transport takes: messages it can count and go through once. A list, or the
    sender's batch, which renders each message as a session takes it."""

    def __len__(self) -> int:
        ...

    def __iter__(self) -> Iterator[Outgoing]:
        ...


class TransportError(Exception):
    """The transport cannot work at all (login refused, TLS misconfigured): one sentence
    with the fix. The batch in hand is deferred, not lost."""


class Transport(Protocol):
    name: str
    gave_up: str | None
    """Why the last batch was abandoned (server unreachable, login refused), or None."""

    def deliver(self, messages: Messages, limiter: RateLimiter) -> Iterator[Outcome]:
        ...

    def close(self) -> None:
        ...


# --------------------------------------------------------------------- rate ceiling


@dataclass
class RateLimiter:
    """A ceiling on messages per second (spaced evenly) and per hour (a sliding window,
    seeded with what earlier runs sent in the last hour). Thread-safe."""

    per_second: float = 0.0
    per_hour: int = 0
    sent_last_hour: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next_slot: float = 0.0
    _hour_window: deque[float] = field(default_factory=deque, repr=False)

    def acquire(self) -> bool:
        """Wait for the next slot; False when this hour's budget is spent."""
        with self._lock:
            now = time.monotonic()
            if self.per_hour:
                while self._hour_window and self._hour_window[0] <= now - 3600:
                    self._hour_window.popleft()
                if self.sent_last_hour + len(self._hour_window) >= self.per_hour:
                    return False
                self._hour_window.append(now)
            if not self.per_second:
                return True
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.per_second
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return True

    @property
    def exhausted(self) -> bool:
        """True when this hour's budget is spent: a run stops claiming more events."""
        with self._lock:
            if not self.per_hour:
                return False
            while self._hour_window and self._hour_window[0] <= time.monotonic() - 3600:
                self._hour_window.popleft()
            return self.sent_last_hour + len(self._hour_window) >= self.per_hour


RATE_LIMITED = "hourly rate ceiling reached (ITSM_RATE_PER_HOUR); retried later"


def rate_limited(out: Outgoing) -> Outcome:
    """The deferral of a message the hourly ceiling held back: it uses up no retry."""
    return Outcome(out.key, DEFERRED, detail=RATE_LIMITED, counts_as_attempt=False)


# --------------------------------------------------------------- console and file


def _text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


class ConsoleTransport:
    """Prints each message readably: headers, the text part, the HTML part's size."""

    name = "console"
    gave_up: str | None = None  # nothing here can give up

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def deliver(self, messages: Messages, limiter: RateLimiter) -> Iterator[Outcome]:
        for out in messages:
            if not limiter.acquire():
                yield rate_limited(out)
                continue
            msg = out.parsed()
            html = msg.get_body(preferencelist=("html",))
            lines = [f"{'─' * 72}", f"Envelope: {out.sender} → {out.rcpt}"]
            lines += [f"{name}: {value}" for name, value in msg.items()]
            lines += ["", _text_part(msg).rstrip(),
                      f"[text/html alternative: {len(html.get_content()) if html else 0} "
                      "characters]", ""]
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            yield Outcome(out.key, SENT, code=250, detail="printed")

    def close(self) -> None:
        pass


class FileTransport:
    """Writes one .eml file per message. The file is named after the Message-ID, so a
    retried message replaces its file instead of adding a second one."""

    name = "file"
    gave_up: str | None = None  # nothing here can give up

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def deliver(self, messages: Messages, limiter: RateLimiter) -> Iterator[Outcome]:
        self.folder.mkdir(parents=True, exist_ok=True)
        for out in messages:
            if not limiter.acquire():
                yield rate_limited(out)
                continue
            msg_id = str(out.parsed()["Message-ID"]).strip("<>")
            name = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in msg_id)
            path = self.folder / f"{name}.eml"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(out.data)
            tmp.replace(path)
            yield Outcome(out.key, SENT, code=250, detail=str(path))

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- SMTP


def classify_reply(code: int, text: bytes | str) -> tuple[str, str]:
    """(status, detail) for an SMTP reply: 2xx sent, 4xx deferred, 5xx failed."""
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    detail = f"{code} {' '.join(message.split())}".strip()
    if 200 <= code < 300:
        return SENT, detail
    if 500 <= code < 600:
        return FAILED, detail
    return DEFERRED, detail


class _Batch:
    """What the SMTP sessions of one batch share: the work queue and the verdict that
    the server is gone (then nobody else tries).

    ``credits`` bounds the messages sent whose outcome the caller has not taken yet to
    one per session, so a worker killed at any moment has at most that many answers,
    plus those the sender had not yet recorded, unknown to the database."""

    def __init__(self, messages: Messages, sessions: int) -> None:
        # Taken one at a time: a lazy batch then renders the next message while the
        # other sessions wait for the server.
        self._jobs: Iterator[Outgoing] = iter(messages)
        self._jobs_lock = threading.Lock()
        self.results: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self.credits = threading.Semaphore(sessions)
        self.give_up_reason: str | None = None
        self.error: TransportError | None = None
        self.reconnected = False

    def next_job(self) -> Outgoing | None:
        with self._jobs_lock:
            return next(self._jobs, None)

    def abandon(self, sessions: int) -> None:
        """The caller stopped listening: drop the jobs left and wake every session."""
        with self._jobs_lock:
            self._jobs = iter(())
        for _ in range(sessions):
            self.credits.release()


class SmtpSession:
    """One SMTP connection, opened lazily and kept open across messages and batches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.smtp: smtplib.SMTP | None = None
        self.connections_opened = 0

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.email_ssl_cafile)

    def connect(self) -> smtplib.SMTP:
        """Open, secure and log in. Raises OSError/SMTPException for a server that cannot
        be reached, TransportError for a configuration the server will not accept."""
        s = self.settings
        if s.email_use_ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.email_host, s.email_port,
                                                  timeout=s.email_timeout,
                                                  context=self.tls_context())
        else:
            smtp = smtplib.SMTP(s.email_host, s.email_port, timeout=s.email_timeout)
        try:
            smtp.ehlo()
            if s.email_use_tls:
                smtp.starttls(context=self.tls_context())
                smtp.ehlo()
            if s.email_host_user:
                encrypted = s.email_use_tls or s.email_use_ssl
                if not encrypted and not s.email_allow_plaintext_auth:
                    raise TransportError(
                        "Refusing to send the SMTP password over an unencrypted connection: set "
                        "EMAIL_USE_TLS=true (port 587) or EMAIL_USE_SSL=true (port 465), or "
                        "EMAIL_ALLOW_PLAINTEXT_AUTH=true for a trusted local relay.")
                smtp.login(s.email_host_user, s.email_host_password)
        except smtplib.SMTPAuthenticationError as exc:
            _quietly_close(smtp)
            reply = classify_reply(exc.smtp_code, exc.smtp_error)[1]
            raise TransportError(
                f"The SMTP server refused the login ({reply}): "
                "check EMAIL_HOST_USER and EMAIL_HOST_PASSWORD (Gmail needs an app password)."
            ) from None
        except ssl.SSLCertVerificationError as exc:
            _quietly_close(smtp)
            raise TransportError(
                f"The SMTP server's certificate is not trusted ({exc.verify_message}): fix the "
                "server's certificate, or point EMAIL_SSL_CAFILE at your CA bundle.") from None
        except BaseException:
            _quietly_close(smtp)
            raise
        self.smtp = smtp
        self.connections_opened += 1
        return smtp

    def send(self, out: Outgoing, batch: _Batch) -> Outcome:
        """Send one message, reopening a dropped session once per batch."""
        for _ in range(2):
            if batch.give_up_reason:
                return Outcome(out.key, DEFERRED, detail=batch.give_up_reason,
                               counts_as_attempt=False)
            # A message that never reached a server does not use up a retry.
            try:
                smtp = self.smtp or self.connect()
            except TransportError as exc:
                batch.error, batch.give_up_reason = exc, str(exc)
                return Outcome(out.key, DEFERRED, detail=str(exc), counts_as_attempt=False)
            except (OSError, smtplib.SMTPException) as exc:
                batch.give_up_reason = (f"cannot reach the SMTP server "
                                        f"{self.settings.email_host}:{self.settings.email_port} "
                                        f"({_describe(exc)})")
                return Outcome(out.key, DEFERRED, detail=batch.give_up_reason,
                               counts_as_attempt=False)
            try:
                return self._transmit(smtp, out)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self.close()
                if batch.reconnected:
                    batch.give_up_reason = f"the SMTP connection dropped twice ({_describe(exc)})"
                    return Outcome(out.key, DEFERRED, detail=batch.give_up_reason)
                batch.reconnected = True
        return Outcome(out.key, DEFERRED, detail="the SMTP connection dropped")

    def _transmit(self, smtp: smtplib.SMTP, out: Outgoing) -> Outcome:
        options: list[str] = []
        if out.needs_smtputf8:
            if not smtp.has_extn("smtputf8"):
                return Outcome(out.key, FAILED, detail="the address is not ASCII and the server "
                               "does not offer SMTPUTF8")
            options = ["SMTPUTF8"]
        try:
            smtp.sendmail(out.sender, [out.rcpt], out.data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients.get(out.rcpt, (450, b"recipient refused"))
            status, detail = classify_reply(code, text)
            return Outcome(out.key, status, code, detail, refused_recipient=status == FAILED)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            status, detail = classify_reply(exc.smtp_code, exc.smtp_error)
            return Outcome(out.key, status, exc.smtp_code, detail)
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == -1:
                raise smtplib.SMTPServerDisconnected(str(exc.smtp_error)) from None
            status, detail = classify_reply(exc.smtp_code, exc.smtp_error)
            return Outcome(out.key, status, exc.smtp_code, detail)
        return Outcome(out.key, SENT, 250, "250 accepted")

    def close(self) -> None:
        if self.smtp is not None:
            _quietly_close(self.smtp)
            self.smtp = None


def _quietly_close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    return str(exc) or type(exc).__name__


class SmtpTransport:
    """Sends over up to ``ITSM_SMTP_CONNECTIONS`` sessions kept open for the run."""

    name = "smtp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = [SmtpSession(settings) for _ in range(settings.smtp_connections)]
        self.last_error: TransportError | None = None
        self.gave_up: str | None = None
        """Why the last batch was cut short (server unreachable, login refused, the
        connection dropped twice), or None: the sender then ends the run."""

    @property
    def connections_opened(self) -> int:
        return sum(s.connections_opened for s in self.sessions)

    def deliver(self, messages: Messages, limiter: RateLimiter) -> Iterator[Outcome]:
        """Yield each outcome as soon as it is known. Sending waits for the caller to take
        the outcomes already in hand, so at most one answer per session is unknown to it."""
        if not messages:
            return
        workers = min(len(self.sessions), len(messages))
        batch = _Batch(messages, workers)
        try:
            if workers == 1:
                while (out := batch.next_job()) is not None:
                    yield self._attempt(self.sessions[0], out, batch, limiter)
            else:
                yield from self._deliver_parallel(self.sessions[:workers], batch, limiter)
        finally:
            self.last_error, self.gave_up = batch.error, batch.give_up_reason

    def _deliver_parallel(self, sessions: list[SmtpSession], batch: _Batch,
                          limiter: RateLimiter) -> Iterator[Outcome]:
        threads = [threading.Thread(target=self._work, args=(session, batch, limiter),
                                    daemon=True) for session in sessions]
        for thread in threads:
            thread.start()
        finished = 0
        try:
            while finished < len(threads):
                outcome = batch.results.get()
                if outcome is None:
                    finished += 1
                else:
                    yield outcome
                    batch.credits.release()
        finally:
            if finished < len(threads):
                batch.abandon(len(threads))
            for thread in threads:
                thread.join()

    def _work(self, session: SmtpSession, batch: _Batch, limiter: RateLimiter) -> None:
        """One session's thread: take a credit, then a message, until none is left."""
        try:
            while True:
                batch.credits.acquire()
                out = batch.next_job()
                if out is None:
                    batch.credits.release()
                    return
                batch.results.put(self._attempt(session, out, batch, limiter))
        finally:
            batch.results.put(None)

    @staticmethod
    def _attempt(session: SmtpSession, out: Outgoing, batch: _Batch,
                 limiter: RateLimiter) -> Outcome:
        if batch.give_up_reason:
            return Outcome(out.key, DEFERRED, detail=batch.give_up_reason,
                           counts_as_attempt=False)
        if not limiter.acquire():
            return rate_limited(out)
        try:
            return session.send(out, batch)
        except Exception as exc:  # a bug must not lose the message
            return Outcome(out.key, DEFERRED, detail=f"unexpected error: {_describe(exc)}")

    def close(self) -> None:
        for session in self.sessions:
            session.close()


def make_transport(settings: Settings, stream: IO[str] | None = None) -> Transport:
    if settings.email_backend == "smtp":
        return SmtpTransport(settings)
    if settings.email_backend == "file":
        return FileTransport(settings.email_file_path)
    return ConsoleTransport(stream)
