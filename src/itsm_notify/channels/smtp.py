"""Transports: where rendered messages go (console, a folder of .eml files, SMTP).

Every transport takes messages as they come (the sender keeps rendering while earlier
ones go out) and reports one ``Outcome`` per message as soon as it is known, through a
callback, so the sender can record it while the next ones go out.

SMTP keeps K sessions open for the whole run (not one per message, django-mailer's
cost) and sends over them in parallel, each session in its own thread; to a server that
offers PIPELINING a message's MAIL, RCPT and DATA go in one write. A reply is
classified: 2xx sent, 4xx deferred (retried later), 5xx failed at once. A session that
drops is reopened; when it drops again before a message got through, or when the server
cannot be reached, the messages left are deferred without using up a retry.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from collections.abc import Iterable, Iterator

from ..config import Settings
from ..errors import TransportError, describe_network_error
from ..states import DeliveryState
from .base import Answered, Outcome, Outgoing, RateLimiter, rate_limited

# --------------------------------------------------------------------------- SMTP


def classify_reply(code: int, text: bytes | str) -> tuple[DeliveryState, str]:
    """(status, detail) for an SMTP reply: 2xx sent, 4xx deferred, 5xx failed."""
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    detail = f"{code} {' '.join(message.split())}".strip()
    if 200 <= code < 300:
        return DeliveryState.SENT, detail
    if 500 <= code < 600:
        return DeliveryState.FAILED, detail
    return DeliveryState.DEFERRED, detail


class _Delivery:
    """What the SMTP sessions of one ``deliver`` call share: the messages, taken one at a
    time, and the verdict that the server is gone (then nobody else tries)."""

    def __init__(self, messages: Iterable[Outgoing]) -> None:
        self._messages: Iterator[Outgoing] = iter(messages)
        self._lock = threading.Lock()
        self.give_up_reason: str | None = None
        self.error: TransportError | None = None
        self.failure: BaseException | None = None
        """What ``answered`` raised: it ends the delivery and ``deliver`` raises it."""

    def next_message(self) -> Outgoing | None:
        with self._lock:
            return next(self._messages, None)

    def stop(self, failure: BaseException) -> None:
        """Take no more messages (those left are the caller's to retry)."""
        with self._lock:
            if self.failure is None:
                self.failure = failure
            self._messages = iter(())


class SmtpSession:
    """One SMTP connection, opened lazily and kept open across messages and batches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.smtp: smtplib.SMTP | None = None
        self.connections_opened = 0
        self.dropped = False
        """The connection dropped and no message got through since it was reopened."""

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.email_ssl_cafile)

    def connect(self) -> smtplib.SMTP:
        """Open, secure and log in. Raises OSError/SMTPException for a server that cannot
        be reached, TransportError for a configuration the server will not accept (a TLS
        failure included: an untrusted certificate, or implicit TLS to a STARTTLS port)."""
        try:
            return self._connect()
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(_untrusted(exc)) from None
        except ssl.SSLError as exc:
            raise TransportError(_tls_mismatch(exc)) from None

    def _connect(self) -> smtplib.SMTP:
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
                if not smtp.has_extn("starttls"):
                    raise TransportError(
                        f"The SMTP server does not offer STARTTLS on port {s.email_port}: "
                        "EMAIL_USE_TLS=true goes with port 587; for port 465 use "
                        "EMAIL_USE_SSL=true instead.")
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
        except BaseException:
            _quietly_close(smtp)
            raise
        self.smtp = smtp
        self.connections_opened += 1
        return smtp

    def send(self, out: Outgoing, delivery: _Delivery) -> Outcome:
        """Send one message, reopening a dropped session (but not twice in a row)."""
        while True:
            if delivery.give_up_reason:
                return Outcome(out.key, DeliveryState.DEFERRED, detail=delivery.give_up_reason,
                               counts_as_attempt=False)
            # A message that never reached a server does not use up a retry.
            try:
                smtp = self.smtp or self.connect()
            except TransportError as exc:
                delivery.error, delivery.give_up_reason = exc, str(exc)
                return Outcome(out.key, DeliveryState.DEFERRED, detail=str(exc),
                               counts_as_attempt=False)
            except (OSError, smtplib.SMTPException) as exc:
                delivery.give_up_reason = (
                    f"cannot reach the SMTP server {self.settings.email_host}:"
                    f"{self.settings.email_port} ({describe_network_error(exc)})")
                return Outcome(out.key, DeliveryState.DEFERRED, detail=delivery.give_up_reason,
                               counts_as_attempt=False)
            try:
                outcome = self._transmit(smtp, out)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self.close()
                if self.dropped:
                    delivery.give_up_reason = \
                        f"the SMTP connection dropped twice ({describe_network_error(exc)})"
                    return Outcome(out.key, DeliveryState.DEFERRED, detail=delivery.give_up_reason)
                self.dropped = True
                continue
            self.dropped = False
            return outcome

    def _transmit(self, smtp: smtplib.SMTP, out: Outgoing) -> Outcome:
        """One mail transaction: MAIL, RCPT, DATA. smtplib's ``sendmail`` parses both
        addresses again and runs a regular expression over the whole message for every
        email; the envelope addresses here are bare and checked, and a message needs the
        leading-period quoting only when a line starts with a period. Replies are
        classified as they come; a dropped connection raises SMTPServerDisconnected.

        A server that offers PIPELINING (RFC 2920; Postfix, Exim and the big providers
        do) gets MAIL, RCPT and DATA in one write and answers them together: one round
        trip instead of three before the message goes out."""
        if bare_line_break(out.data):
            return Outcome(out.key, DeliveryState.FAILED, detail=(
                "the message holds a bare CR or LF, which SMTP must never carry; it was not "
                "sent"))
        options = ""
        if out.needs_smtputf8:
            if not smtp.has_extn("smtputf8"):
                return Outcome(out.key, DeliveryState.FAILED, detail=(
                    "the address is not ASCII and the server does not offer SMTPUTF8"))
            smtp.command_encoding, options = "utf-8", " SMTPUTF8"
        if smtp.has_extn("size"):
            options += f" SIZE={len(out.data)}"
        # Every line is built (and refused if it holds a line break) before any is
        # written: a refusal halfway would leave the server inside a transaction.
        steps = [(_command("MAIL", f"FROM:<{out.sender}>{options}"), (250,)),
                 (_command("RCPT", f"TO:<{out.rcpt}>"), (250, 251)),
                 (_command("DATA", ""), (354,))]
        pipelined = smtp.has_extn("pipelining")
        if pipelined:
            smtp.send("".join(line for line, _ in steps))
        for index, (line, accepted) in enumerate(steps):
            if not pipelined:
                smtp.send(line)
            code, reply = smtp.getreply()
            if code not in accepted:
                if pipelined and code != 421:
                    self._end_group(smtp, replies_left=len(steps) - index - 1)
                return self._refused(smtp, out, code, reply, recipient=index == 1)
        smtp.send(_dot_stuffed(out.data) + b".\r\n")
        code, reply = smtp.getreply()
        if code != 250:
            return self._refused(smtp, out, code, reply)
        return Outcome(out.key, DeliveryState.SENT, code, classify_reply(code, reply)[1])

    def _end_group(self, smtp: smtplib.SMTP, replies_left: int) -> None:
        """After a refusal in a pipelined group, read the replies still to come (RFC 2920
        §3.1: every one must be checked). A DATA the server accepted all the same gets an
        empty message, which ends the transaction; a server that closes (421) or hangs up
        instead leaves the refusal as it was, and the session is reopened for the next
        message."""
        try:
            for left in range(replies_left, 0, -1):
                code, _ = smtp.getreply()
                if code == 421:  # the server is closing the session
                    self.close()
                    return
                if left == 1 and code == 354:  # the last reply of a group is DATA's
                    smtp.send(b".\r\n")
                    smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError):
            self.close()

    def _refused(self, smtp: smtplib.SMTP, out: Outgoing, code: int, reply: bytes, *,
                 recipient: bool = False) -> Outcome:
        """A refusal ends the transaction: RSET, or the session when the server is
        closing it (421), as smtplib does."""
        if code == 421:
            self.close()
        else:
            _reset(smtp)
        status, detail = classify_reply(code, reply)
        return Outcome(out.key, status, code, detail,
                       refused_recipient=recipient and status == DeliveryState.FAILED)

    def close(self) -> None:
        if self.smtp is not None:
            _quietly_close(self.smtp)
            self.smtp = None


def _untrusted(exc: ssl.SSLCertVerificationError) -> str:
    return (f"The SMTP server's certificate is not trusted ({exc.verify_message}): fix the "
            "server's certificate, or point EMAIL_SSL_CAFILE at your CA bundle.")


def _tls_mismatch(exc: ssl.SSLError) -> str:
    reason = exc.reason or str(exc)
    return (f"The TLS handshake with the SMTP server failed ({reason}): EMAIL_USE_TLS=true "
            "goes with port 587 (STARTTLS), EMAIL_USE_SSL=true with port 465 (implicit TLS); "
            "check EMAIL_PORT and those two settings.")


def _command(verb: str, argument: str) -> str:
    """One command line as smtplib's ``putcmd`` writes it, refusing a line break in it
    as ``putcmd`` does (its guard against command injection)."""
    line = f"{verb} {argument}\r\n" if argument else f"{verb}\r\n"
    if "\r" in line[:-2] or "\n" in line[:-2]:
        raise ValueError("command and arguments contain prohibited newline characters")
    return line


def bare_line_break(data: bytes) -> bool:
    """Whether ``data`` holds a CR or LF that is not part of a CRLF pair. SMTP must never
    carry one: a relay that ends DATA on ``<CR>.<CR><LF>`` or ``<LF>.<LF>`` would read
    the rest as a second message (SMTP smuggling). Three scans at C speed."""
    pairs = data.count(b"\r\n")
    return data.count(b"\r") != pairs or data.count(b"\n") != pairs


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 §4.5.2): a line that starts with a period
    gets another, and the message ends with a line break. ``data``'s lines end in CRLF
    (``bare_line_break`` is false for it)."""
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _reset(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPServerDisconnected):  # the next message reconnects
        smtp.rset()


def _quietly_close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


class SmtpTransport:
    """Sends over up to ``ITSM_SMTP_CONNECTIONS`` sessions kept open for the run."""

    name = "smtp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = [SmtpSession(settings) for _ in range(settings.smtp_connections)]
        self._delivery: _Delivery | None = None  # the current or last deliver()'s

    @property
    def gave_up(self) -> str | None:
        """Why delivery was cut short (server unreachable, login refused, the connection
        dropped twice), or None: the sender then claims no more events."""
        return self._delivery.give_up_reason if self._delivery else None

    @property
    def last_error(self) -> TransportError | None:
        """The error delivery gave up on, if it did."""
        return self._delivery.error if self._delivery else None

    @property
    def connections_opened(self) -> int:
        return sum(s.connections_opened for s in self.sessions)

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Answered) -> None:
        """Each session in its own thread takes the next message, sends it and reports
        the outcome; one session sends in the caller's thread."""
        delivery = self._delivery = _Delivery(messages)
        if len(self.sessions) == 1:
            self._work(self.sessions[0], delivery, limiter, answered)
        else:
            threads = [threading.Thread(target=self._work, daemon=True,
                                        args=(session, delivery, limiter, answered))
                       for session in self.sessions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if delivery.failure is not None:
            raise delivery.failure

    def _work(self, session: SmtpSession, delivery: _Delivery, limiter: RateLimiter,
              answered: Answered) -> None:
        while (out := delivery.next_message()) is not None:
            outcome = self._attempt(session, out, delivery, limiter)
            try:
                answered(outcome)
            except BaseException as exc:  # deliver() raises it once the sessions stop
                delivery.stop(exc)

    @staticmethod
    def _attempt(session: SmtpSession, out: Outgoing, delivery: _Delivery,
                 limiter: RateLimiter) -> Outcome:
        if delivery.give_up_reason:
            return Outcome(out.key, DeliveryState.DEFERRED, detail=delivery.give_up_reason,
                           counts_as_attempt=False)
        if not limiter.acquire():
            return rate_limited(out)
        try:
            return session.send(out, delivery)
        except Exception as exc:  # a bug must not lose the message
            return Outcome(out.key, DeliveryState.DEFERRED,
                           detail=f"unexpected error: {describe_network_error(exc)}")

    def close(self) -> None:
        for session in self.sessions:
            session.close()
