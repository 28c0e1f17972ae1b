"""Throughput benchmark for itsm-notify (issue 5).

    uv run python bench/run.py                      # send-pending vs bare smtplib, both DBs
    uv run python bench/run.py --events 1000 --db sqlite
    uv run python bench/run.py --memory             # peak RSS with 100,000 pending events
    uv run python bench/run.py --overdue            # overdue-scan over 1,000,000 tickets (PG)
    uv run python bench/run.py --http --skip-throughput   # SendGrid's API vs SMTP at 20 ms
    uv run python bench/run.py --workload one-recipient   # one email per event, nothing shared
    uv run python bench/run.py --idle --skip-throughput   # what cron pays when nothing is due

What one run does, per database (SQLite in a temporary folder, PostgreSQL at
``--postgres-url``, whose tables it DROPS and recreates):

1. creates the same help desk and N outbox events: ``--workload shared`` (the default)
   70% ticket_created (requester, assignee and ADMINS, 3 emails) and 30% status_changed
   (requester and assignee, 2 emails) among 500 users; ``--workload one-recipient`` one
   ticket_assigned per ticket, each ticket with users of its own, one email per event;
2. starts an aiosmtpd sink in its own process (bench/sink.py);
3. baseline: the same messages, rendered beforehand by the project's own pipeline and
   serialized (untimed), sent by a bare smtplib loop over K connections (K threads, one
   connection each): the practical limit of this client, sink and machine;
4. runs send-pending (``Sender.run`` in a fresh process, so its peak RSS is its own)
   until the outbox is empty, timing it end to end, database work included, and
   counting database statements with a ``before_cursor_execute`` listener;
5. checks the sink received exactly the expected messages: the count, and the set of
   Message-IDs computed independently from the generated data;
6. with the sink answering each message after 20 ms (a real relay's latency), runs
   send-pending and the baseline with K=1 and K=4 on a smaller backlog;
7. with ``--http``: send-pending through the SendGrid backend (``EMAIL_BACKEND=sendgrid``)
   to an HTTP sink answering 202 after 20 ms (bench/http_sink.py), and through SMTP to
   the SMTP sink at 20 ms, one after the other, with K=1 and K=4 connections: the ratio
   of their throughputs per connection, measured in the same run;
8. with ``--idle``: the installed ``itsm-notify send-pending`` run as cron runs it
   against an initialised, empty database, its median CPU and its import profile
   (bench/idle_bench.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, insert, select, text

from itsm_notify.channels.base import Outcome, Outgoing, RateLimiter
from itsm_notify.compose.render import message_id
from itsm_notify.config import Settings, load_settings
from itsm_notify.states import DeliveryState
from itsm_notify.storage import database, schema
from itsm_notify.storage import deliveries as delivery_store
from itsm_notify.storage.migrations import VERSION_TABLE, init_database

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_sink import HttpSinkProcess
from sink import HOST, SinkProcess, placement

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/itsm_bench"
FROM_DOMAIN = "example.com"
ADMIN = "ops@example.com"
SEND_TIMEOUT = 3600.0

# ------------------------------------------------------------------------ the data

FIRST = ["Alice", "Bob", "Chloé", "Dmitri", "Eve", "Farah", "Gustav", "Hana", "Ingrid",
         "José", "Kenji", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa"]
LAST = ["Smith", "Jones", "Müller", "Okafor", "García", "Nakamura", "Kowalski", "Dubois",
        "O'Brien", "Andersson", "Rossi", "Novak", "Haddad", "Kim", "Silva", "Walsh"]
SUBJECTS = ["VPN drops every few minutes", "Printer on floor {n} jams", "Laptop will not boot",
            "Cannot open the shared drive", "Outlook asks for my password again",
            "New starter needs an account", "Monitor flickers", "Wi-Fi slow in room {n}",
            "Badge reader broken at door {n}", "Request: licence for the design tool"]
WORDS = ("the", "user", "reports", "that", "since", "this", "morning", "it", "does", "not",
         "work", "any", "more", "and", "the", "error", "appears", "again", "after", "a",
         "restart", "please", "check", "the", "logs", "and", "call", "back", "when", "the",
         "team", "has", "time", "it", "is", "blocking", "the", "weekly", "report", "for",
         "finance")
STATUSES = ["in_progress", "waiting_for_customer", "on_hold"]


@dataclass
class Dataset:
    users: list[dict[str, Any]]
    projects: list[dict[str, Any]]
    tickets: list[dict[str, Any]]
    events: list[dict[str, Any]]



def drop_all(engine: Engine) -> None:
    """Drop every table the tool made (its own, the contract's, the version table)."""
    schema.metadata.drop_all(engine)
    schema.contract_metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {VERSION_TABLE}")

WORKLOADS = ("shared", "one-recipient")


LANGUAGES = ("en", "de", "fr", "es")
"""The languages --languages spreads the users over, in this order."""


def make_dataset(n_events: int, workload: str = "shared", *, seed: int = 5,
                 languages: int = 1) -> Dataset:
    """The generated help desk and its N pending events, for ``workload``; its users'
    locales spread over the first ``languages`` of LANGUAGES."""
    if workload == "one-recipient":
        return make_one_recipient_dataset(n_events, seed=seed, languages=languages)
    return make_shared_dataset(n_events, seed=seed, languages=languages)


def _users(rng: random.Random, n_users: int, languages: int = 1) -> list[dict[str, Any]]:
    """Users 1 and 2 are managers (in-app only); the rest plain staff and customers,
    user i reading LANGUAGES[i % languages]."""
    return [{"id": i, "username": f"user{i}", "email": f"user{i}@example.com",
             "first_name": rng.choice(FIRST), "last_name": rng.choice(LAST),
             "is_active": True, "is_manager": i <= 2,
             "locale": LANGUAGES[i % languages] if languages > 1 else None}
            for i in range(1, n_users + 1)]


def _ticket(rng: random.Random, i: int, requester: int, assignee: int) -> dict[str, Any]:
    words = rng.choices(WORDS, k=rng.randint(30, 120))
    return {"id": i, "number": f"TKT-{i:06d}",
            "title": rng.choice(SUBJECTS).format(n=rng.randint(1, 9)),
            "description": " ".join(words).capitalize() + ".",
            "status": "open", "priority": rng.choice(["low", "medium", "high", "critical"]),
            "requester_id": requester, "assignee_id": assignee,
            "project_id": rng.randint(1, 10), "due_at": None,
            "created_at": datetime(2026, 1, 5, 9, 0) + timedelta(minutes=i)}


def _projects() -> list[dict[str, Any]]:
    return [{"id": i, "name": f"Project {i}", "notify_team": False} for i in range(1, 11)]


def make_shared_dataset(n_events: int, *, seed: int = 5, n_users: int = 500,
                        languages: int = 1) -> Dataset:
    """A help desk: users (two of them managers: in-app only), ten projects, one ticket
    per ticket_created event, and status changes on some of those tickets. Recipients
    share a lot: 500 users, each event's page rendered for 2 or 3 of them."""
    rng = random.Random(seed)
    users = _users(rng, n_users, languages)
    n_created = max(1, round(n_events * 0.7))
    tickets = [_ticket(rng, i, *rng.sample(range(3, n_users + 1), 2))
               for i in range(1, n_created + 1)]
    events = [{"event_type": "ticket_created", "ticket_id": t["id"], "actor_id": None,
               "payload": "{}"} for t in tickets]
    for _ in range(n_events - n_created):
        ticket = rng.choice(tickets)
        events.append({"event_type": "status_changed", "ticket_id": ticket["id"],
                       "actor_id": None, "payload": json.dumps(
                           {"old_status": "open", "new_status": rng.choice(STATUSES)})})
    rng.shuffle(events)
    return Dataset(users, _projects(), tickets, events)


def make_one_recipient_dataset(n_events: int, *, seed: int = 5, languages: int = 1
                               ) -> Dataset:
    """Each event mails one person and shares nothing with any other: one
    ``ticket_assigned`` event per ticket, each ticket with a requester and an assignee
    of its own (2 N users, plus the two managers), actor None. ticket_assigned tells the
    new assignee alone (the payload names them, as django-helpdesk's receiver writes
    it), so there is one email per event and the per-event cost is all."""
    rng = random.Random(seed)
    users = _users(rng, 2 + 2 * n_events, languages)
    tickets = [_ticket(rng, i, requester=2 + 2 * i, assignee=1 + 2 * i)
               for i in range(1, n_events + 1)]
    events = [{"event_type": "ticket_assigned", "ticket_id": t["id"], "actor_id": None,
               "payload": json.dumps({"assignee_id": t["assignee_id"]})} for t in tickets]
    rng.shuffle(events)
    return Dataset(users, _projects(), tickets, events)


def expected_message_ids(data: Dataset, outbox_rows: Sequence[Any]) -> set[str]:
    """Worked out from the data alone (not by the tool's rules): ticket_created goes to
    requester, assignee and the admin; status_changed (a public status) to requester
    and assignee; ticket_assigned to the payload's assignee alone; the actor is None;
    managers are in-app only."""
    email = {u["id"]: u["email"] for u in data.users}
    ticket = {t["id"]: t for t in data.tickets}
    ids: set[str] = set()
    for row in outbox_rows:
        t = ticket[row.ticket_id]
        if row.event_type == "ticket_assigned":
            addresses = [email[json.loads(row.payload)["assignee_id"]]]
        else:
            addresses = [email[t["requester_id"]], email[t["assignee_id"]]]
        if row.event_type == "ticket_created":
            addresses.append(ADMIN)
        ids.update(message_id(row.id, a.lower(), FROM_DOMAIN) for a in addresses)
    return ids


def _chunks(rows: Sequence[dict[str, Any]], size: int = 5000) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def reset_schema(engine: Engine) -> None:
    """Drop the tool's tables and create them again (bench databases only)."""
    drop_all(engine)
    init_database(engine, contract_tables=True)


def populate(engine: Engine, data: Dataset) -> list[Any]:
    """Write the dataset (executemany in chunks); return the outbox rows in id order."""
    reset_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(schema.users), data.users)
        conn.execute(insert(schema.projects), data.projects)
        for chunk in _chunks(data.tickets):
            conn.execute(insert(schema.tickets), list(chunk))
        for chunk in _chunks(data.events):
            conn.execute(insert(schema.outbox), list(chunk))
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    with engine.connect() as conn:
        return list(conn.execute(select(schema.outbox.c.id, schema.outbox.c.event_type,
                                        schema.outbox.c.ticket_id, schema.outbox.c.payload)
                                 .order_by(schema.outbox.c.id)))


# ----------------------------------------------------------------------- settings


def bench_settings(database_url: str, port: int, connections: int, workdir: Path,
                   batch_size: int) -> dict[str, Any]:
    """Overrides for ``load_settings``: a realistic production configuration (HTTPS site,
    a secret key so every email carries its unsubscribe link and RFC 8058 headers)."""
    return {"database_url": database_url, "email_backend": "smtp", "email_host": HOST,
            "email_port": port, "email_timeout": 30,
            "default_from_email": f"Help Desk <helpdesk@{FROM_DOMAIN}>",
            "site_url": "https://helpdesk.example.com", "site_name": "Example Help Desk",
            "admins": f"Operations <{ADMIN}>", "secret_key": "bench-secret-key",
            "smtp_connections": connections, "batch_size": batch_size,
            "delivery_log": str(workdir / "email.log")}


def _settings(overrides: dict[str, Any]) -> Settings:
    return load_settings(overrides, environ={}, dotenv_path=None)


# ------------------------------------------------------------- send-pending (child)


def _send_child(overrides: dict[str, Any], profile: str | None, conn: Connection) -> None:
    """Run send-pending until the outbox is empty; report timing, statements, RSS."""
    from itsm_notify.engine.sender import Sender

    settings = _settings(overrides)
    engine = database.make_engine(settings.database_url)
    counts = {"statements": 0, "commits": 0, "checkouts": 0}
    kinds: dict[str, int] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["statements"] += 1  # an executemany is one
        kind = statement_kind(statement)
        kinds[kind] = kinds.get(kind, 0) + 1

    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        counts["commits"] += 1

    @event.listens_for(engine, "checkout")  # each one a ping, and a rollback on return
    def _checkout(*_: Any) -> None:
        counts["checkouts"] += 1

    insert_many = delivery_store.insert_many

    def counted_insert_many(conn: Any, table: Any, rows: Any) -> None:
        if delivery_store.uses_copy(conn) and rows:  # a COPY: no cursor execute event
            counts["statements"] += 1
            kinds[f"COPY {table.name}"] = kinds.get(f"COPY {table.name}", 0) + 1
        insert_many(conn, table, rows)

    delivery_store.insert_many = counted_insert_many

    profiler = spy = None
    if profile and os.environ.get("ITSM_BENCH_PY_SPY"):
        # Samples every thread (cProfile sees only this one): collapsed stacks to `profile`.
        # --gil: the thread holding the GIL, i.e. where the process's Python time goes.
        spy = subprocess.Popen([*os.environ["ITSM_BENCH_PY_SPY"].split(), "record", "--gil", "-p",
                                str(os.getpid()), "-o", profile, "--format", "raw", "-r", "250",
                                "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(2)
    elif profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    started, cpu = time.perf_counter(), time.process_time()
    report = Sender(settings, engine).run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    engine.dispose()
    conn.send({"elapsed": elapsed, "cpu": cpu, "emails_sent": report.emails_sent,
               "events_done": report.events_done, "events_failed": report.events_failed,
               "events_retrying": report.events_retrying, "problems": report.problems,
               "maxrss_mb": peak_rss_mb(), "kinds": kinds, **counts})


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)


def statement_kind(statement: str) -> str:
    """``SELECT tickets``, ``UPDATE notification_deliveries``, ``BEGIN``..."""
    verb = statement.split(None, 1)[0].upper() if statement.strip() else "?"
    table = _TABLE.search(statement)
    return f"{verb} {table.group(1)}" if table and verb != "BEGIN" else verb


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``getrusage``: on Linux its ru_maxrss keeps
    the parent's high-water mark across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_send_pending(overrides: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_send_child, args=(overrides, profile, child), name="bench-send-pending")
    process.start()
    if not parent.poll(SEND_TIMEOUT):
        process.kill()
        raise RuntimeError("send-pending did not finish within the benchmark's time limit")
    result: dict[str, Any] = parent.recv()
    process.join(30)
    return result


# ------------------------------------------------------------------------ baseline


class _Capture:
    """A transport that keeps every message the pipeline builds, serialized."""

    name = "capture"
    gave_up: str | None = None  # nothing here can give up

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, bytes]] = []

    def deliver(self, messages: Iterable[Outgoing], limiter: RateLimiter,
                answered: Callable[[Outcome], None]) -> None:
        for out in messages:
            self.messages.append((out.sender, out.rcpt, out.data))
            answered(Outcome(out.key, DeliveryState.SENT, 250, "captured"))

    def close(self) -> None:
        pass


def prerender(data: Dataset, workdir: Path) -> tuple[list[tuple[str, str, bytes]], float]:
    """The messages send-pending will send, built by the project's own pipeline on a
    scratch SQLite copy of the data (not part of any rate); and the CPU per email, in
    ms, that took: send-pending's own work without SMTP, apart from the sink's."""
    from itsm_notify.engine.sender import Sender

    url = f"sqlite:///{workdir / 'prerender.db'}"
    engine = database.make_engine(url)
    populate(engine, data)
    capture = _Capture()
    settings = _settings(bench_settings(url, 25, 1, workdir, 100))
    cpu = time.process_time()
    Sender(settings, engine, transport=capture).run()
    cpu = time.process_time() - cpu
    engine.dispose()
    return capture.messages, 1000 * cpu / max(1, len(capture.messages))


def baseline(check: Check, label: str, sink: SinkProcess,
             messages: Sequence[tuple[str, str, bytes]], connections: int) -> tuple[float, float]:
    """Seconds the bare smtplib loop took, and the sink's CPU seconds meanwhile."""
    sink.reset()
    cpu = sink.report()["cpu"]
    seconds = bare_smtplib(sink.port, messages, connections)
    report = sink.report()
    check.expect(report["count"] == len(messages),
                 f"{label}: baseline delivered {report['count']} of {len(messages)}")
    return seconds, report["cpu"] - cpu


def bare_smtplib(port: int, messages: Sequence[tuple[str, str, bytes]],
                 connections: int) -> float:
    """Send ``messages`` over ``connections`` smtplib sessions, one thread each; return
    the seconds from the first connect to the last reply."""
    shares = [messages[i::connections] for i in range(connections)]
    errors: list[BaseException] = []

    def work(share: Sequence[tuple[str, str, bytes]]) -> None:
        try:
            with smtplib.SMTP(HOST, port, timeout=30) as smtp:
                for sender, rcpt, data in share:
                    smtp.sendmail(sender, [rcpt], data)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"the bare smtplib baseline failed: {errors[0]!r}")
    return time.perf_counter() - started


# --------------------------------------------------------------------- the checks


@dataclass
class Check:
    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print(f"  CHECK FAILED: {what}", flush=True)


def check_delivery(check: Check, label: str, sink: SinkProcess, expected: set[str],
                   result: dict[str, Any]) -> None:
    report = sink.report()
    ids = [i.decode() for i in report["ids"]]
    check.expect(report["count"] == len(expected),
                 f"{label}: the sink got {report['count']} messages, expected {len(expected)}")
    check.expect(len(set(ids)) == len(ids),
                 f"{label}: {len(ids) - len(set(ids))} duplicate Message-IDs")
    check.expect(set(ids) == expected,
                 f"{label}: {len(expected - set(ids))} expected Message-IDs missing, "
                 f"{len(set(ids) - expected)} unexpected")
    check.expect(result["events_failed"] == 0 and result["events_retrying"] == 0
                 and not result["problems"],
                 f"{label}: send-pending reported failures: {result}")


# -------------------------------------------------------------------------- phases


@dataclass
class Row:
    label: str
    workload: str
    db: str
    connections: int
    latency_ms: int
    emails: int
    tool_rate: float
    base_rate: float
    maxrss_mb: float
    statements_per_event: float
    statements_per_batch: float
    tool_cpu_ms: float
    """send-pending's CPU time per email (all its threads)"""
    sink_cpu_ms: float
    """the sink's CPU time per email while send-pending ran"""
    base_sink_cpu_ms: float
    """the sink's CPU time per email during the baseline"""
    ratios: tuple[float, ...] = ()
    """every round's ratio, when this row is the median of several"""

    @property
    def ratio(self) -> float:
        return self.tool_rate / self.base_rate if self.base_rate else 0.0


def fresh_outbox(url: str, data: Dataset) -> set[str]:
    """The dataset written anew, every event pending; the Message-IDs it must yield."""
    engine = database.make_engine(url)
    outbox_rows = populate(engine, data)
    engine.dispose()
    return expected_message_ids(data, outbox_rows)


def database_urls(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    urls = []
    if args.db in ("sqlite", "both"):
        urls.append(("sqlite", f"sqlite:///{workdir / 'bench.db'}"))
    if args.db in ("postgresql", "both"):
        urls.append(("postgresql", args.postgres_url))
    return urls


def throughput(args: argparse.Namespace, sink: SinkProcess, workdir: Path, check: Check,
               *, n_events: int, connections: int, latency: float, label: str,
               dbs: list[tuple[str, str]], languages: int = 1) -> list[Row]:
    data = make_dataset(n_events, args.workload, languages=languages)
    workload = args.workload if languages == 1 else f"{args.workload}, {languages} languages"
    print(f"\n== {label}: {n_events} events ({workload}), K={connections}, sink latency "
          f"{latency * 1000:.0f} ms", flush=True)
    messages, render_cpu_ms = prerender(data, workdir)
    print(f"  send-pending without SMTP (SQLite, a transport that keeps the bytes): "
          f"{render_cpu_ms:.2f} ms CPU/email", flush=True)
    rows = []
    for name, url in dbs:
        expected = fresh_outbox(url, data)
        check.expect(len(messages) == len(expected),
                     f"{label}: the pipeline built {len(messages)} messages, "
                     f"expected {len(expected)}")
        sink.set_latency(latency)
        # The baseline runs before and after each send-pending run; a run's ratio uses the
        # mean of the two, so a change in the machine's speed weighs on both sides alike.
        before, base_cpu = baseline(check, label, sink, messages, connections)
        runs: list[Row] = []
        for round_no in range(1, args.rounds + 1):
            sink.reset()
            sink_cpu = sink.report()["cpu"]
            overrides = bench_settings(url, sink.port, connections, workdir, args.batch_size)
            profile = str(workdir / f"profile-{name}.prof") if args.profile else None
            result = run_send_pending(overrides, profile)
            sink_cpu = sink.report()["cpu"] - sink_cpu
            check_delivery(check, f"{label} {name}", sink, expected, result)
            if round_no < args.rounds:  # the same events again, all pending, before the
                expected = fresh_outbox(url, data)  # baseline: each run follows one
            after, base_cpu_after = baseline(check, label, sink, messages, connections)
            base_seconds = (before + after) / 2
            batches = max(1, -(-n_events // args.batch_size))
            row = Row(label, workload, name, connections, round(latency * 1000),
                      len(expected), result["emails_sent"] / result["elapsed"],
                      len(messages) / base_seconds,
                      result["maxrss_mb"], result["statements"] / n_events,
                      result["statements"] / batches, 1000 * result["cpu"] / len(expected),
                      1000 * sink_cpu / len(expected),
                      1000 * (base_cpu + base_cpu_after) / 2 / len(messages))
            runs.append(row)
            print(f"  {name:10s} send-pending {row.tool_rate:7.0f} emails/s "
                  f"({result['elapsed']:.1f} s, {row.tool_cpu_ms:.2f} ms CPU/email; sink "
                  f"{row.sink_cpu_ms:.2f}) | bare smtplib {row.base_rate:7.0f} emails/s "
                  f"({before:.1f} s and {after:.1f} s; sink {row.base_sink_cpu_ms:.2f} ms "
                  f"CPU/email) | ratio {row.ratio:.2f} | peak RSS "
                  f"{row.maxrss_mb:.0f} MB | {row.statements_per_event:.2f} statements/event "
                  f"({row.statements_per_batch:.1f}/batch of {args.batch_size}, "
                  f"{result['commits']} commits, {result['checkouts']} pool checkouts)",
                  flush=True)
            if round_no == 1:
                print("    statements per batch: " + ", ".join(
                    f"{kind} {count / batches:.1f}" for kind, count in
                    sorted(result["kinds"].items(), key=lambda kv: -kv[1])), flush=True)
            if profile:
                print_profile(profile)
            before, base_cpu = after, base_cpu_after
        median = sorted(runs, key=lambda r: r.ratio)[(len(runs) - 1) // 2]  # the lower one
        median.ratios = tuple(r.ratio for r in runs)
        if len(runs) > 1:
            print(f"  {name:10s} ratio over {len(runs)} rounds: median {median.ratio:.2f} "
                  f"({', '.join(f'{r:.2f}' for r in median.ratios)})", flush=True)
        rows.append(median)
    return rows


def languages_versus_english(args: argparse.Namespace, sink: SinkProcess, workdir: Path,
                             check: Check, dbs: list[tuple[str, str]]) -> list[Row]:
    """The same events with the recipients spread over --languages languages, and with
    everyone reading English, one after the other in this run: the ratios to bare
    smtplib must stay within 10 % of each other (issue 16)."""
    english = throughput(args, sink, workdir, check, n_events=args.events,
                         connections=args.connections, latency=0.0,
                         label="English only", dbs=dbs)
    spread = throughput(args, sink, workdir, check, n_events=args.events,
                        connections=args.connections, latency=0.0,
                        label=f"{args.languages} languages", dbs=dbs, languages=args.languages)
    for plain, mixed in zip(english, spread, strict=True):
        change = mixed.ratio / plain.ratio - 1
        print(f"  {plain.db}: ratio {plain.ratio:.2f} in English, {mixed.ratio:.2f} in "
              f"{args.languages} languages ({change:+.1%}); CPU/email "
              f"{plain.tool_cpu_ms:.2f} ms and {mixed.tool_cpu_ms:.2f} ms", flush=True)
        check.expect(change >= -0.10, f"{plain.db}: {args.languages} languages cost "
                                      f"{-change:.1%} of the English ratio (limit 10 %)")
    return [*english, *spread]


def print_profile(path: str) -> None:
    import pstats

    if os.environ.get("ITSM_BENCH_PY_SPY"):
        print_collapsed(path)
        return
    print(f"  profile of send-pending's main thread: {path}")
    pstats.Stats(path).sort_stats("tottime").print_stats(20)


def print_collapsed(path: str, top: int = 25) -> None:
    """Self and total time per function from py-spy's collapsed stacks (all threads)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")[1:]]
        n = int(count)
        samples += n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    print(f"  py-spy, all threads, {samples} samples: self% total% function")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / samples:5.1f} {100 * total[name] / samples:5.1f} {name}")
    print("  by total:")
    for name, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / samples:5.1f} {name}")


def memory(args: argparse.Namespace, sink: SinkProcess, workdir: Path,
           check: Check) -> list[dict[str, Any]]:
    """Peak RSS of send-pending draining ``--memory-events`` pending events."""
    data = make_dataset(args.memory_events, args.workload)
    results = []
    for name, url in database_urls(args, workdir):
        print(f"\n== memory: {args.memory_events} pending events on {name}", flush=True)
        started = time.perf_counter()
        engine = database.make_engine(url)
        outbox_rows = populate(engine, data)
        engine.dispose()
        print(f"  created in {time.perf_counter() - started:.1f} s", flush=True)
        expected = expected_message_ids(data, outbox_rows)
        sink.set_latency(0)
        sink.reset()
        overrides = bench_settings(url, sink.port, args.connections, workdir, args.batch_size)
        result = run_send_pending(overrides)
        check_delivery(check, f"memory {name}", sink, expected, result)
        check.expect(result["maxrss_mb"] < 150,
                     f"memory {name}: peak RSS {result['maxrss_mb']:.0f} MB >= 150 MB")
        print(f"  {name:10s} peak RSS {result['maxrss_mb']:.0f} MB, "
              f"{result['emails_sent']} emails in {result['elapsed']:.0f} s "
              f"({result['emails_sent'] / result['elapsed']:.0f}/s)", flush=True)
        results.append({"db": name, "events": args.memory_events, **result})
    return results


# ------------------------------------------------------------------- HTTP vs SMTP


@dataclass
class HttpRow:
    connections: int
    emails: int
    http_rate: float
    smtp_rate: float
    http_cpu_ms: float
    smtp_cpu_ms: float
    http_connections_used: int
    ratios: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        return self.http_rate / self.smtp_rate if self.smtp_rate else 0.0


def http_versus_smtp(args: argparse.Namespace, sink: SinkProcess, http_sink: HttpSinkProcess,
                     workdir: Path, check: Check, db_name: str, url: str) -> list[HttpRow]:
    """send-pending through SendGrid's API and through SMTP, both answering after 20 ms,
    with K connections each: the same events, one run after the other, ``--rounds``
    times; the median ratio of their throughputs (per connection: the same K)."""
    data = make_dataset(args.latency_events, args.workload)
    sink.set_latency(0.02)
    http_sink.set_latency(0.02)
    rows = []
    for k in (1, 4):
        print(f"\n== HTTP (SendGrid API) vs SMTP, both 20 ms: {args.latency_events} events, "
              f"K={k}, {db_name}", flush=True)
        runs = []
        for _ in range(args.rounds):
            rates, cpu, used = {}, {}, 0
            for kind in ("smtp", "http"):
                expected = fresh_outbox(url, data)
                target: Any = sink if kind == "smtp" else http_sink
                target.reset()
                overrides = bench_settings(url, sink.port, k, workdir, args.batch_size)
                if kind == "http":
                    overrides |= {"email_backend": "sendgrid", "sendgrid_api_key": "SG.bench",
                                  "sendgrid_api_url": f"{http_sink.url}/v3/",
                                  "http_connections": k}
                result = run_send_pending(overrides)
                check_delivery(check, f"{kind} K={k}", target, expected, result)
                rates[kind] = result["emails_sent"] / result["elapsed"]
                cpu[kind] = 1000 * result["cpu"] / max(1, result["emails_sent"])
                if kind == "http":
                    used = target.report()["connections"]
                    check.expect(used <= k, f"http K={k}: {used} connections, more than {k}")
            row = HttpRow(k, len(expected), rates["http"], rates["smtp"], cpu["http"],
                          cpu["smtp"], used)
            runs.append(row)
            print(f"  SendGrid API {row.http_rate:6.1f} emails/s ({row.http_rate / k:.1f} per "
                  f"connection, {used} connections, {row.http_cpu_ms:.2f} ms CPU/email) | "
                  f"SMTP {row.smtp_rate:6.1f} emails/s ({row.smtp_rate / k:.1f} per "
                  f"connection, {row.smtp_cpu_ms:.2f} ms CPU/email) | ratio {row.ratio:.2f}",
                  flush=True)
        median = sorted(runs, key=lambda r: r.ratio)[(len(runs) - 1) // 2]
        median.ratios = tuple(r.ratio for r in runs)
        rows.append(median)
    sink.set_latency(0)
    return rows


def print_http_summary(rows: list[HttpRow]) -> None:
    print("\n| K | emails | SendGrid API /s | per connection | SMTP /s | per connection "
          "| ratio | CPU/email API | CPU/email SMTP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spread = f" (median of {', '.join(f'{x:.2f}' for x in r.ratios)})" \
            if len(r.ratios) > 1 else ""
        print(f"| {r.connections} | {r.emails} | {r.http_rate:.1f} | "
              f"{r.http_rate / r.connections:.1f} | {r.smtp_rate:.1f} | "
              f"{r.smtp_rate / r.connections:.1f} | {r.ratio:.2f}{spread} | "
              f"{r.http_cpu_ms:.2f} ms | {r.smtp_cpu_ms:.2f} ms |")


# ------------------------------------------------------------------------ overdue


def overdue(args: argparse.Namespace, check: Check, sink: SinkProcess,
            workdir: Path) -> dict[str, Any]:
    """overdue-scan over ``--overdue-tickets`` tickets on PostgreSQL."""
    import overdue_bench

    sink.set_latency(0)
    return overdue_bench.run(args.postgres_url, args.overdue_tickets, args.overdue_count, check,
                             sink=sink, workdir=workdir)


# --------------------------------------------------------------------------- main


def machine() -> dict[str, str]:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"nproc": str(os.cpu_count()), "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "python": platform.python_version(), "platform": platform.platform(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def pg_version(url: str) -> str:
    try:
        engine = database.make_engine(url)
        with engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar())
        engine.dispose()
        return version
    except Exception as exc:  # the benchmark still runs on SQLite
        return f"unreachable ({type(exc).__name__})"


def _at_least_one(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return int(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000,
                        help="events in the throughput run (default 10000)")
    parser.add_argument("--workload", choices=WORKLOADS, default="shared",
                        help="shared (default): 70%% ticket_created to 3 of 500 users, 30%% "
                             "status_changed to 2; one-recipient: one ticket_assigned per "
                             "ticket, each to a user of its own, one email per event")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--postgres-url",
                        default=os.environ.get("ITSM_BENCH_POSTGRES_URL", DEFAULT_PG_URL),
                        help="a database the benchmark may empty (env ITSM_BENCH_POSTGRES_URL; "
                             f"default {DEFAULT_PG_URL})")
    parser.add_argument("--connections", type=int, default=4,
                        help="K, SMTP connections for the main run (default 4)")
    parser.add_argument("--batch-size", type=int, default=100, help="ITSM_BATCH_SIZE")
    parser.add_argument("--rounds", type=_at_least_one, default=1,
                        help="send-pending runs per database, each between two baseline "
                             "runs; the median ratio is reported (default 1)")
    parser.add_argument("--latency-events", type=int, default=200,
                        help="events in the 20 ms latency variant (default 200; 0 skips it)")
    parser.add_argument("--skip-throughput", action="store_true",
                        help="skip the main run (e.g. with --memory or --overdue alone)")
    parser.add_argument("--memory", action="store_true",
                        help="also check peak RSS while draining --memory-events events")
    parser.add_argument("--memory-events", type=int, default=100_000)
    parser.add_argument("--overdue", action="store_true",
                        help="also time overdue-scan over --overdue-tickets tickets (PostgreSQL)")
    parser.add_argument("--overdue-tickets", type=int, default=1_000_000)
    parser.add_argument("--overdue-count", type=int, default=10_000)
    parser.add_argument("--idle", action="store_true",
                        help="also measure an idle send-pending (nothing due), the installed "
                             "command run as cron runs it: median CPU of --idle-runs runs and "
                             "its -X importtime profile (bench/idle_bench.py)")
    parser.add_argument("--idle-runs", type=_at_least_one, default=7)
    parser.add_argument("--http", action="store_true",
                        help="also compare send-pending through the SendGrid API with SMTP, "
                             "both at 20 ms, on --latency-events events (SQLite, or the "
                             "first --db)")
    parser.add_argument("--sink-without-pipelining", action="store_true",
                        help="the sink does not offer PIPELINING (aiosmtpd's default): "
                             "send-pending then waits for each reply, as smtplib does")
    parser.add_argument("--languages", type=int, choices=range(1, len(LANGUAGES) + 1),
                        default=1, metavar="N",
                        help="also run the throughput with the users' locales spread over "
                             "N of en, de, fr, es, against an English-only run (the first "
                             "--db): the two ratios must stay within 10 %%")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile send-pending's main thread and print the top functions")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser.parse_args(argv)


def ensure_database(url: str) -> None:
    """Create the benchmark's PostgreSQL database when it does not exist yet."""
    import sqlalchemy as sa

    target = sa.engine.make_url(url)
    server = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                              {"name": target.database}).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    server.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    if args.db != "sqlite" or args.overdue:
        ensure_database(args.postgres_url)
        info["postgresql"] = pg_version(args.postgres_url)
    info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    check = Check()
    results: dict[str, Any] = {"machine": info, "argv": sys.argv[1:]}
    sink_cpu, client_cpus = placement()
    if client_cpus is not None:
        # Inherited by send-pending's process and the baseline's threads.
        os.sched_setaffinity(0, client_cpus)
        print(f"CPUs: the sink on {sink_cpu}, the client on {sorted(client_cpus)}", flush=True)
    print("the sink " + ("does not offer PIPELINING" if args.sink_without_pipelining else
                         "offers PIPELINING (bare smtplib does not use it)"), flush=True)
    with tempfile.TemporaryDirectory(prefix="itsm-bench-") as tmp, \
            SinkProcess(sink_cpu, pipelining=not args.sink_without_pipelining) as sink:
        workdir = Path(tmp)
        rows: list[Row] = []
        if not args.skip_throughput:
            dbs = database_urls(args, workdir)
            rows += throughput(args, sink, workdir, check, n_events=args.events,
                               connections=args.connections, latency=0.0,
                               label="throughput", dbs=dbs)
            if args.latency_events:
                for k in (1, 4):
                    rows += throughput(args, sink, workdir, check, n_events=args.latency_events,
                                       connections=k, latency=0.02, label="20 ms latency",
                                       dbs=dbs[:1])
        if args.languages > 1:
            rows += languages_versus_english(args, sink, workdir, check,
                                             database_urls(args, workdir)[:1])
        if rows:
            print_summary(rows)
        results["throughput"] = [row.__dict__ | {"ratio": row.ratio} for row in rows]
        if args.http:
            name, url = database_urls(args, workdir)[0]
            with HttpSinkProcess(sink_cpu) as http_sink:
                http_rows = http_versus_smtp(args, sink, http_sink, workdir, check, name, url)
            print_http_summary(http_rows)
            results["http"] = [row.__dict__ | {"ratio": row.ratio} for row in http_rows]
        if args.memory:
            results["memory"] = memory(args, sink, workdir, check)
        if args.overdue:
            results["overdue"] = overdue(args, check, sink, workdir)
        if args.idle:
            import idle_bench

            results["idle"] = idle_bench.run(database_urls(args, workdir), args.idle_runs,
                                             workdir, check, reset_schema)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if check.failures:
        print(f"\n{len(check.failures)} check(s) failed:\n  " + "\n  ".join(check.failures))
        return 1
    print("\nall checks passed")
    return 0


def print_summary(rows: list[Row]) -> None:
    print("\n| run | workload | db | K | latency | emails | send-pending /s | bare smtplib /s "
          "| ratio | send-pending CPU/email | sink CPU/email | peak RSS | statements/event |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.label} | {r.workload} | {r.db} | {r.connections} | {r.latency_ms} ms "
              f"| {r.emails} "
              f"| {r.tool_rate:.0f} | {r.base_rate:.0f} | {r.ratio:.2f}{_spread(r)} "
              f"| {r.tool_cpu_ms:.2f} ms | {r.sink_cpu_ms:.2f} ms | {r.maxrss_mb:.0f} MB "
              f"| {r.statements_per_event:.2f} |")


def _spread(row: Row) -> str:
    return f" (median of {', '.join(f'{r:.2f}' for r in row.ratios)})" \
        if len(row.ratios) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
