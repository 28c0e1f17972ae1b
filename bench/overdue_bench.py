"""overdue-scan over a million tickets on PostgreSQL (part of bench/run.py --overdue).

The tickets are made by the server itself (``INSERT ... SELECT generate_series``), in a
realistic mix keyed on ``id % 100``:

* 0        overdue: open, in progress or waiting, due in the last 60 days (1 %, 10,000
           of a million), about one in twenty unassigned;
* 1 – 85   closed or resolved, due dates spread over the last three years;
* 86 – 93  open and not yet due (due in the next 90 days);
* 94 – 99  open without a due date.

So the range ``due_at < now`` holds 86 % of the table, nearly all of it closed: an index
on ``due_at`` alone would walk it all. The scan is timed three times (warm cache), as a
``--dry-run`` (find, plan, nothing sent) and as a real scan into the SMTP sink.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text

from itsm_notify.storage import database, schema
from itsm_notify.storage.database import utcnow
from itsm_notify.storage.migrations import VERSION_TABLE, init_database

USERS = 500

TICKETS_SQL = """
INSERT INTO tickets (id, number, title, description, status, priority, requester_id,
                     assignee_id, project_id, due_at, created_at)
SELECT g,
       'TKT-' || lpad(g::text, 7, '0'),
       'Ticket ' || g || ': ' || (ARRAY['VPN drops', 'Printer jams', 'Laptop will not boot',
                                        'Shared drive missing', 'Password expired'])[g % 5 + 1],
       '',
       CASE WHEN g % 100 = 0 THEN (ARRAY['open', 'in_progress', 'waiting'])[g % 3 + 1]
            WHEN g % 100 <= 85 THEN (ARRAY['closed', 'resolved'])[g % 2 + 1]
            WHEN g % 100 <= 93 THEN (ARRAY['open', 'in_progress'])[g % 2 + 1]
            ELSE 'open' END,
       (ARRAY['low', 'medium', 'high', 'critical'])[g % 4 + 1],
       g % :users + 1,
       CASE WHEN g % 2000 = 0 THEN NULL
            WHEN g % 100 = 0 THEN (g / 100 * 37) % :users + 1
            ELSE (g * 7) % :users + 1 END,
       NULL,
       CASE WHEN g % 100 = 0 THEN :now - ((g * 7919) % 5184000 + 60) * interval '1 second'
            WHEN g % 100 <= 85 THEN :now - ((g * 7919) % 94608000 + 60) * interval '1 second'
            WHEN g % 100 <= 93 THEN :now + ((g * 7919) % 7776000 + 60) * interval '1 second'
            ELSE NULL END,
       :now - interval '3 years' + (g % 94608000) * interval '1 second'
FROM generate_series(1::bigint, :n) AS g
"""



def drop_all(engine: Engine) -> None:
    """Drop every table the tool made (its own, the contract's, the version table)."""
    schema.metadata.drop_all(engine)
    schema.contract_metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {VERSION_TABLE}")

def create_tickets(engine: Engine, n_tickets: int) -> float:
    """Empty the schema and create ``n_tickets`` tickets; return the seconds it took."""
    started = time.perf_counter()
    drop_all(engine)
    init_database(engine, contract_tables=True)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(schema.users), [
            {"id": i, "username": f"user{i}", "email": f"user{i}@example.com",
             "first_name": f"User{i}", "last_name": "Example", "is_active": True,
             "is_manager": False} for i in range(1, USERS + 1)])
        conn.execute(text(TICKETS_SQL), {"n": n_tickets, "users": USERS, "now": now})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE tickets"))
    return time.perf_counter() - started


def explain(engine: Engine, query: Any) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of a SQLAlchemy query, with its parameters bound."""
    compiled = query.compile(engine, compile_kwargs={"render_postcompile": True})
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {compiled.string}",
                                    compiled.params).all()
    return "\n".join(row[0] for row in rows)


def _timed(fn: Any, repeat: int = 3) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), result


def run(postgres_url: str, n_tickets: int, n_overdue: int, check: Any,
        sink: Any = None, workdir: Path | None = None) -> dict[str, Any]:
    from itsm_notify.config import load_settings
    from itsm_notify.engine.overdue import find_overdue, overdue_scan
    from itsm_notify.source import load_source

    expected = n_tickets // 100
    if n_overdue != expected:
        print(f"  note: this mix makes 1 % of the tickets overdue ({expected}), "
              f"not {n_overdue}")
    engine = database.make_engine(postgres_url)
    print(f"\n== overdue-scan: {n_tickets} tickets on PostgreSQL", flush=True)
    created = create_tickets(engine, n_tickets)
    print(f"  created in {created:.1f} s", flush=True)
    overrides = {"database_url": postgres_url, "default_from_email": "helpdesk@example.com",
                 "site_url": "https://helpdesk.example.com", "admins": "ops@example.com",
                 "secret_key": "bench-secret-key"}
    if sink is not None:
        overrides |= {"email_backend": "smtp", "email_host": "127.0.0.1",
                      "email_port": sink.port,
                      "delivery_log": str((workdir or Path(".")) / "overdue-email.log")}
    settings = load_settings(overrides, environ={}, dotenv_path=None)
    now = utcnow() + timedelta(seconds=1)
    source = load_source(settings)
    closed = source.mapping.closed_statuses

    def find() -> Any:
        with engine.connect() as conn:
            return find_overdue(source, conn, now)

    query_best, query_median, found = _timed(find)
    check.expect(len(found) == expected,
                 f"overdue: the query found {len(found)} tickets, expected {expected}")
    plan = explain(engine, source.due_query(now, closed, past=True))
    print(f"  find_overdue (the query, {len(found)} rows): best {query_best:.3f} s, "
          f"median {query_median:.3f} s")
    print("  plan:\n    " + plan.replace("\n", "\n    "))
    dry_best, dry_median, preview = _timed(
        lambda: overdue_scan(settings, dry_run=True, engine=engine, now=now))
    print(f"  overdue-scan --dry-run ({len(preview.planned)} digests): best {dry_best:.3f} s, "
          f"median {dry_median:.3f} s", flush=True)
    check.expect(dry_best < 2.0, f"overdue: the dry-run scan took {dry_best:.2f} s (>= 2 s)")
    result: dict[str, Any] = {"tickets": n_tickets, "overdue": len(found),
                              "created_seconds": created, "query_best": query_best,
                              "query_median": query_median, "dry_run_best": dry_best,
                              "dry_run_median": dry_median, "digests": len(preview.planned),
                              "plan": plan}
    if sink is not None:
        sink.reset()
        sink_cpu = sink.report()["cpu"]
        started = time.perf_counter()
        report = overdue_scan(settings, engine=engine, now=now)
        result["real_scan_seconds"] = time.perf_counter() - started
        received = sink.report()
        result["sink_seconds"] = received["cpu"] - sink_cpu
        result["digest_megabytes"] = received["bytes"] / 1e6
        check.expect(received["count"] == report.digests_sent == len(preview.planned),
                     f"overdue: the sink got {received['count']} digests, the scan sent "
                     f"{report.digests_sent} of {len(preview.planned)}")
        print(f"  overdue-scan, sending ({report.summary()}): "
              f"{result['real_scan_seconds']:.2f} s; the sink took "
              f"{result['digest_megabytes']:.1f} MB in {result['sink_seconds']:.2f} s of CPU",
              flush=True)
    engine.dispose()
    return result
