"""The pipeline's failure paths (engine/pipeline.py): a stage that fails stops the run with its
error instead of hanging it, and no more is sent than the permits allow; an
interrupted run drops what is still queued instead of sending it.

Pure: a transport that takes messages in memory, no database, no socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import pytest

from itsm_notify.channels.base import Outcome, Outgoing, RateLimiter
from itsm_notify.engine.pipeline import MAX_UNRECORDED, Batch, Pipeline


class MemoryTransport:
    """Takes each message at once (or after ``delay``) and answers 250."""

    name = "memory"
    gave_up: str | None = None

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[Hashable] = []

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Callable[[Outcome], None]) -> None:
        for message in messages:
            time.sleep(self.delay)
            self.sent.append(message.key)
            answered(Outcome(message.key, "sent", 250, "250 OK"))

    def close(self) -> None:
        pass


def messages(count: int) -> Iterator[Outgoing]:
    for n in range(count):
        yield Outgoing(key=(1, f"r{n}@example.com"), sender="desk@example.com",
                       rcpt=f"r{n}@example.com", data=b"Subject: x\r\n\r\nx\r\n")


def pipeline(transport: MemoryTransport, *, write: Callable[..., None] = lambda *_: None,
             route: Callable[[Outcome], Hashable] = lambda outcome: 1) -> Pipeline[Batch]:
    return Pipeline[Batch](transport, RateLimiter(), sessions=1, route=route, write=write,
                           finish=lambda _batch: None)


@pytest.mark.timeout(30)
def test_a_failed_write_stops_the_run_and_the_sending() -> None:
    committed: list[int] = []

    def write(outcomes: list[Outcome], *_: Any) -> None:
        if committed:
            raise RuntimeError("the database went away")
        committed.append(len(outcomes))

    transport = MemoryTransport()
    with pytest.raises(RuntimeError, match="the database went away"), \
            pipeline(transport, write=write) as running:
        running.open(Batch(keys=[1], unanswered=1000))
        running.send(messages(1000))
    # Sent but never recorded: at most the permits, one session's worth included.
    assert len(transport.sent) - committed[0] <= MAX_UNRECORDED + 1
    assert len(transport.sent) < 1000


@pytest.mark.timeout(30)
def test_a_failing_recorder_callback_does_not_hang_the_run() -> None:
    def route(outcome: Outcome) -> Hashable:
        raise LookupError(f"no batch for {outcome.key}")

    transport = MemoryTransport()
    with pytest.raises(LookupError, match="no batch"), \
            pipeline(transport, route=route) as running:
        running.open(Batch(keys=[1], unanswered=500))
        running.send(messages(500))
    assert len(transport.sent) <= MAX_UNRECORDED + 1


@pytest.mark.timeout(30)
def test_interrupted_what_is_queued_is_dropped_not_sent() -> None:
    transport = MemoryTransport(delay=0.02)
    queued = threading.Event()

    def rendered() -> Iterator[Outgoing]:
        yield from messages(40)
        queued.set()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), pipeline(transport) as running:
        running.open(Batch(keys=[1], unanswered=40))
        running.send(rendered())
    assert queued.is_set()
    assert len(transport.sent) < 10  # not the 40 queued (0.8 s at this transport's pace)
