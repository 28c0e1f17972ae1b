"""The benchmark's HTTP sink: SendGrid's v3 ``mail/send`` in its own process.

It answers ``202 Accepted`` with an ``X-Message-Id`` to every POST, after an optional
latency (a real API's round trip; ``time.sleep`` in the connection's own thread, so
other connections go on), counts the messages and records each one's Message-ID (read
from the JSON with a byte search, not a full parse, as bench/sink.py does for SMTP).
HTTP/1.1 with keep-alive: a client reuses its connections, as the SMTP sessions do.

Driven like bench/sink.py over a ``multiprocessing`` pipe: ``("latency", seconds)``,
``("reset",)``, ``("report",)`` → ``{"count", "ids", "connections", "cpu", "bytes"}``,
``("stop",)``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

from sink import HOST, _free_port

_MESSAGE_ID = re.compile(rb'"Message-ID":"(<[^"]*>)"')


@dataclass
class _State:
    latency: float = 0.0
    count: int = 0
    received_bytes: int = 0
    ids: list[bytes] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state = self.server.state
        match = _MESSAGE_ID.search(body)
        if state.latency:
            time.sleep(state.latency)
        with state.lock:
            state.count += 1
            state.received_bytes += len(body)
            state.ids.append(match.group(1) if match else b"")
            state.connections.add(self.client_address[1])
            number = state.count
        self.send_response(202)
        self.send_header("X-Message-Id", f"bench{number:017d}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


def _serve(port: int, control: Connection, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    server = _Server((HOST, port), _Handler)
    server.state = state = _State()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    control.send("ready")
    try:
        while True:
            command, *args = control.recv()
            if command == "latency":
                state.latency = float(args[0])
                control.send("ok")
            elif command == "reset":
                with state.lock:
                    state.count, state.received_bytes, state.ids = 0, 0, []
                    state.connections = set()
                control.send("ok")
            elif command == "report":
                with state.lock:
                    control.send({"count": state.count, "bytes": state.received_bytes,
                                  "ids": list(state.ids), "connections": len(state.connections),
                                  "cpu": time.process_time()})
            elif command == "stop":
                break
    finally:
        server.shutdown()


class HttpSinkProcess:
    """``with HttpSinkProcess() as sink:``; ``sink.url`` is its base URL."""

    def __init__(self, cpu: int | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._control, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(self.port, child, cpu), daemon=True, name="bench-http-sink")

    def __enter__(self) -> HttpSinkProcess:
        self._process.start()
        if not self._control.poll(30) or self._control.recv() != "ready":
            raise RuntimeError("the HTTP sink process did not start within 30 s")
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
