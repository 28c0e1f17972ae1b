"""Inbound intake: receive (MTA pipe), fetch-mail over IMAP (a real Dovecot) and from a
Maildir; every message handled exactly once, whatever crashes or runs beside it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from imap_server import Dovecot, ImapAccount, dovecot_missing
from inbound_support import (
    RecordingHandler,
    create_tables,
    effect_keys,
    make_message,
    recorded_rows,
)
from itsm_notify.errors import ConfigError
from itsm_notify.inbound.handling import (
    DEFAULT_MAX_BYTES,
    FetchReport,
    HandleResult,
    Outcome,
    ReceivedMail,
    message_id_of,
    read_message,
)
from itsm_notify.inbound.intake import (
    EX_CONFIG,
    EX_OK,
    EX_TEMPFAIL,
    MailboxURL,
    fetch_mail,
    parse_inbound_url,
    receive_stdin,
)
from itsm_notify.inbound.store import REJECTED, record_message
from itsm_notify.storage.database import make_engine

WORKER = Path(__file__).resolve().parent / "inbound_support.py"

# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def dovecot(trust_ca: trustme.CA) -> Iterator[Dovecot]:
    skip_or_fail_without_dovecot()
    with Dovecot(trust_ca) as server:
        yield server


def skip_or_fail_without_dovecot() -> None:
    """Skip on a developer's machine without Dovecot; fail in CI, which must install it."""
    if reason := dovecot_missing():
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run must install it)")
        pytest.skip(reason)


@pytest.fixture
def account(dovecot: Dovecot) -> ImapAccount:
    return dovecot.add_user()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(sqlite_url)
    create_tables(engine)
    yield engine
    engine.dispose()


def down_url(url: str) -> str:
    """The same kind of database, somewhere nothing answers."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return "sqlite:////nonexistent-folder/itsm.db"
    return parsed.set(port=1).render_as_string(hide_password=False)


def fetch(account: ImapAccount, handler: RecordingHandler, ca: Path, *,
          scheme: str = "imaps", max_bytes: int = DEFAULT_MAX_BYTES,
          move_seen_after: float = 60.0) -> FetchReport:
    return fetch_mail(account.url(scheme), account.password, handler, ca_file=str(ca),
                      max_bytes=max_bytes, move_seen_after=move_seen_after)


def run_worker(command: str, database_url: str, *, env: dict[str, str] | None = None,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(WORKER), command, database_url],
                          input=stdin, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})


def worker_env(account: ImapAccount, ca: Path) -> dict[str, str]:
    return {"ITSM_INBOUND_URL": account.url(), "ITSM_INBOUND_PASSWORD": account.password,
            "ITSM_INBOUND_SSL_CAFILE": str(ca)}


def start_worker(database_url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(WORKER), "fetch-mail", database_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **env})


# ------------------------------------------------------------- the URL and the key


@pytest.mark.parametrize(("url", "expected"), [
    ("imaps://helpdesk@mail.example.com/INBOX",
     MailboxURL("imaps", "mail.example.com", 993, "helpdesk", "INBOX")),
    ("imap://helpdesk@mail.example.com",
     MailboxURL("imap", "mail.example.com", 143, "helpdesk", "INBOX")),
    ("imaps://help@example.com@mail.example.com:10993/Support/Inbound",
     MailboxURL("imaps", "mail.example.com", 10993, "help@example.com", "Support/Inbound")),
    ("IMAPS://help%40example.com@127.0.0.1/INBOX",
     MailboxURL("imaps", "127.0.0.1", 993, "help@example.com", "INBOX")),
    ("maildir:/var/mail/helpdesk", MailboxURL("maildir", path="/var/mail/helpdesk")),
    ("maildir:///var/mail/helpdesk", MailboxURL("maildir", path="/var/mail/helpdesk")),
])
def test_inbound_urls_parse(url: str, expected: MailboxURL) -> None:
    assert parse_inbound_url(url) == expected


@pytest.mark.parametrize(("url", "fix"), [
    ("pop3://helpdesk@mail.example.com", "must start with imaps://"),
    ("imaps://helpdesk:hunter2@mail.example.com/INBOX", "put it in ITSM_INBOUND_PASSWORD"),
    ("imaps://mail.example.com/INBOX", "needs a user and a host"),
    ("imaps://helpdesk@mail.example.com:99999x/INBOX", "port that is not a number"),
    ("maildir:", "needs a path"),
])
def test_bad_inbound_urls_say_how_to_fix_them(url: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=fix) as caught:
        parse_inbound_url(url)
    assert "hunter2" not in str(caught.value)


def test_a_redelivery_with_other_trace_headers_or_line_endings_has_the_same_key() -> None:
    def message(raw: bytes) -> ReceivedMail:
        return ReceivedMail.from_bytes(raw, source="stdin")

    first = message(b"Received: from a\r\nMessage-ID:\r\n <Abc@x>\r\n\r\nhi\r\nthere\r\n")
    again = message(b"Delivered-To: hd@x\nReceived: from b\nMessage-ID: <Abc@x>\n\nhi\nthere\n")
    assert first.message_id == again.message_id == "Abc@x"
    assert first.key == again.key
    assert message(b"Message-ID: <abc@x>\r\n\r\nhi\r\nthere\r\n").key != first.key
    # a printer that stamps every message with one Message-ID does not lose the second
    assert message(b"Message-ID: <Abc@x>\r\n\r\nsomething else\r\n").key != first.key
    no_id = message(b"Subject: no id\r\n\r\nhi\r\n")
    assert no_id.message_id is None
    assert no_id.key == message(b"Subject: no id\n\nhi\n").key != message(b"\n\nhi\n").key


def test_a_message_larger_than_the_limit_keeps_its_headers_size_and_digest() -> None:
    raw = make_message(1, body="x" * 5000)
    message = read_message(io.BytesIO(raw), source="stdin", max_bytes=1000)
    whole = ReceivedMail.from_bytes(raw, source="stdin")
    assert message.too_large and message.size == len(raw)
    assert message.raw.endswith(b"\r\n\r\n") and b"xxx" not in message.raw
    assert message.digest == whole.digest and message.key != whole.key
    again = read_message(io.BytesIO(raw), source="stdin", max_bytes=1000)
    assert message.key == again.key


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600) | st.text(max_size=300).map(lambda t: t.encode("utf-8")))
def test_any_bytes_have_a_key(raw: bytes) -> None:
    message = ReceivedMail.from_bytes(b"Message-ID: " + raw, source="stdin")
    assert len(message.key) == 64 and int(message.key, 16) >= 0
    message_id_of(raw)  # never raises


# ------------------------------------------------------------------------ the store


def test_record_message_reports_a_key_seen_before_and_keeps_the_transaction(
        engine: sa.Engine) -> None:
    raw = b"Message-ID: <big@x>\r\n\r\n" + b"x" * 200_000  # > 64 KiB: LONGBLOB on MariaDB
    with engine.connect() as conn:
        first = record_message(conn, message_key="a" * 64, source="stdin", size=len(raw),
                               outcome=REJECTED, reason="test", message_id="m" * 2000,
                               subject="s" * 2000, raw=raw)
        again = record_message(conn, message_key="a" * 64, source="imap", size=1,
                               outcome="recorded")
        other = record_message(conn, message_key="b" * 64, source="maildir", size=1,
                               outcome="recorded")
        conn.commit()
    assert first.new and first.id is not None and other.new
    assert not again.new and again.previous_outcome == REJECTED
    rows = recorded_rows(engine)
    assert [r.message_key[0] for r in rows] == ["a", "b"]
    assert rows[0].raw == raw and len(rows[0].message_id) == 998 and rows[1].raw is None


hostile_text = st.binary(max_size=1200).map(lambda b: b.decode("utf-8", "surrogateescape"))


def test_record_message_stores_hostile_header_text_on_every_database(engine: sa.Engine) -> None:
    @settings(max_examples=15, deadline=None)
    @given(message_id=hostile_text, subject=hostile_text, sender=hostile_text)
    def record(message_id: str, subject: str, sender: str) -> None:
        with engine.connect() as conn:
            key = hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()
            recorded = record_message(conn, message_key=key, source="stdin", size=1,
                                      outcome=REJECTED, reason=subject, message_id=message_id,
                                      subject=subject, from_address=sender, raw=b"\0\xff")
            conn.rollback()
        assert recorded.new

    record()


# -------------------------------------------------------------------------- receive


def test_receive_handles_a_message_once_when_the_mta_delivers_it_twice(
        engine: sa.Engine) -> None:
    handler = RecordingHandler(engine)
    raw = make_message(1)
    assert receive_stdin(io.BytesIO(raw), handler) == EX_OK
    assert receive_stdin(io.BytesIO(raw), handler) == EX_OK
    rows = recorded_rows(engine)
    assert len(rows) == 1 and rows[0].source == "stdin" and rows[0].outcome == "recorded"
    assert rows[0].from_address == "user1@example.com" and rows[0].size == len(raw)
    assert effect_keys(engine) == [rows[0].message_key]


def test_receive_through_a_pipe_retried_once_and_75_when_the_database_is_down(
        database_url: str, engine: sa.Engine) -> None:
    raw = make_message(7, message_id=False)
    down = run_worker("receive", down_url(database_url), stdin=raw)
    assert down.returncode == EX_TEMPFAIL, down.stderr
    assert b"could not be recorded" in down.stderr and b"the MTA will retry" in down.stderr
    assert b"Traceback" not in down.stderr
    for _ in range(2):  # the MTA retries; the second delivery is a duplicate
        done = run_worker("receive", database_url, stdin=raw)
        assert done.returncode == EX_OK, done.stderr
    assert len(effect_keys(engine)) == 1 and len(recorded_rows(engine)) == 1


def test_receive_records_a_message_too_large_as_rejected_and_exits_0(
        sqlite_engine: sa.Engine) -> None:
    raw = make_message(2, body="y" * 10_000)
    code = receive_stdin(io.BytesIO(raw), RecordingHandler(sqlite_engine), max_bytes=4096)
    assert code == EX_OK
    [row] = recorded_rows(sqlite_engine)
    assert row.outcome == REJECTED and "too large" in row.reason and row.size == len(raw)
    assert row.raw.startswith(b"From: ") and b"yyy" not in row.raw


@pytest.mark.parametrize(("error", "code", "said"), [
    (ConfigError("DATABASE_URL is wrong: fix it."), EX_CONFIG, "DATABASE_URL is wrong"),
    (RuntimeError("a bug"), EX_TEMPFAIL, "the MTA will retry"),
])
def test_receive_exit_status_when_the_handler_raises(error: Exception, code: int,
                                                     said: str) -> None:
    def handler(message: ReceivedMail) -> HandleResult:
        raise error

    errors = io.StringIO()
    assert receive_stdin(io.BytesIO(make_message(3)), handler, errors=errors) == code
    assert said in errors.getvalue()


# ----------------------------------------------------------------------- IMAP


def test_fetch_over_imaps_moves_handled_and_rejected_messages(
        account: ImapAccount, engine: sa.Engine, ca_bundle_path: Path) -> None:
    account.append(*(make_message(n) for n in range(4)), make_message(9, message_id=False))
    handler = RecordingHandler(
        engine, reject=lambda m: "unknown sender" if b"user3@" in m.raw else None)
    report = fetch(account, handler, ca_bundle_path)
    assert (report.handled, report.rejected, report.exit_code) == (4, 1, 0)
    assert account.messages("INBOX") == []
    assert len(account.messages("itsm-done")) == 4
    [failed] = account.messages("itsm-failed")
    assert b"user3@" in failed
    rows = recorded_rows(engine)
    assert {r.source for r in rows} == {"imap"} and len(effect_keys(engine)) == 5
    [rejected] = [r for r in rows if r.outcome == REJECTED]
    assert rejected.raw == failed and rejected.reason == "unknown sender"


def test_fetch_over_imap_with_starttls(account: ImapAccount, sqlite_engine: sa.Engine,
                                       ca_bundle_path: Path) -> None:
    account.append(make_message(1))
    report = fetch(account, RecordingHandler(sqlite_engine), ca_bundle_path, scheme="imap")
    assert report.handled == 1
    assert len(account.messages("itsm-done")) == 1


def test_a_server_without_tls_gets_no_password_unless_allowed(
        trust_ca: trustme.CA, sqlite_engine: sa.Engine) -> None:
    skip_or_fail_without_dovecot()
    with Dovecot(trust_ca, tls=False) as plain:
        account = plain.add_user()
        account.append(make_message(1))
        handler = RecordingHandler(sqlite_engine)
        with pytest.raises(ConfigError, match=r"does not offer STARTTLS.*"
                                              r"ITSM_INBOUND_ALLOW_PLAINTEXT_AUTH=true"):
            fetch_mail(account.url("imap"), account.password, handler)
        assert recorded_rows(sqlite_engine) == []
        with pytest.raises(ConfigError, match=r"TLS with the IMAP server .* failed .*"
                                              r"imaps:// needs the server's implicit-TLS port"):
            fetch_mail(account.url("imaps"), account.password, handler)
        report = fetch_mail(account.url("imap"), account.password, handler,
                            allow_plaintext_auth=True)
        assert report.handled == 1


def test_a_wrong_password_is_a_configuration_error_and_nothing_moves(
        account: ImapAccount, sqlite_engine: sa.Engine, ca_bundle_path: Path) -> None:
    account.append(make_message(1))
    with pytest.raises(ConfigError, match=r"refused the login.*ITSM_INBOUND_PASSWORD") as caught:
        fetch_mail(account.url(), "not-the-password", RecordingHandler(sqlite_engine),
                   ca_file=str(ca_bundle_path))
    assert "not-the-password" not in str(caught.value)
    assert len(account.messages("INBOX")) == 1 and recorded_rows(sqlite_engine) == []


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_an_untrusted_certificate_is_a_configuration_error(
        scheme: str, account: ImapAccount, sqlite_engine: sa.Engine) -> None:
    account.append(make_message(1))
    with pytest.raises(ConfigError, match=r"not trusted.*ITSM_INBOUND_SSL_CAFILE"):
        fetch_mail(account.url(scheme), account.password, RecordingHandler(sqlite_engine))
    assert len(account.messages("INBOX")) == 1 and recorded_rows(sqlite_engine) == []


def test_an_unreachable_server_or_a_missing_folder_is_a_configuration_error(
        account: ImapAccount, sqlite_engine: sa.Engine, ca_bundle_path: Path) -> None:
    handler = RecordingHandler(sqlite_engine)
    with pytest.raises(ConfigError, match="Cannot reach the IMAP server at 127.0.0.1:1 "
                                          r"\(connection refused\)"):
        fetch_mail(f"imaps://{account.user}@127.0.0.1:1/INBOX", "x", handler)
    with pytest.raises(ConfigError, match="Cannot open the folder 'Nope'"):
        fetch_mail(account.url(folder="Nope"), account.password, handler,
                   ca_file=str(ca_bundle_path))


def test_a_message_too_large_is_rejected_with_its_headers_and_moved_to_failed(
        account: ImapAccount, sqlite_engine: sa.Engine, ca_bundle_path: Path) -> None:
    account.append(make_message(1, body="z" * 20_000), make_message(2))
    report = fetch(account, RecordingHandler(sqlite_engine), ca_bundle_path, max_bytes=8192)
    assert (report.handled, report.rejected) == (1, 1)
    assert len(account.messages("itsm-failed")) == 1
    [big] = [r for r in recorded_rows(sqlite_engine) if r.outcome == REJECTED]
    assert big.size > 20_000 and b"zzz" not in big.raw and b"Subject: Printer 1" in big.raw


def test_the_database_down_leaves_every_message_in_the_inbox(
        account: ImapAccount, sqlite_url: str, ca_bundle_path: Path) -> None:
    account.append(*(make_message(n) for n in range(5)))
    down = make_engine(down_url(sqlite_url))
    report = fetch(account, RecordingHandler(down), ca_bundle_path)
    assert report.deferred == 3 and report.exit_code == 1
    assert "could not be recorded" in report.interrupted
    assert len(account.messages("INBOX")) == 5


def test_messages_that_make_the_handler_fail_do_not_hold_up_the_rest(
        tmp_path: Path, sqlite_engine: sa.Engine) -> None:
    maildir = make_maildir(tmp_path / "Maildir")
    for n in range(6):
        (maildir / "new" / f"{n}.M1P1.host").write_bytes(make_message(n))
    recorder = RecordingHandler(sqlite_engine)

    def buggy(message: ReceivedMail) -> HandleResult:
        if b"Message number 4" not in message.raw:
            raise ValueError("a bug this message trips")
        return recorder(message)

    report = fetch_mail(f"maildir:{maildir}", "", buggy)
    assert (report.handled, report.deferred, report.interrupted) == (1, 5, None)
    assert sorted(p.name for p in (maildir / "new").iterdir()) == [
        f"{n}.M1P1.host" for n in (0, 1, 2, 3, 5)]


def test_a_crash_between_record_and_move_is_recognised_on_the_next_fetch(
        account: ImapAccount, engine: sa.Engine, ca_bundle_path: Path) -> None:
    account.append(*(make_message(n) for n in range(3)))

    def crash_on_second(message: ReceivedMail) -> None:
        if b"user1@" in message.raw:
            raise RuntimeError("killed after commit, before the move")

    first = fetch(account, RecordingHandler(engine, after_commit=crash_on_second),
                  ca_bundle_path)
    assert (first.handled, first.deferred) == (2, 1)
    assert len(account.messages("INBOX")) == 1
    # moments later, another run leaves it to the (crashed) run that recorded it ...
    soon = fetch(account, RecordingHandler(engine), ca_bundle_path)
    assert (soon.already_seen, soon.busy_elsewhere) == (1, 1)
    assert len(account.messages("INBOX")) == 1
    # ... and once the record is old enough, a run moves it, still without handling it
    later = fetch(account, RecordingHandler(engine), ca_bundle_path, move_seen_after=0)
    assert (later.handled, later.already_seen) == (0, 1)
    assert account.messages("INBOX") == [] and len(account.messages("itsm-done")) == 3
    assert len(effect_keys(engine)) == 3


@pytest.mark.slow
def test_a_killed_fetch_mail_process_loses_and_repeats_nothing(
        account: ImapAccount, database_url: str, engine: sa.Engine,
        ca_bundle_path: Path) -> None:
    account.append(*(make_message(n) for n in range(6)))
    env = worker_env(account, ca_bundle_path)
    killed = run_worker("fetch-mail", database_url, env={**env, "ITSM_TEST_KILL_AFTER": "3"})
    assert killed.returncode == -9
    assert len(account.messages("INBOX")) == 4  # the third was recorded, not moved
    again = run_worker("fetch-mail", database_url,
                       env={**env, "ITSM_TEST_MOVE_SEEN_AFTER": "0"})
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_seen"] == 1
    assert account.messages("INBOX") == [] and len(account.messages("itsm-done")) == 6
    keys = effect_keys(engine)
    assert len(keys) == len(set(keys)) == 6


@pytest.mark.slow
def test_two_fetch_mail_processes_on_one_mailbox_handle_each_message_once(
        account: ImapAccount, database_url: str, engine: sa.Engine,
        ca_bundle_path: Path, tmp_path: Path) -> None:
    account.append(*(make_message(n) for n in range(40)))
    gate = tmp_path / "go"
    env = {**worker_env(account, ca_bundle_path), "ITSM_TEST_START_GATE": str(gate),
           "ITSM_TEST_HANDLE_SECONDS": "0.01"}
    workers = [start_worker(database_url, env) for _ in range(2)]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("go.ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.touch()
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        reports.append(json.loads(out))
    keys = effect_keys(engine)
    assert len(keys) == len(set(keys)) == 40
    assert sum(r["handled"] for r in reports) == 40
    assert all(r["handled"] > 0 for r in reports), reports  # both really worked at once
    assert account.messages("INBOX") == [] and len(account.messages("itsm-done")) == 40


# ---------------------------------------------------------------------- Maildir


def make_maildir(root: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    return root


def test_maildir_intake_moves_messages_into_done_and_failed_folders(
        tmp_path: Path, engine: sa.Engine) -> None:
    maildir = make_maildir(tmp_path / "Maildir")
    for n in range(3):
        (maildir / "new" / f"17000000{n}.M1P1.host").write_bytes(make_message(n))
    (maildir / "cur" / "16000000.M1P1.host:2,S").write_bytes(make_message(8))
    handler = RecordingHandler(
        engine, reject=lambda m: "not for us" if b"user2@" in m.raw else None)
    report = fetch_mail(f"maildir:{maildir}", "", handler)
    assert (report.handled, report.rejected, report.exit_code) == (3, 1, 0)
    assert not list((maildir / "new").iterdir()) and not list((maildir / "cur").iterdir())
    done = sorted(p.name for p in (maildir / ".itsm-done" / "cur").iterdir())
    assert done == ["16000000.M1P1.host:2,S", "170000000.M1P1.host:2,", "170000001.M1P1.host:2,"]
    assert [p.name for p in (maildir / ".itsm-failed" / "cur").iterdir()] == [
        "170000002.M1P1.host:2,"]
    assert (maildir / ".itsm-done" / "maildirfolder").exists()
    assert {r.source for r in recorded_rows(engine)} == {"maildir"}
    # delivered again (the same Message-ID): recognised, moved, not handled twice
    (maildir / "new" / "17000009.M1P1.host").write_bytes(make_message(0))
    again = fetch_mail(f"maildir:{maildir}", "", handler)
    assert (again.handled, again.already_seen) == (0, 1)
    assert len(effect_keys(engine)) == 4


def test_two_fetch_mail_runs_on_one_maildir_handle_each_message_once(
        tmp_path: Path, engine: sa.Engine) -> None:
    maildir = make_maildir(tmp_path / "Maildir")
    for n in range(30):
        (maildir / "new" / f"{n:02}.M1P1.host").write_bytes(make_message(n))
    handler = RecordingHandler(engine)
    start = threading.Barrier(2)

    def run() -> FetchReport:
        start.wait()
        return fetch_mail(f"maildir:{maildir}", "", handler)

    with ThreadPoolExecutor(2) as pool:
        reports = [future.result() for future in [pool.submit(run) for _ in range(2)]]
    keys = effect_keys(engine)
    assert len(keys) == len(set(keys)) == 30
    assert sum(r.handled for r in reports) == 30
    assert len(list((maildir / ".itsm-done" / "cur").iterdir())) == 30
    assert not list((maildir / "new").iterdir())


def test_fetch_mail_stops_between_messages_when_asked(tmp_path: Path,
                                                     sqlite_engine: sa.Engine) -> None:
    maildir = make_maildir(tmp_path / "Maildir")
    for n in range(3):
        (maildir / "new" / f"{n}.M1P1.host").write_bytes(make_message(n))
    handler = RecordingHandler(sqlite_engine)
    report = fetch_mail(f"maildir:{maildir}", "", handler,
                        should_stop=lambda: len(recorded_rows(sqlite_engine)) >= 2)
    assert report.stopped and report.handled == 2 and report.exit_code == 0
    assert "stopped on request" in report.summary()
    assert len(list((maildir / "new").iterdir())) == 1


def test_maildir_leaves_a_message_it_could_not_record(tmp_path: Path, sqlite_url: str) -> None:
    maildir = make_maildir(tmp_path / "Maildir")
    (maildir / "new" / "1.M1P1.host").write_bytes(make_message(1))
    report = fetch_mail(f"maildir:{maildir}", "",
                        RecordingHandler(make_engine(down_url(sqlite_url))))
    assert report.deferred == 1 and report.exit_code == 1
    assert [p.name for p in (maildir / "new").iterdir()] == ["1.M1P1.host"]


def test_a_path_that_is_not_a_maildir_is_a_configuration_error(tmp_path: Path) -> None:
    def handler(message: ReceivedMail) -> HandleResult:
        return HandleResult(Outcome.HANDLED)

    with pytest.raises(ConfigError, match="is not a Maildir"):
        fetch_mail(f"maildir:{tmp_path}", "", handler)
