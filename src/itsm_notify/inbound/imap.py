"""fetch-mail over IMAP: read each message by UID, hand it to the handler, then move it.

IMAPClient (not the standard library's imaplib) because it speaks UIDs by default
(sequence numbers shift under our feet when another process moves a message), parses
FETCH responses and literals into dicts instead of leaving us to split byte strings,
raises typed errors (LoginError, AbortError), encodes folder names in modified UTF-7,
and wraps MOVE (RFC 6851), UIDPLUS expunge (RFC 4315), NAMESPACE (RFC 2342) and
STARTTLS with a caller's SSLContext, so certificates are verified exactly as the SMTP
side verifies them. Its debug log redacts the LOGIN command, so the password never
reaches a log.

Messages are fetched with BODY.PEEK, so one left in the inbox (a temporary failure)
stays unread for the people who also read that mailbox.

Who moves a message: the run whose handler recorded it, and any later run that finds
it already recorded *a while ago* (``move_seen_after``, 60 s) — that earlier run must
have stopped between its record and its move. A message recorded moments ago by
another process is left to that process: two sessions MOVE-ing one message at once
can both copy it before either expunges it (Dovecot does), leaving two copies in the
done folder. (A Maildir has no such race: a rename happens once.)
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from ..errors import ConfigError, describe_network_error
from ..storage.database import utcnow
from .handling import (
    FailureStreak,
    FetchReport,
    Handler,
    HandleResult,
    Outcome,
    ReceivedMail,
    call_handler,
    chunked,
    header_section,
)
from .store import IMAP
from .url import MailboxURL

logger = logging.getLogger("itsm_notify.inbound")

_SIZE_BATCH = 500


@dataclass(frozen=True)
class ImapOptions:
    ca_file: str | None
    allow_plaintext_auth: bool
    done_folder: str
    failed_folder: str
    max_bytes: int
    timeout: float
    move_seen_after: float
    should_stop: Callable[[], bool]


def fetch_imap(mailbox: MailboxURL, password: str, handle: Handler,
               options: ImapOptions) -> FetchReport:
    """One pass over the mailbox's folder; see ``intake.fetch_mail``."""
    client = connect(mailbox, password, options)
    report = FetchReport()
    try:
        _select(client, mailbox)
        done = _ensure_folder(client, options.done_folder, "ITSM_INBOUND_DONE_FOLDER")
        failed = _ensure_folder(client, options.failed_folder, "ITSM_INBOUND_FAILED_FOLDER")
        _handle_all(client, mailbox, handle, options, done, failed, report)
    except (IMAPClientAbortError, OSError) as exc:
        report.interrupted = (f"the connection to the IMAP server was lost ({_describe(exc)}); "
                              "the next run picks up where this one stopped")
        _close(client, logout=False)
        return report
    except BaseException:
        _close(client, logout=False)
        raise
    _close(client, logout=True)
    return report


def connect(mailbox: MailboxURL, password: str, options: ImapOptions) -> IMAPClient:
    """Connect, secure and log in; every way this can fail is a ConfigError with the fix."""
    where = f"{mailbox.host}:{mailbox.port}"
    context = ssl.create_default_context(cafile=options.ca_file)
    try:
        client = IMAPClient(mailbox.host, mailbox.port, ssl=mailbox.scheme == "imaps",
                            ssl_context=context, timeout=options.timeout)
    except ssl.SSLCertVerificationError as exc:
        raise _untrusted(where, exc) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS with the IMAP server at {where} failed ({_describe(exc)}): imaps:// needs the "
            "server's implicit-TLS port (993); use imap:// for port 143.") from None
    except (OSError, IMAPClientError) as exc:
        raise ConfigError(
            f"Cannot reach the IMAP server at {where} ({_describe(exc)}): check the host and "
            "port in ITSM_INBOUND_URL and that the server is running.") from None
    try:
        if mailbox.scheme == "imap":
            if client.has_capability("STARTTLS"):
                client.starttls(context)
            elif not options.allow_plaintext_auth:
                raise ConfigError(
                    f"The IMAP server at {where} does not offer STARTTLS: refusing to send the "
                    "password unencrypted; use imaps:// (port 993), or set "
                    "ITSM_INBOUND_ALLOW_PLAINTEXT_AUTH=true for a trusted local server.")
        client.login(mailbox.user, password)
    except LoginError as exc:
        _close(client, logout=False)
        raise ConfigError(
            f"The IMAP server at {where} refused the login of {mailbox.user!r} "
            f"({_describe(exc)}): check the user in ITSM_INBOUND_URL and ITSM_INBOUND_PASSWORD "
            "(Gmail needs an app password).") from None
    except ssl.SSLCertVerificationError as exc:
        _close(client, logout=False)
        raise _untrusted(where, exc) from None
    except (OSError, IMAPClientError) as exc:
        _close(client, logout=False)
        raise ConfigError(
            f"Could not log in to the IMAP server at {where} ({_describe(exc)}): check "
            "ITSM_INBOUND_URL and that the server is running.") from None
    except BaseException:
        _close(client, logout=False)
        raise
    return client


def _handle_all(client: IMAPClient, mailbox: MailboxURL, handle: Handler,
                options: ImapOptions, done: str, failed: str, report: FetchReport) -> None:
    uids = sorted(client.search(["UNDELETED"]))
    sizes: dict[int, int] = {}
    for batch in chunked(uids, _SIZE_BATCH):
        for uid, data in client.fetch(batch, ["RFC822.SIZE"]).items():
            sizes[uid] = int(data.get(b"RFC822.SIZE", 0))
    streak = FailureStreak()
    for uid in uids:
        if options.should_stop():
            report.stopped = True
            return
        if uid not in sizes:
            report.gone += 1
            continue
        origin = f"{mailbox.scheme}://{mailbox.host}/{mailbox.folder} uid {uid}"
        message = _fetch(client, uid, sizes[uid], origin, options.max_bytes, report)
        if message is None:
            continue
        result = call_handler(handle, message)
        report.count(result)
        if _recorded_moments_ago(result, options.move_seen_after):
            report.busy_elsewhere += 1
        elif result.final:
            _move(client, uid, failed if result.failed else done, report)
        if stop := streak.stop_after(result):
            report.interrupted = stop
            return


def _recorded_moments_ago(result: HandleResult, seconds: float) -> bool:
    """Already seen, and recorded so recently that the run which recorded it is most
    likely about to move it."""
    if result.outcome is not Outcome.ALREADY_SEEN or result.recorded_at is None:
        return False
    return utcnow() - result.recorded_at < timedelta(seconds=seconds)


def _fetch(client: IMAPClient, uid: int, size: int, origin: str, max_bytes: int,
           report: FetchReport) -> ReceivedMail | None:
    """One message, or only its header section when it is larger than ``max_bytes``;
    None when another process took it meanwhile (or the server would not give it)."""
    too_large = size > max_bytes
    item, answer = (b"BODY.PEEK[HEADER]", b"BODY[HEADER]") if too_large else \
        (b"BODY.PEEK[]", b"BODY[]")
    try:
        data: dict[bytes, Any] = client.fetch([uid], [item]).get(uid, {})
    except IMAPClientAbortError:
        raise
    except IMAPClientError as exc:
        if "EXPUNGE" in str(exc).upper():
            report.gone += 1
        else:
            report.deferred += 1
            report.problems.append(f"{origin}: the server would not return it ({exc})")
        return None
    raw = data.get(answer)
    if raw is None:
        report.gone += 1
        return None
    raw = bytes(raw)
    if too_large:
        return ReceivedMail(header_section(raw), IMAP, size, hashlib.sha256(raw).hexdigest(),
                              True, max_bytes, origin)
    return ReceivedMail.from_bytes(raw, source=IMAP, origin=origin, max_bytes=max_bytes)


def _move(client: IMAPClient, uid: int, folder: str, report: FetchReport) -> None:
    """Move one message (MOVE; else COPY, flag \\Deleted and expunge it). A failure
    leaves the message in the inbox, where the next run finds it already recorded."""
    try:
        if client.has_capability("MOVE"):
            client.move([uid], folder)
            return
        client.copy([uid], folder)
        client.delete_messages([uid])
        if client.has_capability("UIDPLUS"):
            client.uid_expunge([uid])
        else:
            client.expunge()
    except IMAPClientAbortError:
        raise
    except IMAPClientError as exc:
        report.problems.append(f"could not move uid {uid} to {folder} ({_describe(exc)})")


def _select(client: IMAPClient, mailbox: MailboxURL) -> None:
    try:
        client.select_folder(mailbox.folder)
    except IMAPClientAbortError:
        raise
    except IMAPClientError as exc:
        raise ConfigError(
            f"Cannot open the folder {mailbox.folder!r} on the IMAP server ({_describe(exc)}): "
            "fix the folder at the end of ITSM_INBOUND_URL (usually INBOX).") from None


def _ensure_folder(client: IMAPClient, name: str, setting: str) -> str:
    """The folder's full name (the personal namespace's prefix added when the server
    has one, e.g. ``INBOX.`` on Courier), created and subscribed when missing. Two
    processes may race to create it; the loser finds it there."""
    full = _in_personal_namespace(client, name)
    if client.folder_exists(full):
        return full
    try:
        client.create_folder(full)
    except IMAPClientAbortError:
        raise
    except IMAPClientError as exc:
        if not client.folder_exists(full):
            raise ConfigError(
                f"Cannot create the folder {full!r} on the IMAP server ({_describe(exc)}): "
                f"create it by hand or set {setting} to an existing folder.") from None
        return full
    try:
        client.subscribe_folder(full)
    except IMAPClientAbortError:
        raise
    except IMAPClientError:
        logger.info("could not subscribe to %s; mail clients may not show it", full)
    return full


def _in_personal_namespace(client: IMAPClient, name: str) -> str:
    if name.upper().startswith("INBOX") or not client.has_capability("NAMESPACE"):
        return name
    personal = client.namespace().personal
    if not personal:
        return name
    prefix = str(personal[0][0] or "")
    return name if not prefix or name.startswith(prefix) else prefix + name


def _untrusted(where: str, exc: ssl.SSLCertVerificationError) -> ConfigError:
    return ConfigError(
        f"The IMAP server's certificate at {where} is not trusted ({exc.verify_message}): fix "
        "the server's certificate, or point ITSM_INBOUND_SSL_CAFILE at your CA bundle.")


def _describe(exc: BaseException) -> str:
    text = describe_network_error(exc)
    if text.startswith(("b'", 'b"')) and text.endswith(text[1]):  # imaplib's bytes repr
        text = text[2:-1] or type(exc).__name__
    return text


def _close(client: IMAPClient, *, logout: bool) -> None:
    try:
        if logout:
            client.logout()
        else:
            client.shutdown()
    except (OSError, IMAPClientError):
        pass
