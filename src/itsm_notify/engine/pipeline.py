"""send-pending's stages after planning, each in its own thread, overlapping:

    main thread             a bounded queue        the transport's SMTP       the recorder
    claims, plans and  ──►  of rendered      ──►   sessions (K threads)  ──►  (one thread)
    renders batches         messages               send and answer            writes answers

The main thread renders the next messages, and claims and plans the next batch, while
the sessions send; the recorder writes the answers in groups, renews the leases of the
batches in flight on a timer, and finishes each batch (its events done, failed or back
to pending) once all its answers are written. The stages wait on one another only
through the queue and the permits (and the main thread, before claiming a second batch,
on a first answer from the server).

The permits bound what a killed worker can send twice (issue 3): a session takes one
before it sends a message, and the recorder gives them back once the answers are
committed, so at most ``MAX_UNRECORDED`` plus one per session of the messages a server
accepted are ever unknown to the database. The sessions never wait for the database
otherwise: while the recorder writes, the permits left over keep them sending.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..channels.base import Outcome, Outgoing, RateLimiter, Transport

MAX_UNRECORDED = 20
"""Answers accepted by a server and not yet written, beyond one per session: the most a
killed worker can send twice."""
WRITE_AT = 16
"""The recorder writes once this many answers wait (or WRITE_WITHIN has passed): few
transactions, and the permits left over keep the sessions sending while it writes."""
WRITE_WITHIN = 0.2
"""Seconds an answer waits at most to be written when fewer than WRITE_AT wait."""
QUEUE_AHEAD = 64
"""Rendered messages waiting for a session: enough to cover planning the next batch."""

@contextmanager
def on_one_cpu(enabled: bool) -> Iterator[None]:
    """Keep this thread, and the threads it starts meanwhile, on the CPU it runs on.

    The pipeline's threads take turns on Python's GIL: the process never runs Python on
    two CPUs at once. Spread over several CPUs, every hand-over between them (a
    session's reply, the next message, answers to record) is a wakeup across CPUs, which
    costs more than the work handed over, above all in virtual machines: pinned, the
    benchmark's send-pending spends about a third less CPU per email and sends a third
    faster (bench/README.md). What runs without the GIL here (the database drivers, TLS)
    is small. Linux only; elsewhere, or when ``enabled`` is False, nothing changes."""
    allowed = _affinity()
    cpu = _current_cpu()
    if not enabled or allowed is None or cpu is None or cpu not in allowed:
        yield
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _current_cpu() -> int | None:
    """The CPU this thread last ran on (field 39 of /proc/thread-self/stat)."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        return int(stat.rpartition(")")[2].split()[36])
    except (OSError, ValueError, IndexError):
        return None


B = TypeVar("B", bound="Batch")


@dataclass(eq=False)
class Batch:
    """What the pipeline knows of a batch: what its answers are routed by (send-pending:
    its event ids), and its unanswered messages."""

    keys: list[Hashable]
    unanswered: int
    """Messages handed to the pipeline whose answer is not written yet."""


@dataclass
class _Answer:
    outcome: Outcome
    sent: bool
    """Whether the message went to the transport (and so holds a permit)."""


@dataclass
class _Shared(Generic[B]):
    answers: list[_Answer] = field(default_factory=list)
    batches: dict[Hashable, B] = field(default_factory=dict)  # key → its open batch
    open: list[B] = field(default_factory=list)  # in claim order
    closing: bool = False
    reached_server: bool = False


class Pipeline(Generic[B]):
    """Carries rendered messages to the transport and answers to the database.

    ``route(outcome)`` gives the key of the batch an answer belongs to;
    ``write(answers, batches, renew)`` turns answers into database rows and commits them
    (with each answer's batch; ``renew`` lists the keys whose leases to renew in the same
    transaction, every ``renew_every`` seconds, or is empty); ``finish(batch)`` ends a
    batch whose answers are all written. All three run in the recorder's thread only.
    With ``one_cpu``, the calling thread and the pipeline's run on one CPU (see
    ``on_one_cpu``) until the pipeline is left as a context manager."""

    def __init__(self, transport: Transport, limiter: RateLimiter, *, sessions: int,
                 route: Callable[[Outcome], Hashable],
                 write: Callable[[list[Outcome], list[B], list[Hashable]], None],
                 finish: Callable[[B], None] = lambda _batch: None,
                 renew_every: float = float("inf"), one_cpu: bool = False) -> None:
        self.transport = transport
        self._route, self._write, self._finish = route, write, finish
        self._renew_every = renew_every
        self.permits = threading.Semaphore(MAX_UNRECORDED + sessions)
        self._queue: queue.Queue[Outgoing | None] = queue.Queue(maxsize=QUEUE_AHEAD)
        self._state: _Shared[B] = _Shared()
        self._changed = threading.Condition()
        self.failure: BaseException | None = None
        self._recorder = threading.Thread(target=self._record, name="itsm-notify-recorder",
                                          daemon=True)
        self._sender = threading.Thread(target=self._deliver, args=(limiter,),
                                        name="itsm-notify-transport", daemon=True)
        self._pinned = ExitStack()  # the threads started now inherit the pinning
        self._pinned.enter_context(on_one_cpu(one_cpu))
        try:
            self._recorder.start()
            self._sender.start()
        except BaseException:
            self._pinned.close()  # __exit__ will not run: unpin the caller here
            raise

    # ------------------------------------------------------------ the main thread

    def open(self, batch: B) -> None:
        """Announce a batch before handing over its messages (or with none to send)."""
        with self._changed:
            self._state.open.append(batch)
            for key in batch.keys:
                self._state.batches[key] = batch
            self._changed.notify_all()

    def send(self, messages: Iterable[Outgoing]) -> None:
        """Queue messages for the sessions as ``messages`` renders them; waits while the
        queue is full."""
        for message in messages:
            self._put(message)
            # Rendering holds the GIL, and a session whose server answered waits for it:
            # let it have the GIL between two messages (by default it would wait for the
            # interpreter's 5 ms switch interval, the server idle meanwhile).
            time.sleep(0)

    def _put(self, item: Outgoing | None) -> None:
        """Queue messages (None: the end), waiting while the queue is full; messages are
        refused once another stage failed, the end never is."""
        while True:
            if item is not None:
                self._check()
            elif not self._sender.is_alive():
                return
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def settle(self, outcome: Outcome) -> None:
        """An answer that needs no sending (the email could not be rendered)."""
        self._add(outcome, sent=False)

    def ready_for_more(self) -> bool:
        """Whether to claim another batch. Until a server has answered in this run, one
        batch at a time: a server that is down then costs one batch, not the backlog."""
        with self._changed:
            self._changed.wait_for(lambda: self._state.reached_server or not self._state.open
                                   or self.failure is not None or bool(self.transport.gave_up))
        return self.failure is None and not self.transport.gave_up

    def __enter__(self) -> Pipeline[B]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Close the pipeline, then the transport, and unpin the calling thread.
        Interrupted (Ctrl-C), what is still queued is dropped instead of sent."""
        try:
            self.close(send_queued=kind is not KeyboardInterrupt)
        finally:
            try:
                self.transport.close()
            finally:
                self._pinned.close()

    def close(self, *, send_queued: bool = True) -> None:
        """Send what is queued (or, interrupted, drop it: those emails stay for a later
        run), write every answer, finish every batch; then raise what went wrong in
        another stage, if anything did."""
        try:
            while not send_queued:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._put(None)
        finally:
            self._sender.join()
            with self._changed:
                self._state.closing = True
                self._changed.notify_all()
            self._recorder.join()
        self._check()

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    # ------------------------------------------------------------ the sessions

    def _messages(self) -> Iterator[Outgoing]:
        while (message := self._queue.get()) is not None:
            self.permits.acquire()
            if self.failure is not None:
                return  # its answer could not be recorded: it stays for a later run
            yield message

    def _deliver(self, limiter: RateLimiter) -> None:
        try:
            self.transport.deliver(self._messages(), limiter, self._add)
        except BaseException as exc:  # the main thread raises it (and stops queueing)
            self.fail(exc)

    def _add(self, outcome: Outcome, *, sent: bool = True) -> None:
        self._check()
        with self._changed:
            self._state.answers.append(_Answer(outcome, sent))
            if len(self._state.answers) >= WRITE_AT:
                self._changed.notify_all()

    # ------------------------------------------------------------ the recorder

    def _record(self) -> None:
        """The recorder's thread: a failure anywhere stops the pipeline (``fail``)."""
        try:
            self._record_until_closed()
        except BaseException as exc:
            self.fail(exc)

    def _record_until_closed(self) -> None:
        renewed = time.monotonic()
        state = self._state
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: len(state.answers) >= WRITE_AT or state.closing
                    or any(batch.unanswered == 0 for batch in state.open), WRITE_WITHIN)
                answers, state.answers = state.answers, []
                closing = state.closing
                batches = [state.batches[self._route(a.outcome)] for a in answers]
                renew = [key for batch in state.open for key in batch.keys] \
                    if time.monotonic() - renewed > self._renew_every else []
            if answers or renew:
                self._write([a.outcome for a in answers], batches, renew)
                renewed = time.monotonic() if renew else renewed
            if sent := sum(a.sent for a in answers):
                self.permits.release(sent)
            with self._changed:
                for answer, batch in zip(answers, batches, strict=True):
                    batch.unanswered -= 1
                    state.reached_server |= answer.outcome.counts_as_attempt
                done = [b for b in state.open if b.unanswered == 0 or closing]
                self._changed.notify_all()
            for batch in done:
                self._finish(batch)
            with self._changed:
                for batch in done:
                    state.open.remove(batch)
                    for key in batch.keys:
                        state.batches.pop(key, None)
                self._changed.notify_all()
                if closing and not state.answers:
                    return

    def fail(self, exc: BaseException) -> None:
        """Stop the pipeline: ``exc`` is raised in the main thread."""
        with self._changed:
            if self.failure is None:
                self.failure = exc
            self._changed.notify_all()
        self.permits.release(MAX_UNRECORDED * 1000)  # wake sessions waiting for a permit


class SideTransport(Protocol):
    """A transport of another channel's messages (``channels.chat.ChatTransport``)."""

    def deliver(self, messages: Iterable[Any], limiter: RateLimiter,
                answered: Callable[[Outcome], None]) -> None: ...

    def close(self) -> None: ...


class SideChannel:
    """Messages of another channel (chat), sent by a transport of their own in a thread
    of their own, their answers written with the pipeline's batches (a batch counts them
    among its unanswered messages). Close it before the pipeline: closing sends what is
    queued and waits for every answer."""

    def __init__(self, transport: SideTransport, pipeline: Pipeline[B]) -> None:
        self.transport = transport
        self._pipeline = pipeline
        self._queue: queue.Queue[object | None] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, name="itsm-notify-side",
                                        daemon=True)
        self._thread.start()

    def send(self, messages: Iterable[object]) -> None:
        for message in messages:
            self._queue.put(message)

    def _deliver(self) -> None:
        try:
            self.transport.deliver(iter(self._queue.get, None), RateLimiter(),
                                   self._pipeline.settle)
        except BaseException as exc:  # the main thread raises it
            self._pipeline.fail(exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.transport.close()

    def __enter__(self) -> SideChannel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

