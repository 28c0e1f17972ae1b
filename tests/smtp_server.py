"""A real, controllable SMTP server for the tests: aiosmtpd on 127.0.0.1.

The dev guide wants mail tested against a real server, not a mock of ``smtplib``.
``SmtpSink`` runs aiosmtpd's threaded ``Controller`` and lets a test

* read every accepted message (``messages``, ``messages_to()``, ``wait_for()``);
* count SMTP connections (``connection_count``) to prove a session is reused;
* refuse a recipient at RCPT TO with any 4xx/5xx reply, always or a few times
  (``refuse()``);
* drop a connection mid-batch without a reply (``drop_after()``);
* slow the server down (``latency``);
* take the server down and bring it back on the same port (``stop()``/``start()``);
* speak STARTTLS (``tls_context``), implicit TLS (``implicit_tls_context``) and
  AUTH PLAIN/LOGIN (``auth_credentials``; a wrong password gets 535);
* offer PIPELINING (RFC 2920), as real relays do, or not (``pipelining``), count the
  transactions whose commands came in one write (``pipelined``), and answer a DATA
  with 354 even when every recipient was refused (``data_without_recipients``), as
  some servers wrongly do.

Every control is thread-safe and may be changed while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import socket
import ssl
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["ReceivedMessage", "SmtpSink"]

HOST = "127.0.0.1"

# aiosmtpd logs every connection at INFO and harmless oddities (clients that hang up
# without QUIT, connections dropped on purpose) at WARNING; keep test output clean.
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass
class ReceivedMessage:
    """One message the sink accepted (answered 250 to)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage
    session_id: int
    #: the user name the client authenticated as, or None
    auth_login: str | None = None
    #: True when the message came over TLS (STARTTLS or implicit TLS)
    tls: bool = False
    received_at: float = field(default_factory=time.time)

    @property
    def to(self) -> str | None:
        """The To header (as a string), or None."""
        value = self.message["To"]
        return None if value is None else str(value)

    @property
    def subject(self) -> str | None:
        """The decoded Subject header, or None."""
        value = self.message["Subject"]
        return None if value is None else str(value)

    def __repr__(self) -> str:
        return (f"ReceivedMessage(mail_from={self.mail_from!r}, rcpt_tos={self.rcpt_tos!r}, "
                f"subject={self.subject!r}, session_id={self.session_id})")


@dataclass
class _Refusal:
    code: int
    text: str
    times: int | None  # None: always


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP protocol, one per connection, reporting to the sink."""

    def __init__(self, sink: SmtpSink, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink
        self.sink_session_id = 0
        self._sink_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again with the TLS transport after STARTTLS: count only the first.
        if not self._sink_seen:
            self._sink_seen = True
            self.sink_session_id = self.sink._connection_opened(self, transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._connection_closed(self)
        super().connection_lost(error)


class _Handler:
    """The aiosmtpd handler: hooks only, everything else lives in the sink.

    (Not the sink itself: aiosmtpd scans its handler for ``auth_*`` members and
    would take attributes such as ``auth_credentials`` for AUTH mechanisms.)
    """

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # the hook must do what the default does
        if self.sink.auth_credentials is None:
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        if self.sink.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reader = getattr(server, "_reader", None)  # the client's bytes not yet read
        if reader is not None and b"DATA" in bytes(getattr(reader, "_buffer", b"")):
            self.sink._count_pipelined()
        return await self.sink._handle_rcpt(envelope, address, rcpt_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self.sink._handle_data(server, session, envelope)


class _SinkController(Controller):
    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        self.sink = sink
        super().__init__(_Handler(sink), **kwargs)

    def factory(self) -> _SinkSMTP:
        return _SinkSMTP(self.sink, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Controller.start() opens one connection of its own to make asyncio build
        # the protocol. Open it from a known local address so the sink does not
        # count it as a client session (and a real client connecting meanwhile is).
        with ExitStack() as stack:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.settimeout(1.0)
            sock.bind((HOST, 0))
            self.sink._trigger_peer = sock.getsockname()
            sock.connect((self.hostname, self.port))
            if self.ssl_context:
                client_ctx = ssl.create_default_context()
                client_ctx.check_hostname = False
                client_ctx.verify_mode = ssl.CERT_NONE
                sock = stack.enter_context(client_ctx.wrap_socket(sock))
            sock.recv(1024)


class SmtpSink:
    """A controllable SMTP server on 127.0.0.1 that records what it accepts.

    ``SmtpSink(port=0, *, tls_context=None, require_starttls=False,
    auth_credentials=None, auth_require_tls=True, implicit_tls_context=None)``

    ``port=0`` picks a free port once; ``stop()`` then ``start()`` reuse it.
    Use as a context manager or call ``start()``/``stop()``.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        auth_credentials: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        implicit_tls_context: ssl.SSLContext | None = None,
        ready_timeout: float = 10.0,
        smtputf8: bool = True,
        pipelining: bool = True,
    ) -> None:
        self.host = HOST
        self.port = port or _free_port()
        self.tls_context = tls_context
        self.require_starttls = require_starttls
        self.auth_credentials = dict(auth_credentials) if auth_credentials is not None else None
        self.auth_require_tls = auth_require_tls
        self.implicit_tls_context = implicit_tls_context
        self.ready_timeout = ready_timeout
        self.smtputf8 = smtputf8
        #: offer PIPELINING in the EHLO reply (read at each EHLO)
        self.pipelining = pipelining
        #: seconds to wait before answering each DATA (asyncio.sleep: others go on)
        self.latency: float = 0.0
        #: answer DATA with 354 even when every recipient was refused (a faulty server);
        #: the message that follows is recorded with no recipient
        self.data_without_recipients = False
        self._pipelined = 0

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        self._refusals: dict[str, list[_Refusal]] = {}
        self._drop_remaining: int | None = None
        self._drops = 0
        self._connection_count = 0
        self._open: set[_SinkSMTP] = set()
        self._trigger_peer: tuple[str, int] | None = None
        self._controller: _SinkController | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> SmtpSink:
        """Start listening (again, on the same port). No-op if already running."""
        if self._controller is not None:
            return self
        smtp_kwargs: dict[str, Any] = {
            "hostname": self.host,  # bind address, read by Controller
            "server_hostname": "smtp-sink.test",  # the name in the banner / EHLO reply
            "ready_timeout": self.ready_timeout,
            "ssl_context": self.implicit_tls_context,
            "tls_context": self.tls_context,
            "require_starttls": bool(self.tls_context and self.require_starttls),
            # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; over
            # implicit TLS the session is encrypted from the start.
            "auth_require_tls": self.auth_require_tls and self.implicit_tls_context is None,
            "enable_SMTPUTF8": self.smtputf8,
        }
        if self.auth_credentials is not None:
            smtp_kwargs["authenticator"] = self._authenticate
        else:
            # Without credentials AUTH is not advertised (see _Handler.handle_EHLO)
            # and every mechanism is unknown (504).
            smtp_kwargs["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]
        controller = _SinkController(self, port=self.port, **smtp_kwargs)
        try:
            controller.start()
        finally:
            self._trigger_peer = None
        self._controller = controller
        return self

    def stop(self) -> None:
        """Go down: close every open connection and stop listening.

        New connections are refused until ``start()``. No-op if not running.
        """
        controller, self._controller = self._controller, None
        if controller is None:
            return

        async def abort_all() -> None:
            with self._lock:
                protocols = list(self._open)
            for proto in protocols:
                if proto.transport is not None:
                    proto.transport.abort()
                if proto._original_transport is not None:
                    proto._original_transport.abort()
            await asyncio.sleep(0.05)  # let connection_lost() run

        # If the loop is gone or busy, stop it anyway.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(abort_all(), controller.loop).result(5)
        controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpSink {self.host}:{self.port} {state}, {len(self._messages)} messages>"

    # ------------------------------------------------------------------ recorded

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the accepted messages, in order of acceptance."""
        with self._lock:
            return list(self._messages)

    def messages_to(self, address: str) -> list[ReceivedMessage]:
        """Accepted messages whose envelope recipients include ``address``."""
        wanted = address.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    def clear(self) -> None:
        """Forget the recorded messages (controls and counters stay)."""
        with self._lock:
            self._messages.clear()

    def reset(self) -> None:
        """Forget messages and refusals, cancel a pending drop, zero latency and counts."""
        with self._lock:
            self._messages.clear()
            self._refusals.clear()
            self._drop_remaining = None
            self._drops = 0
            self._connection_count = 0
            self._pipelined = 0
            self.latency = 0.0
            self.data_without_recipients = False

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` messages are recorded; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    @property
    def connection_count(self) -> int:
        """SMTP connections (sessions) opened by clients since construction."""
        with self._lock:
            return self._connection_count

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._open)

    @property
    def pipelined(self) -> int:
        """Transactions whose DATA command had arrived before their RCPT was answered."""
        with self._lock:
            return self._pipelined

    def _count_pipelined(self) -> None:
        with self._lock:
            self._pipelined += 1

    @property
    def drops(self) -> int:
        """How many connections ``drop_after()`` has dropped so far."""
        with self._lock:
            return self._drops

    # ------------------------------------------------------------------ controls

    def refuse(self, address: str, code: int, text: str, times: int | None = None) -> None:
        """Answer RCPT TO for ``address`` with ``f"{code} {text}"``.

        ``times=None`` refuses always; ``times=n`` refuses the next n attempts, then
        accepts again. Rules for one address queue up in the order given.
        """
        if not 400 <= int(code) <= 599:
            raise ValueError(f"refuse() needs a 4xx or 5xx code, not {code}")
        if times is not None and times < 1:
            raise ValueError("times must be None (always) or at least 1")
        with self._lock:
            self._refusals.setdefault(address.lower(), []).append(
                _Refusal(int(code), text, times))

    def accept(self, address: str | None = None) -> None:
        """Remove the refusal rules for ``address`` (for every address if None)."""
        with self._lock:
            if address is None:
                self._refusals.clear()
            else:
                self._refusals.pop(address.lower(), None)

    def drop_after(self, n: int) -> None:
        """After ``n`` more accepted messages, drop the next connection at DATA.

        The connection that then sends a message is closed abruptly once the
        message data arrived, with no reply; that message is not recorded.
        One-shot: later messages are accepted again.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._drop_remaining = n

    # ------------------------------------------------------- connection tracking

    def _connection_opened(self, proto: _SinkSMTP, transport: asyncio.BaseTransport) -> int:
        with self._lock:
            self._open.add(proto)
            if transport.get_extra_info("peername") == self._trigger_peer:
                return 0  # Controller.start()'s own probe
            self._connection_count += 1
            return self._connection_count

    def _connection_closed(self, proto: _SinkSMTP) -> None:
        with self._lock:
            self._open.discard(proto)

    # ------------------------------------------------------------- the protocol

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        creds = self.auth_credentials or {}
        ok = login in creds and creds[login] == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    async def _handle_rcpt(self, envelope: Envelope, address: str,
                           rcpt_options: list[str]) -> str:
        with self._lock:
            rules = self._refusals.get(address.lower())
            refusal = rules[0] if rules else None
            if refusal is not None and refusal.times is not None:
                refusal.times -= 1
                if refusal.times <= 0:
                    rules.pop(0)  # type: ignore[union-attr]
        if refusal is not None:
            if self.data_without_recipients:
                envelope.rcpt_tos.append("")  # aiosmtpd then takes the DATA
            return f"{refusal.code} {refusal.text}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def _handle_data(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            drop = self._drop_remaining == 0
            if drop:
                self._drop_remaining = None
                self._drops += 1
        if drop:
            assert server.transport is not None
            server.transport.abort()
            # connection_lost() cancels this handler; never answer.
            await asyncio.Event().wait()
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes):
            raw = envelope.content
        transport = server.transport
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=raw,
            message=email.message_from_bytes(raw, policy=email.policy.default),
            session_id=getattr(server, "sink_session_id", 0),
            auth_login=session.auth_data if session.authenticated else None,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
        )
        with self._changed:
            self._messages.append(received)
            if self._drop_remaining is not None and self._drop_remaining > 0:
                self._drop_remaining -= 1
            self._changed.notify_all()
        return "250 Message accepted for delivery"
