"""A running ``itsm-notify`` command for the tests that need a process of its own (the
scheduler, two commands racing), and waiting for what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class ToolProcess:
    """``python -m itsm_notify ARGS`` in ``folder``, its output in files there (never a
    full pipe)."""

    def __init__(self, args: list[str], env: dict[str, str], folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        self._files: list[IO[bytes]] = [self.stdout_path.open("wb"), self.stderr_path.open("wb")]
        self.proc = subprocess.Popen([sys.executable, "-m", "itsm_notify", *args],
                                     env={**os.environ, **env}, cwd=folder,
                                     stdout=self._files[0], stderr=self._files[1])

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for handle in self._files:
            handle.close()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0,
               every: float = 0.05) -> bool:
    """Whether ``condition`` held within ``timeout`` seconds (asked every ``every``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
