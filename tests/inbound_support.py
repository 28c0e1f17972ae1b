"""A small real handler for the intake tests, and a worker to run intake in a subprocess.

``RecordingHandler`` does what the real handler must: in ONE transaction it records the
message (``store.record_message``, unique key) and writes its effect (a row in
``test_effects``, which has no unique key of its own). If the message was seen before,
the transaction is rolled back, effect included. So a message handled twice would show
as two effect rows: the tests count them.

Run as a script it is ``receive`` or ``fetch-mail`` in a process of its own::

    python tests/inbound_support.py receive DATABASE_URL < message.eml
    python tests/inbound_support.py fetch-mail DATABASE_URL   # ITSM_INBOUND_* from env

``ITSM_TEST_KILL_AFTER=N`` makes the worker SIGKILL itself right after its N-th commit:
a crash between the record and the move. ``ITSM_TEST_START_GATE=PATH`` makes it write
``PATH.ready-<pid>`` once imported and wait until PATH exists, so two workers start
their runs together; ``ITSM_TEST_HANDLE_SECONDS`` slows each commit down, so their
runs overlap for sure. ``ITSM_TEST_MOVE_SEEN_AFTER`` is fetch_mail's move_seen_after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from itsm_notify.config import load_settings
from itsm_notify.errors import ConfigError
from itsm_notify.inbound.handling import HandleResult, ReceivedMail, header_section
from itsm_notify.inbound.intake import fetch_mail_with_settings, receive_stdin
from itsm_notify.inbound.store import REJECTED, record_message
from itsm_notify.storage.database import make_engine
from itsm_notify.storage.schema import inbound_messages

test_metadata = sa.MetaData()
test_effects = sa.Table(
    "test_effects", test_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_key", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)


def create_tables(engine: sa.Engine) -> None:
    inbound_messages.create(engine, checkfirst=True)
    test_metadata.create_all(engine)


class RecordingHandler:
    """Records each message and one effect row in one transaction.

    ``reject`` names a reason to reject a message (None: handle it); ``after_commit``
    runs after each commit (a test raises there to crash between record and move).
    """

    def __init__(self, engine: sa.Engine, *,
                 reject: Callable[[ReceivedMail], str | None] = lambda m: None,
                 after_commit: Callable[[ReceivedMail], None] = lambda m: None) -> None:
        self.engine = engine
        self.reject = reject
        self.after_commit = after_commit

    def __call__(self, message: ReceivedMail) -> HandleResult:
        headers = BytesHeaderParser(policy=compat32).parsebytes(header_section(message.raw))
        reason = message.too_large_reason if message.too_large else self.reject(message)
        try:
            with self.engine.connect() as conn:
                recorded = record_message(
                    conn, message_key=message.key, source=message.source, size=message.size,
                    outcome=REJECTED if reason else "recorded", reason=reason,
                    message_id=message.message_id,
                    from_address=parseaddr(str(headers.get("From", "")))[1] or None,
                    subject=str(headers.get("Subject", "")) or None,
                    raw=message.raw if reason else None)
                if not recorded.new:
                    conn.rollback()
                    return HandleResult.already_seen(
                        rejected_before=recorded.previous_outcome == REJECTED,
                        recorded_at=recorded.previous_received_at)
                conn.execute(sa.insert(test_effects).values(message_key=message.key,
                                                            pid=os.getpid()))
                conn.commit()
        except DBAPIError as exc:
            return HandleResult.temporary_failure(f"database: {type(exc.orig).__name__}")
        self.after_commit(message)
        return HandleResult.rejected(reason) if reason else HandleResult.handled()


def make_message(n: int, *, message_id: bool = True, body: str = "") -> bytes:
    lines = [f"From: Requester {n} <user{n}@example.com>", "To: helpdesk@example.com",
             f"Subject: Printer {n} is broken", "Date: Mon, 01 Dec 2025 10:00:00 +0000"]
    if message_id:
        lines.append(f"Message-ID: <msg-{n}.{os.getpid()}@example.com>")
    lines += ["Content-Type: text/plain; charset=utf-8", "", body or f"Message number {n}.", ""]
    return "\r\n".join(lines).encode()


def recorded_rows(engine: sa.Engine) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(inbound_messages).order_by(inbound_messages.c.id)))


def effect_keys(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [key for (key,) in conn.execute(sa.select(test_effects.c.message_key))]


def _kill_after_commits(count: int) -> Callable[[ReceivedMail], None]:
    commits = 0

    def after_commit(message: ReceivedMail) -> None:
        nonlocal commits
        commits += 1
        if commits >= count:
            os.kill(os.getpid(), signal.SIGKILL)

    return after_commit


def _wait_at_gate(gate: Path) -> None:
    Path(f"{gate}.ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    command, database_url = argv
    engine = make_engine(database_url)
    kill_after = int(os.environ.get("ITSM_TEST_KILL_AFTER", "0"))
    pause = float(os.environ.get("ITSM_TEST_HANDLE_SECONDS", "0"))

    def after_commit(message: ReceivedMail) -> None:
        time.sleep(pause)

    handler = RecordingHandler(engine, after_commit=_kill_after_commits(kill_after)
                               if kill_after else after_commit)
    if gate := os.environ.get("ITSM_TEST_START_GATE"):
        _wait_at_gate(Path(gate))
    if command == "receive":
        return receive_stdin(sys.stdin.buffer, handler)
    try:
        report = fetch_mail_with_settings(
            load_settings(dotenv_path=None), handler,
            move_seen_after=float(os.environ.get("ITSM_TEST_MOVE_SEEN_AFTER", "60")))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(report)))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
