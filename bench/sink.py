"""The benchmark's SMTP sink: aiosmtpd in its own process, so its CPU is not the sender's.

It accepts every message, counts them and records each one's Message-ID (read from the
header block with a byte search, not a full parse: the sink should cost the relay's
share and no more). An optional per-message latency (``asyncio.sleep`` before the 250
reply to DATA) stands in for a real relay's round trip; other connections go on. It
offers PIPELINING (RFC 2920) in its EHLO reply, as the relays people send through do
(Postfix, Exim, Microsoft 365, Gmail, Amazon SES), unless told not to; aiosmtpd reads
pipelined commands in order either way, it only does not say so.

The parent drives it over a ``multiprocessing`` pipe: ``("latency", seconds)``,
``("reset",)``, ``("report",)`` → ``{"count", "ids", "connections", "cpu"}`` (the sink's
CPU seconds so far), ``("stop",)``; the report also gives ``bytes`` received.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class _State:
    latency: float = 0.0
    count: int = 0
    received_bytes: int = 0
    ids: list[bytes] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler:
    def __init__(self, state: _State, pipelining: bool) -> None:
        self.state = state
        self.pipelining = pipelining

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # the hook must do what the default does
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        head = data[: data.find(b"\r\n\r\n")]
        match = _MESSAGE_ID.search(head)
        if self.state.latency:
            await asyncio.sleep(self.state.latency)
        with self.state.lock:
            self.state.count += 1
            self.state.received_bytes += len(data)
            self.state.ids.append(match.group(1) if match else b"")
        return "250 OK"


class _CountingSMTP(SMTP):
    def __init__(self, state: _State, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with state.lock:
            state.connections += 1


class _Controller(Controller):
    def __init__(self, state: _State, pipelining: bool, **kwargs: Any) -> None:
        self.state = state
        super().__init__(_Handler(state, pipelining), **kwargs)

    def factory(self) -> SMTP:
        return _CountingSMTP(self.state, self.handler, **self.SMTP_kwargs)


def _serve(port: int, control: Connection, cpu: int | None, pipelining: bool) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before the controller's thread starts
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    state = _State()
    controller = _Controller(state, pipelining, hostname=HOST, port=port,
                             server_hostname="bench-sink", data_size_limit=0,
                             auth_exclude_mechanism=["LOGIN", "PLAIN"])
    controller.start()
    with state.lock:
        state.connections = 0  # forget the controller's own start-up probe
    control.send("ready")
    try:
        while True:
            command, *args = control.recv()
            if command == "latency":
                state.latency = float(args[0])
                control.send("ok")
            elif command == "reset":
                with state.lock:
                    state.count, state.received_bytes, state.ids, state.connections = 0, 0, [], 0
                control.send("ok")
            elif command == "report":
                with state.lock:
                    control.send({"count": state.count, "bytes": state.received_bytes,
                                  "ids": list(state.ids),
                                  "connections": state.connections,
                                  "cpu": time.process_time()})
            elif command == "stop":
                break
    finally:
        controller.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def placement() -> tuple[int | None, set[int] | None]:
    """The sink's CPU and the client's CPUs: a relay runs on a machine of its own, so the
    sink gets a CPU of its own and the client (bare smtplib or send-pending) the others.
    Without that, the kernel often wakes the sink on the client's CPU (both ends of a
    loopback connection) and the run measures the scheduler. (None, None) on a machine
    with a single CPU or without CPU affinity."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[-1], set(cpus[:-1])


class SinkProcess:
    """Start with ``with SinkProcess() as sink:``; ``sink.port`` is where it listens. The
    sink runs on ``cpu`` alone when given, and offers PIPELINING unless told not to."""

    def __init__(self, cpu: int | None = None, *, pipelining: bool = True) -> None:
        self.port = _free_port()
        self._control, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(self.port, child, cpu, pipelining), daemon=True,
            name="bench-smtp-sink")

    def __enter__(self) -> SinkProcess:
        self._process.start()
        if not self._control.poll(30) or self._control.recv() != "ready":
            raise RuntimeError("the SMTP sink process did not start within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._control.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    def _ask(self, *command: Any) -> Any:
        self._control.send(command)
        return self._control.recv()

    def set_latency(self, seconds: float) -> None:
        self._ask("latency", seconds)

    def reset(self) -> None:
        self._ask("reset")

    def report(self) -> dict[str, Any]:
        return self._ask("report")  # type: ignore[no-any-return]
