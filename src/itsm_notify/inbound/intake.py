"""Inbound mail intake, three ways: an MTA pipe (``receive``), an IMAP mailbox and a
Maildir (``fetch-mail``). Each message goes to a :class:`~.handling.Handler` once.

Exactly once comes from the database, not from timing: the handler records every
message under a unique key in the same transaction as its effects (``store``), and
intake only removes a message from the mailbox *after* the handler answered. So:

* a crash between the record and the move leaves the message in the inbox; the next
  run hands it in again, the handler answers ``already_seen``, and it is just moved;
* two ``fetch-mail`` processes on one mailbox may both read a message; the second
  insert of its key waits for the first transaction and then finds the key taken;
* an MTA that retries a delivery (it never saw our exit status) hands in the same
  bytes again: ``already_seen``, exit 0.

The functions here are what the CLI calls; they print nothing (they log to
``itsm_notify.inbound``) and raise ``ConfigError`` (exit 2) for a configuration that
cannot work: a wrong URL, password or CA, a server that cannot be reached.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

from ..config import Settings
from ..errors import ConfigError
from .handling import (
    DEFAULT_MAX_BYTES,
    FetchReport,
    Handler,
    HandleResult,
    Outcome,
    ReceivedMail,
    call_handler,
    read_message,
)
from .imap import ImapOptions, fetch_imap
from .maildir import fetch_maildir
from .store import STDIN
from .url import MailboxURL, parse_inbound_url

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_TEMPFAIL",
    "FetchReport",
    "HandleResult",
    "Handler",
    "MailboxURL",
    "Outcome",
    "ReceivedMail",
    "fetch_mail",
    "fetch_mail_with_settings",
    "parse_inbound_url",
    "receive_stdin",
]

#: receive's exit statuses (contract §5); 75 is sysexits.h's EX_TEMPFAIL, which
#: Postfix's pipe(8), Exim's pipe transport and procmail all treat as "try again later".
EX_OK, EX_CONFIG, EX_TEMPFAIL = 0, 2, 75

#: An already-seen message recorded less than this long ago is being moved by the
#: process that recorded it; an older one was left behind by a run that stopped.
MOVE_SEEN_AFTER_SECONDS = 60.0
DEFAULT_DONE_FOLDER = "itsm-done"
DEFAULT_FAILED_FOLDER = "itsm-failed"


def receive_stdin(stream: BinaryIO, handle: Handler, *, max_bytes: int = DEFAULT_MAX_BYTES,
                  errors: TextIO | None = None) -> int:
    """Handle the one message on ``stream`` (an MTA pipe) and return the exit status.

    0: handled, ignored, already seen (an MTA retry) or rejected and stored with its
    reason; 75: it could not be recorded (the database is down), so the MTA keeps it
    and retries; 2: a configuration error. On 75 and 2 one sentence goes to ``errors``
    (stderr): MTAs put it in their log and in the bounce they finally send.

    A message larger than ``max_bytes`` is read to the end (so the MTA sees it taken)
    but only its header section is kept, and it is recorded as rejected with its size:
    exit 0, because retrying cannot make it smaller. Set the MTA's own size limit
    (Postfix ``message_size_limit``) below ITSM_INBOUND_MAX_BYTES so such mail is
    refused during the SMTP dialogue, where the sender learns of it.

    The CLI's ``itsm-notify receive`` is ``sys.exit(receive_stdin(sys.stdin.buffer,
    handler, max_bytes=settings.inbound_max_bytes))``.
    """
    errors = errors or sys.stderr
    try:
        message = read_message(stream, source=STDIN, max_bytes=max_bytes, origin="stdin")
    except OSError as exc:
        print(f"Could not read the message on standard input ({exc}): the MTA will retry.",
              file=errors)
        return EX_TEMPFAIL
    try:
        result = call_handler(handle, message)
    except ConfigError as exc:
        print(str(exc), file=errors)
        return EX_CONFIG
    if result.outcome is Outcome.TEMPORARY_FAILURE:
        print(f"The message could not be recorded ({result.reason}): the MTA will retry.",
              file=errors)
        return EX_TEMPFAIL
    return EX_OK


def fetch_mail(
    url: str,
    password: str,
    handle: Handler,
    *,
    ca_file: str | None = None,
    allow_plaintext_auth: bool = False,
    done_folder: str = DEFAULT_DONE_FOLDER,
    failed_folder: str = DEFAULT_FAILED_FOLDER,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = 30.0,
    move_seen_after: float = MOVE_SEEN_AFTER_SECONDS,
    should_stop: Callable[[], bool] = lambda: False,
) -> FetchReport:
    """Hand every message in the mailbox at ``url`` to ``handle`` once, oldest first,
    and move each one it dealt with: handled and already-seen ones to ``done_folder``,
    rejected ones to ``failed_folder`` (also stored in the database with their reason).
    A temporary failure leaves the message where it is for the next run.

    Raises ``ConfigError`` (exit 2) when the mailbox cannot be used at all: wrong
    password, unreachable server, untrusted certificate, no such folder or Maildir.
    A connection lost halfway ends the run early (``report.interrupted``, exit 1):
    what was recorded but not moved is recognised and moved by the next run.

    Over IMAP, a message found already recorded less than ``move_seen_after``
    seconds ago is left in place for the process that recorded it to move (see
    ``imap``); an older record means that run stopped before its move, so this one
    moves it.

    ``ca_file`` is a PEM bundle to verify the IMAP server against (default: the
    system's CAs). Over ``imap://`` the connection is upgraded with STARTTLS when the
    server offers it; without it the password is sent only if ``allow_plaintext_auth``.

    ``should_stop`` is asked before each message (the scheduler's SIGTERM): when it
    answers True the run ends after the message in hand, with ``report.stopped`` set.
    """
    mailbox = parse_inbound_url(url)
    if mailbox.scheme == "maildir":
        return fetch_maildir(Path(mailbox.path), handle, done_folder=done_folder,
                             failed_folder=failed_folder, max_bytes=max_bytes,
                             should_stop=should_stop)
    options = ImapOptions(ca_file=ca_file, allow_plaintext_auth=allow_plaintext_auth,
                          done_folder=done_folder, failed_folder=failed_folder,
                          max_bytes=max_bytes, timeout=timeout,
                          move_seen_after=move_seen_after, should_stop=should_stop)
    return fetch_imap(mailbox, password, handle, options)


def fetch_mail_with_settings(settings: Settings, handle: Handler, *,
                             move_seen_after: float = MOVE_SEEN_AFTER_SECONDS,
                             should_stop: Callable[[], bool] = lambda: False) -> FetchReport:
    """``fetch_mail`` with everything taken from the settings (ITSM_INBOUND_*); the CA
    bundle is ITSM_INBOUND_SSL_CAFILE, else EMAIL_SSL_CAFILE. This is what both the
    ``fetch-mail`` command and a scheduler job call."""
    if not settings.inbound_url:
        raise ConfigError("ITSM_INBOUND_URL is not set: set it to the help desk's mailbox, "
                          "e.g. imaps://helpdesk@mail.example.com/INBOX or maildir:/path.")
    return fetch_mail(
        settings.inbound_url, settings.inbound_password, handle,
        ca_file=settings.inbound_ssl_cafile or settings.email_ssl_cafile,
        allow_plaintext_auth=settings.inbound_allow_plaintext_auth,
        done_folder=settings.inbound_done_folder,
        failed_folder=settings.inbound_failed_folder,
        max_bytes=settings.inbound_max_bytes,
        timeout=settings.email_timeout,
        move_seen_after=move_seen_after,
        should_stop=should_stop,
    )
