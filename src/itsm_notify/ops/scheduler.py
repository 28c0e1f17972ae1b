"""``itsm-notify scheduler``: send-pending every N seconds, overdue-scan and due-soon-scan
on cron lines, send-summaries every minute, fetch-mail every ``ITSM_FETCH_INTERVAL_SECONDS``
when ``ITSM_INBOUND_URL`` is set, and optionally ``/metrics``.

APScheduler 3 (``BlockingScheduler``) runs the jobs in worker threads. A job never
overlaps itself (``max_instances=1``), runs missed while the process was busy or asleep
collapse into one (``coalesce``), and a run late by more than its grace time is skipped
(the next one comes soon). send-pending uses the same database claims as the cron
command, so the scheduler is safe beside ``send-pending`` runs on other hosts.

``ITSM_OVERDUE_CRON`` and ``ITSM_DUE_SOON_CRON`` are crontab lines in the machine's
local time: five fields (minute hour day month weekday, weekday 0 or 7 = Sunday, as in
crontab), or six with a leading seconds field (``*/10 * * * * *``: every ten seconds,
for tests and demos). due-soon-scan is scheduled only when ``ITSM_DUE_SOON`` sets
thresholds. send-summaries runs every minute from the start, so a window's summary goes
out within a minute of its end; other schedulers and cron runs may race it safely (the
database makes each summary once).

With ``--metrics-port N`` the scheduler serves ``/metrics`` on 127.0.0.1 (ops/metrics.py)
for as long as it runs, a new reading of the database per scrape, with the duration of
each job's last run.

SIGTERM and Ctrl-C stop the scheduler gracefully: no new run starts, a send-pending
run stops after the batch in hand (its events are recorded), the overdue scan in hand
finishes, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_STARTED, SchedulerEvent
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from ..config import Settings
from ..engine.due_soon import due_soon_scan
from ..engine.overdue import overdue_scan
from ..engine.sender import send_pending
from ..engine.summaries import send_summaries
from ..errors import ConfigError, DatabaseUnavailable
from ..storage.database import describe_exception, utcnow
from .metrics import MetricsServer, load_snapshot, serve_metrics

log = logging.getLogger("itsm_notify")

SEND_JOB, OVERDUE_JOB, FETCH_JOB = "send-pending", "overdue-scan", "fetch-mail"
DUE_SOON_JOB, SUMMARIES_JOB = "due-soon-scan", "send-summaries"
OVERDUE_GRACE_SECONDS = 3600
"""An overdue scan late by up to an hour still runs; later, the next one is awaited."""
DUE_SOON_GRACE_SECONDS = 300
SUMMARIES_INTERVAL_SECONDS = 60

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NUMERIC_DAYS = re.compile(r"(\*|\d+)(?:-(\d+))?(?:/(\d+))?")


def _crontab_weekdays(spec: str) -> str:
    """Numeric crontab weekdays as names. APScheduler 3 counts 0 as Monday, crontab as
    Sunday (7 too), so ``1-5`` would silently mean Tuesday to Saturday; names read the
    same in both."""
    if spec in ("*", "?"):
        return "*"
    days: set[int] = set()
    named: list[str] = []
    for item in spec.split(","):
        match = _NUMERIC_DAYS.fullmatch(item)
        if match is None:
            named.append(item)  # names such as mon-fri: APScheduler reads them as cron does
            continue
        first, last, step = match.groups()
        start = 0 if first == "*" else int(first)
        end = 7 if first == "*" or (step and last is None) else int(last or first)
        if end > 7 or start > end:
            raise ValueError(f"weekday {item!r} is outside 0-7")
        days.update(day % 7 for day in range(start, end + 1, int(step or 1)))
    return ",".join([_DAY_NAMES[day] for day in sorted(days)] + named)


def overdue_trigger(expression: str) -> CronTrigger:
    """The trigger of ``ITSM_OVERDUE_CRON``; ConfigError when it is not a cron line."""
    return cron_trigger(expression, "ITSM_OVERDUE_CRON")


def cron_trigger(expression: str, setting: str) -> CronTrigger:
    """The trigger of the crontab line in ``setting``; ConfigError naming it when
    ``expression`` is not a cron line."""
    fields = expression.split()
    try:
        if len(fields) == 5:
            second, (minute, hour, day, month, weekday) = "0", fields
        elif len(fields) == 6:
            second, minute, hour, day, month, weekday = fields
        else:
            raise ValueError(f"it has {len(fields)} fields")
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_crontab_weekdays(weekday))
    except ValueError as exc:
        raise ConfigError(
            f"{setting} {expression!r} is not a valid cron expression ({exc}): use five "
            "fields, minute hour day month weekday, e.g. '0 * * * *' for every hour.") from None


def _log_run(job: str, summary: str, problems: list[str]) -> None:
    """One line per run, and a warning per problem (an unreachable server, say)."""
    for problem in problems:
        log.warning("%s: %s", job, problem)
    log.info("%s: %s", job, summary)


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    schedule: str
    next_run: datetime | None


class _StopRequested(Exception):
    """Raised between two send-pending batches once a stop was asked for."""


class NotifyScheduler:
    """The jobs on one BlockingScheduler, stopped by SIGTERM/SIGINT or ``stop()``."""

    def __init__(self, settings: Settings, engine: Engine, *,
                 on_started: Callable[[NotifyScheduler], None] | None = None,
                 metrics_port: int | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.on_started = on_started
        self.metrics_port = metrics_port
        self.metrics: MetricsServer | None = None
        self.run_seconds: dict[str, float] = {}
        """Each job's last run duration, for /metrics (written by the job's thread)."""
        self.stopping = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._shutdown_started = False
        interval = settings.send_interval_seconds
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per run: ours
        self.scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_job(self.send_job, IntervalTrigger(seconds=interval), id=SEND_JOB,
                               name=f"every {interval} s", misfire_grace_time=interval,
                               next_run_time=datetime.now(UTC))
        self.scheduler.add_job(self.overdue_job, overdue_trigger(settings.overdue_cron),
                               id=OVERDUE_JOB, name=f"on cron '{settings.overdue_cron}'",
                               misfire_grace_time=OVERDUE_GRACE_SECONDS)
        if settings.inbound_url:
            every = settings.fetch_interval_seconds
            self.scheduler.add_job(self.fetch_job, IntervalTrigger(seconds=every), id=FETCH_JOB,
                                   name=f"every {every} s", misfire_grace_time=every,
                                   next_run_time=datetime.now(UTC))
        if settings.due_soon_thresholds:
            self.scheduler.add_job(
                self.due_soon_job, cron_trigger(settings.due_soon_cron, "ITSM_DUE_SOON_CRON"),
                id=DUE_SOON_JOB, name=f"on cron '{settings.due_soon_cron}'",
                misfire_grace_time=DUE_SOON_GRACE_SECONDS)
        self.scheduler.add_job(self.summaries_job,
                               IntervalTrigger(seconds=SUMMARIES_INTERVAL_SECONDS),
                               id=SUMMARIES_JOB, name=f"every {SUMMARIES_INTERVAL_SECONDS} s",
                               misfire_grace_time=SUMMARIES_INTERVAL_SECONDS,
                               next_run_time=datetime.now(UTC))
        self.scheduler.add_listener(self._started, EVENT_SCHEDULER_STARTED)

    # ------------------------------------------------------------------ the jobs

    def send_job(self) -> None:
        """Drain the outbox, stopping between batches once a stop was asked for."""
        self._run(SEND_JOB, lambda: send_pending(self.settings, engine=self.engine,
                                                 on_progress=self._between_batches))

    def _between_batches(self, _events: int) -> None:
        if self.stopping.is_set():
            raise _StopRequested

    def overdue_job(self) -> None:
        self._run(OVERDUE_JOB, lambda: overdue_scan(self.settings, engine=self.engine))

    def due_soon_job(self) -> None:
        self._run(DUE_SOON_JOB, lambda: due_soon_scan(self.settings, engine=self.engine))

    def summaries_job(self) -> None:
        self._run(SUMMARIES_JOB, lambda: send_summaries(self.settings, engine=self.engine))

    def _run(self, job: str, work: Callable[[], Any]) -> None:
        """Run one job: one log line, its duration kept for /metrics; a failure is one
        line too, and the next run tries again."""
        started = time.monotonic()
        try:
            report = work()
        except _StopRequested:
            log.info("%s: stopped after the batch in hand", job)
        except (ConfigError, DatabaseUnavailable) as exc:
            log.error("%s: %s", job, exc)
        except Exception as exc:
            log.error("%s: unexpected failure (%s); the next run tries again", job,
                      describe_exception(exc))
            log.debug("unexpected failure", exc_info=True)
        else:
            _log_run(job, report.summary(), report.problems)
        finally:
            self.run_seconds[job] = time.monotonic() - started

    def fetch_job(self) -> None:
        """Handle the inbound mailbox, stopping after the message in hand once a stop was
        asked for."""
        from ..inbound.handle import InboundHandler
        from ..inbound.intake import fetch_mail_with_settings

        self._run(FETCH_JOB, lambda: fetch_mail_with_settings(
            self.settings, InboundHandler(self.settings, self.engine),
            should_stop=self.stopping.is_set))

    # ------------------------------------------------------------------ running

    def jobs(self) -> list[ScheduledJob]:
        return [ScheduledJob(job.id, job.name, getattr(job, "next_run_time", None))
                for job in self.scheduler.get_jobs()]

    def run(self) -> None:
        """Block until stopped; SIGTERM and SIGINT stop gracefully. The metrics endpoint
        (with ``metrics_port``) starts first, so a port in use stops nothing running, and
        stops with the scheduler."""
        if self.metrics_port is not None:
            self.metrics = serve_metrics(self.metrics_port, lambda: load_snapshot(
                self.engine, utcnow(), run_seconds=dict(self.run_seconds)))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.scheduler.start()
        finally:
            if self.metrics is not None:
                self.metrics.stop()
        log.info("scheduler stopped")

    def stop(self) -> None:
        """Ask the scheduler to stop: no new runs; the runs in hand finish their batch."""
        self.stopping.set()
        if self.scheduler.running:
            self._shutdown_soon()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # No logging here: a signal handler may interrupt a thread holding the log lock.
        self.stop()

    def _started(self, _event: SchedulerEvent) -> None:
        if self.on_started is not None:
            self.on_started(self)
        if self.stopping.is_set():  # a signal arrived while starting
            self._shutdown_soon()

    def _shutdown_soon(self) -> None:
        """Shut down from a helper thread: ``shutdown(wait=True)`` waits for the running
        jobs, which must not happen inside a signal handler on the main thread."""
        with self._shutdown_lock:
            if self._shutdown_started:
                return
            self._shutdown_started = True
        threading.Thread(target=self._shutdown, name="scheduler-shutdown").start()

    def _shutdown(self) -> None:
        log.info("stopping: finishing the runs in hand")
        with contextlib.suppress(SchedulerNotRunningError):
            self.scheduler.shutdown(wait=True)


def run_scheduler(settings: Settings, engine: Engine, *,
                  on_started: Callable[[NotifyScheduler], None] | None = None,
                  metrics_port: int | None = None) -> None:
    """Run the jobs on their schedules until SIGTERM or Ctrl-C; ``on_started`` is given
    the running scheduler (its ``jobs()`` and ``metrics``)."""
    NotifyScheduler(settings, engine, on_started=on_started, metrics_port=metrics_port).run()
