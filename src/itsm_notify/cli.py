"""The command line: parse, load settings, call one function, present the result.

Exit status (contract §5): 0 when the run did its work; 1 when a delivery was deferred
or failed; 2 for usage and configuration errors, an unreachable database included.
Errors are one sentence with the fix; never a traceback, never a password.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from .config import Settings, load_settings
from .engine.sender import RunReport, send_pending
from .errors import ConfigError, DatabaseUnavailable
from .storage.database import database_errors, describe_exception, make_engine, utcnow
from .storage.outbox import outbox_status, requeue_deferred, requeue_failed

app = typer.Typer(help="Notification engine for IT help desks: outbox events to email and "
                       "in-app notifications.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="Database tables.", no_args_is_help=True)
suppression_app = typer.Typer(help="Addresses never mailed (5xx refusals land here).",
                              no_args_is_help=True)
config_app = typer.Typer(help="Effective configuration.", no_args_is_help=True)
inbound_app = typer.Typer(help="Inbound mail: what came back, and what became of it.",
                          no_args_is_help=True)
preference_app = typer.Typer(help="Users' notification preferences.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(inbound_app, name="inbound")
app.add_typer(suppression_app, name="suppression")
app.add_typer(config_app, name="config")
app.add_typer(preference_app, name="preference")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="A config.toml (else ITSM_NOTIFY_CONFIG).", show_default=False)]
DatabaseOption = Annotated[str | None, typer.Option(
    "--database-url", help="Overrides DATABASE_URL.", show_default=False)]


def plain(text: object) -> str:
    """Text from tickets, users or servers, shown as typed (never read as rich markup)."""
    return escape(str(text))


def interactive() -> bool:
    return err.is_terminal


def setup_logging() -> None:
    """Plain log lines on stderr: what cron mails to its owner."""
    if not logging.getLogger().handlers:
        level = os.environ.get("ITSM_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else "INFO",
                            stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s")


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Configuration and database problems: one sentence, exit 2."""
    try:
        yield
    except (ConfigError, DatabaseUnavailable) as exc:
        err.print(f"[bold red]Error:[/] {plain(exc)}", soft_wrap=True)
        raise typer.Exit(2) from None


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    return load_settings(overrides, config_path=config)


def open_database(config: Path | None, database_url: str | None) -> tuple[Settings, Engine]:
    """The settings and an engine on a database that has the tool's tables."""
    settings = settings_from(config, database_url=database_url)
    return settings, engine_for(settings)


def engine_for(settings: Settings, *, require_tables: bool = True) -> Engine:
    """An engine on the configured database; with ``require_tables``, checked first: the
    tool's tables at this release's revision (else exit 2: run ``db upgrade`` or use
    the newer release), and the help desk's tables or views as the source maps them."""
    engine = make_engine(settings.database_url)
    if require_tables:
        from .source import load_source
        from .storage.migrations import check_schema

        source = load_source(settings)
        with database_errors(settings.database_url):
            check_schema(engine)
            source.check(engine)
    return engine


# ------------------------------------------------------------------------ db


@db_app.command("init")
def db_init(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Create the missing tables and bring the tool's own to the current revision (safe to
    run again)."""
    from .storage.migrations import init_database

    with friendly_errors():
        settings = settings_from(config, database_url=database_url)
        engine = engine_for(settings, require_tables=False)
        with database_errors(settings.database_url):
            created = init_database(engine, contract_tables=settings.source == "contract")
    if created:
        err.print(f"Created {len(created)} tables: {', '.join(created)}.")
    else:
        err.print("All tables already exist; nothing to do.")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Migrate the tool's own tables in place to the current revision (a no-op when
    current); every row is kept."""
    from .storage.migrations import HEAD, upgrade

    with friendly_errors():
        settings = settings_from(config, database_url=database_url)
        engine = engine_for(settings, require_tables=False)
        with database_errors(settings.database_url):
            created = upgrade(engine)
    note = f" (new tables: {', '.join(created)})" if created else ""
    err.print(f"The tool's tables are at revision {HEAD}{note}.")


# ------------------------------------------------------------- send-pending


def present_run(command: str, summary: str, problems: list[str], did_work: bool) -> None:
    """Problems, then one summary line: a check mark on a terminal, a log line under
    cron, and silence when there was nothing to do (cron mails only news)."""
    for problem in problems:
        err.print(f"[bold red]Problem:[/] {plain(problem)}", soft_wrap=True)
    if not did_work and not problems:
        return
    if interactive():
        err.print(f"[green]✓[/] {summary}", soft_wrap=True)
    else:
        logging.getLogger("itsm_notify").info("%s: %s", command, summary)


def stop_on_config_error(error: Exception | None) -> None:
    """A channel refused the configuration: its sentence, exit 2 (the batch in hand was
    left for the next run)."""
    if error is not None:
        err.print(f"[bold red]Error:[/] {plain(error)}", soft_wrap=True)
        raise typer.Exit(2)


def planned_table(report: RunReport, title: str) -> Table:
    table = Table(title=title)
    for column in ("event", "type", "ticket", "channel", "recipient", "subject", "note"):
        table.add_column(column, overflow="fold")
    for row in report.planned:
        table.add_row(*(plain(cell) for cell in (row.event_id, row.event_type, row.ticket,
                                                  row.channel, row.recipient, row.subject,
                                                  row.note)))
    return table


@app.command("send-pending")
def send_pending_command(
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after N events.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be sent; "
                                          "change nothing.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Claim and deliver pending outbox events (safe from cron on several hosts)."""
    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        if dry_run:
            report = send_pending(settings, limit=limit, dry_run=True, engine=engine)
            if interactive():
                out.print(planned_table(report, "send-pending --dry-run: nothing was changed"))
            else:
                for row in report.planned:
                    out.print(f"event={row.event_id} {row.event_type} {row.ticket} "
                              f"{row.channel} {row.recipient} {row.subject!r} {row.note}",
                              markup=False, soft_wrap=True)
            return
        report = _run_with_progress(settings, engine, limit)
    present_run("send-pending", report.summary(), report.problems, report.events_handled > 0)
    stop_on_config_error(report.config_error)
    raise typer.Exit(report.exit_code)


def _run_with_progress(settings: Settings, engine: Any, limit: int | None) -> RunReport:
    if not interactive():
        return send_pending(settings, limit=limit, engine=engine)
    with database_errors(settings.database_url):
        pending = outbox_status(engine, now=utcnow())["counts"]["pending"]
    total = min(pending, limit) if limit else pending
    with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("events", total=total or None)
        return send_pending(settings, limit=limit, engine=engine,
                            on_progress=lambda n: progress.advance(task, n))


# ---------------------------------------------------------------------- status


@app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Outbox counts by state, the age of the oldest pending event, and inbound messages
    by outcome."""
    from .inbound.store import count_by_outcome

    with friendly_errors():
        settings, engine = open_database(config, database_url)
        with database_errors(settings.database_url):
            status = outbox_status(engine, now=utcnow())
            status["inbound"] = count_by_outcome(engine)
    if as_json:
        sys.stdout.write(json.dumps(status) + "\n")
        return
    table = Table(title="notification_outbox")
    table.add_column("state")
    table.add_column("events", justify="right")
    for state, count in status["counts"].items():
        table.add_row(state, str(count))
    out.print(table)
    inbound = Table(title="inbound_messages")
    inbound.add_column("outcome")
    inbound.add_column("messages", justify="right")
    for outcome, count in status["inbound"].items():
        inbound.add_row(outcome, str(count))
    out.print(inbound)
    age = status["oldest_pending_age_seconds"]
    failed = status["failed_deliveries_last_24h"]
    out.print(f"oldest pending: {_age(age)}; failed in the last 24 h: "
              f"{status['failed_last_24h']} events ({failed['email']} emails, {failed['chat']} "
              f"chat messages); recipients skipped in the last 24 h (no address): "
              f"{status['skipped_recipients_last_24h']}; suppressed addresses: "
              f"{status['suppressed_addresses']}", soft_wrap=True)
    for gone in status["disabled_chat_destinations"]:
        out.print(f"[bold red]chat destination {plain(gone['name'])} is disabled[/] since "
                  f"{plain(gone['since'])}: {plain(gone['reason'])} (fix its URL, or run "
                  f"itsm-notify test-channel {plain(gone['name'])})", soft_wrap=True)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


# --------------------------------------------------------------------- requeue


@app.command("requeue")
def requeue_command(
    event_ids: Annotated[list[int] | None, typer.Argument(
        help="Event ids to requeue.", show_default=False)] = None,
    all_failed: Annotated[bool, typer.Option("--all", help="Requeue every failed event.")] = False,
    deferred: Annotated[bool, typer.Option(
        "--deferred", help="Make every deferred event (waiting for its retry) due now.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Put failed events back to pending (ids or --all), or make the deferred ones due now
    (--deferred), so the next run retries them."""
    if sum((bool(event_ids), all_failed, deferred)) != 1:
        err.print("[bold red]Error:[/] name the event ids to requeue, or pass --all (every "
                  "failed event) or --deferred (every deferred one), one of them.")
        raise typer.Exit(2)
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        what = ("every deferred event" if deferred else
                "every failed event" if all_failed else f"failed events {event_ids}")
        if not yes:
            if not sys.stdin.isatty():
                err.print("[bold red]Error:[/] requeue asks for confirmation: "
                          "pass --yes when running without a terminal.")
                raise typer.Exit(2)
            typer.confirm(f"Requeue {what}?", abort=True)
        with database_errors(settings.database_url):
            if deferred:
                count = requeue_deferred(engine, now=utcnow())
            else:
                count = requeue_failed(engine, event_ids=None if all_failed else event_ids,
                                       now=utcnow())
    err.print(f"Requeued {count} event{'s' if count != 1 else ''}.")


# ----------------------------------------------------------------- suppression


def _with_engine(config: Path | None, database_url: str | None,
                 action: Callable[[Any], Any]) -> Any:
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        with database_errors(settings.database_url):
            return action(engine)


@suppression_app.command("list")
def suppression_list(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Show suppressed addresses."""
    from .storage.deliveries import list_suppressions

    rows = _with_engine(config, database_url, list_suppressions)
    table = Table(title="email_suppressions")
    for column in ("address", "code", "reason", "since"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(plain(row["address"]), str(row["code"] or ""), plain(row["reason"]),
                      f"{row['created_at']:%Y-%m-%d %H:%M}")
    out.print(table)


@suppression_app.command("add")
def suppression_add(address: str,
                    reason: Annotated[str, typer.Option(help="Why.")] = "added by hand",
                    config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Never mail ADDRESS again (until removed)."""
    from .storage.deliveries import add_suppression

    added = _with_engine(config, database_url,
                         lambda engine: add_suppression(engine, address, reason, utcnow()))
    err.print(f"{address} suppressed." if added else f"{address} was already suppressed.")


@suppression_app.command("remove")
def suppression_remove(address: str, config: ConfigOption = None,
                       database_url: DatabaseOption = None) -> None:
    """Mail ADDRESS again."""
    from .storage.deliveries import remove_suppression

    removed = _with_engine(config, database_url,
                           lambda engine: remove_suppression(engine, address))
    err.print(f"{address} removed from the suppression list." if removed
              else f"{address} was not on the suppression list.")


# ----------------------------------------------------------------- inbound mail


@app.command("receive")
def receive_command(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Handle one inbound message on standard input (an MTA pipe): exit 0 handled or
    ignored, 75 when it could not be recorded (the MTA retries), 2 configuration error."""
    from .errors import SchemaOutOfDate
    from .inbound.handle import InboundHandler
    from .inbound.intake import EX_CONFIG, EX_TEMPFAIL, receive_stdin

    setup_logging()
    try:
        settings = settings_from(config, database_url=database_url)
        handler = InboundHandler(settings, engine_for(settings))
    except (ConfigError, DatabaseUnavailable) as exc:
        if isinstance(exc, DatabaseUnavailable) and not isinstance(exc, SchemaOutOfDate) \
                and _database_down(settings.database_url):
            # the MTA keeps the message and tries again later
            err.print(f"{plain(exc)} The MTA will retry.", soft_wrap=True)
            raise typer.Exit(EX_TEMPFAIL) from None
        err.print(f"Error: {plain(exc)}", soft_wrap=True)
        raise typer.Exit(EX_CONFIG) from None
    raise typer.Exit(receive_stdin(sys.stdin.buffer, handler,
                                   max_bytes=settings.inbound_max_bytes))


def _database_down(url: str) -> bool:
    """The database at a valid URL does not answer (as opposed to a wrong URL, or
    missing tables, which no retry fixes)."""
    from .storage.database import raise_if_database_down

    try:
        engine = make_engine(url)
    except DatabaseUnavailable:
        return False
    try:
        raise_if_database_down(engine)
    except DatabaseUnavailable:
        return True
    finally:
        engine.dispose()
    return False


@app.command("fetch-mail")
def fetch_mail_command(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Handle every message in the inbound mailbox ITSM_INBOUND_URL (IMAP or Maildir) and
    move each one it dealt with (safe on several hosts at once)."""
    from .inbound.handle import InboundHandler
    from .inbound.intake import fetch_mail_with_settings

    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        report = fetch_mail_with_settings(settings, InboundHandler(settings, engine))
    did_work = bool(report.handled or report.rejected or report.already_seen)
    present_run("fetch-mail", report.summary(), report.problems, did_work)
    raise typer.Exit(report.exit_code)


@inbound_app.command("list")
def inbound_list(
    outcome: Annotated[str | None, typer.Option(
        help="Only this outcome: comment, ticket, bounce, delay, complaint, auto_reply, "
             "own_mail, ignored, unmatched, refused, quarantined or rejected.",
        show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The latest inbound messages and what became of each (re-process those whose raw
    bytes were kept with 'inbound reprocess ID')."""
    from .inbound.store import list_messages
    from .states import InboundOutcome

    if outcome is not None and outcome not in set(InboundOutcome):
        err.print(f"[bold red]Error:[/] --outcome {plain(outcome)} is not an outcome: use one "
                  f"of {', '.join(InboundOutcome)}.", soft_wrap=True)
        raise typer.Exit(2)
    rows = _with_engine(config, database_url,
                        lambda engine: list_messages(engine, outcome=outcome, limit=limit))
    if as_json:
        sys.stdout.write(json.dumps([row.as_json() for row in rows]) + "\n")
        return
    table = Table(title="inbound_messages" + (f" ({outcome})" if outcome else ""))
    for column in ("id", "received", "outcome", "from", "subject", "ticket", "reason", "raw"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row.id), f"{row.received_at:%Y-%m-%d %H:%M}", row.outcome,
                      plain(row.from_address or ""), plain(row.subject or ""),
                      str(row.ticket_id or ""), plain(row.reason or ""),
                      "kept" if row.raw_kept else "")
    out.print(table)


@inbound_app.command("reprocess")
def inbound_reprocess(
    record_ids: Annotated[list[int], typer.Argument(help="Ids from 'inbound list'.")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run stored messages through the handler again (e.g. after adding their sender as
    a user): exit 0 when each was handled, 1 when one was not."""
    from .inbound.handle import InboundHandler
    from .states import InboundOutcome

    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        handler = InboundHandler(settings, engine)
        with database_errors(settings.database_url):
            results = [handler.reprocess(record_id) for record_id in record_ids]
    status = 0
    for result in results:
        if result.outcome is None or result.outcome is InboundOutcome.REJECTED:
            status = 1
            err.print(f"[bold red]✗[/] {result.record_id}: {plain(result.reason)}",
                      soft_wrap=True)
        else:
            err.print(f"[green]✓[/] {result.record_id}: {result.outcome}: "
                      f"{plain(result.reason)}", soft_wrap=True)
    raise typer.Exit(status)


# ---------------------------------------------------------------------- config


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings (secrets masked)."""
    from dataclasses import fields

    from sqlalchemy.engine import make_url

    with friendly_errors():
        settings = settings_from(config)
    table = Table(title="effective settings")
    table.add_column("environment name")
    table.add_column("value", overflow="fold")
    for f in fields(settings):
        value = getattr(settings, f.name)
        if hasattr(value, "masked"):
            shown = value.masked()
        elif f.name == "database_url":
            shown = make_url(value).render_as_string(hide_password=True)
        elif f.name == "admins":
            shown = ", ".join(a.email for a in value)
        elif isinstance(value, tuple):
            shown = ", ".join(value)
        else:
            shown = str(value)
        table.add_row(f.metadata["env"], plain(shown))
    out.print(table)


# ----------------------------------------------------------------------- purge


@app.command("purge")
def purge_command(
    days: Annotated[int, typer.Option(min=1, help="Keep events that ended more recently.")] = 30,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Delete events that ended more than DAYS ago, with their delivery records."""
    from datetime import timedelta

    from .storage.deliveries import purge_finished

    events, records = _with_engine(
        config, database_url,
        lambda engine: purge_finished(engine, timedelta(days=days), utcnow()))
    err.print(f"Deleted {events} finished events and {records} delivery records "
              f"older than {days} days.")


# ----------------------------------------------------------------- unsubscribe


@app.command("unsubscribe")
def unsubscribe_command(
    token: str,
    user: Annotated[int | None, typer.Option(help="Refuse a token naming another user.")] = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Verify an unsubscribe TOKEN and turn that user's emails of that type off."""
    from .errors import InvalidToken
    from .ops.unsubscribe import apply_token

    with friendly_errors():
        settings, engine = open_database(config, database_url)
        try:
            with database_errors(settings.database_url):
                user_id, event_type = apply_token(engine, settings.secret_key, token,
                                                  expected_user_id=user)
        except InvalidToken as exc:
            err.print(f"[bold red]Error:[/] {plain(exc)}")
            raise typer.Exit(1) from None
    err.print(f"User {user_id} will no longer get {event_type} emails.")


# ------------------------------------------------------------------------ demo


@app.command("demo")
def demo_command(
    path: Annotated[Path, typer.Option(help="The SQLite file to (re)create.")] =
    Path("itsm-notify-demo.db"),
) -> None:
    """A self-contained demo on a local SQLite file, mail to the console."""
    from .ops.demo import run_demo

    setup_logging()
    with friendly_errors():
        status = run_demo(path, console=out)
    raise typer.Exit(status)


@app.command("preview")
def preview_command(
    folder: Annotated[Path, typer.Option("--out", help="The folder to write the pages to.")] =
    Path("itsm-notify-preview"),
    language: Annotated[str | None, typer.Option(
        "--language", help="Only this language (default: every language with a catalog).",
        show_default=False)] = None,
    event: Annotated[int | None, typer.Option(
        "--event", min=1, max=2**63 - 1, show_default=False,
        help="Render this outbox event, for each of its recipients, instead of the "
             "samples.")] = None,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Then serve the pages on http://127.0.0.1:PORT/ until Ctrl-C.")
    ] = False,
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="With --serve (0: any free port).")] = 8025,
    as_json: Annotated[bool, typer.Option("--json", help="List the pages written as "
                                          "JSON.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Render every email (each event type, and test-email) in each language into a
    folder of HTML pages with an index: headers, HTML and text side by side. Sample data
    (no database, no mail), or a real event with --event ID."""
    from .ops.preview import GalleryServer, choose_languages, make_gallery, wait_for_stop

    with friendly_errors():
        settings = settings_from(config, database_url=database_url)
        languages = choose_languages(language)
        engine = engine_for(settings) if event is not None else None
        gallery = make_gallery(settings, folder, languages=languages, now=utcnow(),
                               event_id=event, engine=engine)
    if as_json:
        sys.stdout.write(json.dumps(gallery.as_json()) + "\n")
        sys.stdout.flush()
    for problem in gallery.problems:
        err.print(f"[bold red]Problem:[/] {plain(problem)}", soft_wrap=True)
    emails = len({page.key for page in gallery.pages})
    err.print(f"Wrote {emails} email{'s' if emails != 1 else ''} in {len(languages)} "
              f"language{'s' if len(languages) != 1 else ''} to {plain(gallery.index)}.",
              soft_wrap=True)
    if serve:
        with friendly_errors():
            server = GalleryServer(folder, port)
        with server:
            err.print(f"Serving the preview on {server.url} (stop with Ctrl-C).",
                      markup=False, soft_wrap=True)
            wait_for_stop()
    raise typer.Exit(1 if gallery.problems else 0)


# --------------------------------------------- overdue-scan, scheduler, test-email


@app.command("overdue-scan")
def overdue_scan_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show who would get which digest; "
                                          "change nothing.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Send overdue digests: one per assignee; unassigned tickets to ADMINS."""
    from .engine.overdue import overdue_scan

    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        report = overdue_scan(settings, dry_run=dry_run, engine=engine)
    if dry_run:
        _present_planned_digests("overdue-scan", report)
        return
    _end_scan("overdue-scan", report, did_work=report.digests > 0)


def _end_scan(command: str, report: Any, *, did_work: bool) -> NoReturn:
    """The end of a scan that queued and sent events (digests, warnings, summaries): its
    summary, exit 2 when a channel refused the configuration, else its exit code."""
    present_run(command, report.summary(), report.problems, did_work)
    stop_on_config_error(report.delivery.config_error)
    raise typer.Exit(report.exit_code)


def _present_planned_digests(command: str, report: Any) -> None:
    if interactive():
        table = Table(title=f"{command} --dry-run: nothing was changed")
        for column in ("recipient", "tickets", "subject", "note"):
            table.add_column(column, overflow="fold")
        for row in report.planned:
            table.add_row(plain(row.recipient), str(row.tickets), plain(row.subject),
                          plain(row.note))
        out.print(table)
    else:
        for row in report.planned:
            out.print(f"{row.recipient} tickets={row.tickets} {row.subject!r} {row.note}",
                      markup=False, soft_wrap=True)
    err.print(f"Nothing was changed. {report.summary()}", soft_wrap=True)


@app.command("scheduler")
def scheduler_command(
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, show_default=False,
        help="Also serve Prometheus metrics on http://127.0.0.1:N/metrics.")] = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Run send-pending every ITSM_SEND_INTERVAL_SECONDS, overdue-scan on ITSM_OVERDUE_CRON,
    due-soon-scan on ITSM_DUE_SOON_CRON, send-summaries every minute and, with
    ITSM_INBOUND_URL, fetch-mail every ITSM_FETCH_INTERVAL_SECONDS, until stopped (SIGTERM
    or Ctrl-C finish the runs in hand, then exit 0)."""
    from .ops.scheduler import run_scheduler

    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        run_scheduler(settings, engine, on_started=_present_schedule,
                      metrics_port=metrics_port)


def _present_schedule(scheduler: Any) -> None:
    for job in scheduler.jobs():
        when = f"{job.next_run:%Y-%m-%d %H:%M:%S %Z}" if job.next_run else "not scheduled"
        err.print(f"Scheduled {job.name} {job.schedule}; next run {when}.", markup=False,
                  soft_wrap=True)
    if scheduler.metrics is not None:
        err.print(f"Serving metrics on {scheduler.metrics.url}.", markup=False, soft_wrap=True)
    err.print("Stop with Ctrl-C or SIGTERM: the runs in hand finish first.", soft_wrap=True)


# ------------------------------------------------------- when to notify (issue 18)


@app.command("due-soon-scan")
def due_soon_scan_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show who would be warned of "
                                          "what; change nothing.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Warn assignees (unassigned: the team, then ADMINS) of tickets nearing their due date,
    at the ITSM_DUE_SOON thresholds, in business hours."""
    from .engine.due_soon import due_soon_scan

    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        if not settings.due_soon_thresholds:
            raise ConfigError("ITSM_DUE_SOON is not set, so there is nothing to warn about: "
                              "set the thresholds, e.g. '4h, 80%'.")
        report = due_soon_scan(settings, dry_run=dry_run, engine=engine)
    if dry_run:
        _present_planned_digests("due-soon-scan", report)
        return
    _end_scan("due-soon-scan", report, did_work=report.warnings_queued > 0)


@app.command("send-summaries")
def send_summaries_command(config: ConfigOption = None,
                           database_url: DatabaseOption = None) -> None:
    """Send the summaries whose window has closed (users on hourly or daily), and what was
    collected for users back on immediate. Safe from cron on several hosts at once."""
    from .engine.summaries import send_summaries

    setup_logging()
    with friendly_errors():
        settings, engine = open_database(config, database_url)
        report = send_summaries(settings, engine=engine)
    _end_scan("send-summaries", report, did_work=report.summaries_made > 0)


@preference_app.command("frequency")
def preference_frequency(
    user_id: Annotated[int, typer.Argument(help="The user's id.", show_default=False)],
    frequency: Annotated[str, typer.Argument(help="immediate, hourly or daily.",
                                             show_default=False)],
    hour: Annotated[int, typer.Option(min=0, max=23, help="daily: the hour of the user's day "
                                      "at which the summary goes out.")] = 8,
    time_zone: Annotated[str | None, typer.Option(
        "--time-zone", show_default=False,
        help="An IANA zone such as Europe/Berlin (default: ITSM_TIME_ZONE, else UTC).")
    ] = None,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Set how often USER_ID gets email: every one at once (immediate), or one summary an
    hour (hourly) or a day (daily)."""
    from sqlalchemy import select

    from .engine.schedules import set_frequency
    from .engine.summaries import open_items
    from .storage.schema import users
    from .timing.business_hours import parse_time_zone
    from .timing.windows import Frequency, parse_frequency

    with friendly_errors():
        try:
            chosen = parse_frequency(frequency)
        except ValueError as exc:
            raise ConfigError(str(exc)[0].upper() + str(exc)[1:]) from None
        if time_zone:
            parse_time_zone(time_zone, "--time-zone")
        settings, engine = open_database(config, database_url)
        with database_errors(settings.database_url):
            with engine.connect() as conn:
                if conn.execute(select(users.c.id).where(users.c.id == user_id)).first() is None:
                    raise ConfigError(f"There is no user with id {user_id}: give the id of "
                                      "one of the help desk's users.")
            set_frequency(engine, user_id, chosen, daily_hour=hour, time_zone=time_zone,
                          now=utcnow())
            with engine.connect() as conn:
                waiting = open_items(conn, [user_id]).get(user_id, 0)
    zone = time_zone or settings.time_zone or "UTC"
    if chosen is Frequency.DAILY:
        told = f"User {user_id} now gets one summary a day at {hour:02d}:00 ({zone})."
    elif chosen is Frequency.HOURLY:
        told = f"User {user_id} now gets one summary an hour."
    else:
        collected = "the update collected so far goes" if waiting == 1 else \
            f"the {waiting} updates collected so far go"
        note = f"; {collected} out with the next send-summaries run" if waiting else ""
        told = f"User {user_id} now gets every email at once{note}."
    err.print(told, markup=False, soft_wrap=True)


@app.command("metrics")
def metrics_command(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """Print the Prometheus metrics (text format), e.g. for node_exporter's textfile
    collector from cron."""
    from .ops.metrics import load_snapshot, render_metrics

    with friendly_errors():
        settings, engine = open_database(config, database_url)
        with database_errors(settings.database_url):
            snapshot = load_snapshot(engine, utcnow())
    sys.stdout.write(render_metrics(snapshot).decode())


@app.command("test-email")
def test_email_command(
    address: Annotated[str, typer.Argument(help="Where to send the test email.")],
    backend: Annotated[str | None, typer.Option(
        "--backend", help="console, smtp or file (overrides EMAIL_BACKEND).",
        show_default=False)] = None,
    from_address: Annotated[str | None, typer.Option(
        "--from", help="The sender (overrides DEFAULT_FROM_EMAIL).", show_default=False)] = None,
    language: Annotated[str | None, typer.Option(
        "--language", help="Write it in this language (default: ITSM_DEFAULT_LOCALE).",
        show_default=False)] = None,
    config: ConfigOption = None,
) -> None:
    """Send one test email through the configured backend, showing each step."""
    from .compose.i18n import catalog_language
    from .events.addresses import address_problem
    from .ops.diagnostics import effective_settings, send_test_email

    with friendly_errors():
        settings = settings_from(config, email_backend=backend,
                                 default_from_email=from_address,
                                 default_locale=language and catalog_language(language))
    if problem := address_problem(address):
        err.print(f"[bold red]Error:[/] {plain(address)} is {problem}: give a valid address.",
                  soft_wrap=True)
        raise typer.Exit(2)
    for name, value in effective_settings(settings):
        out.print(f"{name:<20} {value}", markup=False, soft_wrap=True)
    out.print()
    result = send_test_email(settings, address, on_step=_present_step)
    _present_probe(result, f"Test email sent to {plain(address)}")


@app.command("test-channel")
def test_channel_command(
    name: Annotated[str, typer.Argument(help="The chat destination ([chat.NAME]).")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Post one test message to a chat destination, showing each step; a destination
    disabled because its webhook was gone is enabled again once it takes the message."""
    from .ops.test_channel import send_test_message

    with friendly_errors():
        settings = settings_from(config, database_url=database_url)
        engine = make_engine(settings.database_url)
        result = send_test_message(settings, name, engine=engine, on_step=_present_step)
    _present_probe(result, f"Test message posted to {plain(name)}")


def _present_probe(result: Any, done: str) -> None:
    """The end of a test-email or test-channel: the failed step and the likely fix (exit
    1), or how long it all took."""
    if result.failed_step:
        out.print(f"[bold red]✗ {plain(result.failed_step)} failed:[/] "
                  f"{plain(result.reply or '')}", soft_wrap=True)
        out.print(f"[bold]Likely fix:[/] {plain(result.hint or '')}", soft_wrap=True)
        raise typer.Exit(result.exit_code)
    total = sum(step.seconds for step in result.steps)
    out.print(f"[green]✓[/] {done} in {total * 1000:.0f} ms.", soft_wrap=True)


def _present_step(step: Any) -> None:
    mark = "[green]✓[/]" if step.ok else "[bold red]✗[/]"
    out.print(f"{mark} {plain(step.name):<46} {step.seconds * 1000:>6.0f} ms  "
              f"{plain(step.detail)}", soft_wrap=True)


def main() -> None:
    """The entry point. An exception nothing else expected (a bug, a failure no one
    foresaw) ends the command with one sentence and exit 1, never a traceback: claimed
    events are retried after their lease, so nothing is lost. The traceback goes to the
    log at debug level."""
    try:
        app()
    except Exception as exc:
        logging.getLogger("itsm_notify").debug("unexpected error", exc_info=True)
        err.print(f"[bold red]Error:[/] unexpected failure ({plain(describe_exception(exc))}); "
                  "nothing was lost: claimed events are retried once their lease runs out. "
                  "Please report it with the output of ITSM_LOG_LEVEL=DEBUG.", soft_wrap=True)
        raise SystemExit(1) from None
