"""The delivery log: one line per delivery attempt, in a rotating file."""

from __future__ import annotations

import logging
import os
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

delivery_log = logging.getLogger("itsm_notify.delivery")


class _RotatingLog(RotatingFileHandler):
    """RotatingFileHandler with Python 3.12's rollover test: Python 3.11 asks the file
    system whether the log is a regular file (two stat calls) before every line, which
    shows at thousands of emails a second; this asks only when the size says rotate."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            return False
        position = self.stream.tell()
        if not position or position + len(f"{self.format(record)}\n") < self.maxBytes:
            return False
        return not os.path.exists(self.baseFilename) or os.path.isfile(self.baseFilename)


def setup_delivery_log(path: str) -> None:
    """One line per delivery attempt to a rotating file (never a secret: only event
    ids, addresses, outcomes and server replies are logged)."""
    target = str(Path(path).resolve())
    for old in list(delivery_log.handlers):  # one delivery log file per process
        if not isinstance(old, RotatingFileHandler):
            continue
        if old.baseFilename == target:
            return
        delivery_log.removeHandler(old)
        old.close()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = _RotatingLog(path, maxBytes=10_000_000, backupCount=5, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))  # lines come stamped
    delivery_log.addHandler(handler)
    delivery_log.setLevel(logging.INFO)
    delivery_log.propagate = False


def log_deliveries(lines: list[str]) -> None:
    """Write delivery-log lines, each stamped with the time, in one write: a log record
    per email cost as much as the rest of its bookkeeping."""
    if lines and delivery_log.isEnabledFor(logging.INFO):
        now = time.time()
        stamp = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}," \
                f"{int(now * 1000) % 1000:03d}"
        delivery_log.info("\n".join(f"{stamp} {line}" for line in lines))
