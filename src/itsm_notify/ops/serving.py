"""An HTTP server on the loopback interface, run in a thread of its own: the metrics
endpoint (``scheduler --metrics-port``) and the preview gallery (``preview --serve``)."""

from __future__ import annotations

import threading
from http.server import HTTPServer


class ServedInThread:
    """``server`` serving from a daemon thread named ``name`` from now until ``stop``
    (or the end of a ``with`` block), which returns when the thread has ended and the
    port is free."""

    def __init__(self, server: HTTPServer, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name=name, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ServedInThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
