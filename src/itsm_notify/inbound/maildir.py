"""fetch-mail from a Maildir (``maildir:/path``), e.g. the one an MTA or Dovecot
delivers the help desk's mail into.

A delivering MTA writes each message into ``tmp/`` and renames it into ``new/``, so
every file in ``new/`` and ``cur/`` is complete. A message dealt with is renamed into
the Maildir++ subfolder ``.itsm-done`` (or ``.itsm-failed``) — one atomic rename on one
file system, so two processes can never both move it, and the one that loses the
race finds the file gone. Dovecot and IMAP clients show those subfolders as folders.

The folders are made here with ``mkdir(exist_ok=True)`` rather than the standard
library's ``mailbox.Maildir.add_folder``, which fails when two processes create the
same folder at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import ConfigError
from .handling import FailureStreak, FetchReport, Handler, call_handler, read_message
from .store import MAILDIR

_SUBDIRS = ("cur", "new", "tmp")


def fetch_maildir(root: Path, handle: Handler, *, done_folder: str, failed_folder: str,
                  max_bytes: int, should_stop: Callable[[], bool]) -> FetchReport:
    """One pass over ``new/`` then ``cur/``, oldest first; see ``intake.fetch_mail``."""
    if not all((root / sub).is_dir() for sub in _SUBDIRS):
        raise ConfigError(f"{root} is not a Maildir (it needs cur, new and tmp folders): fix "
                          "the path in ITSM_INBOUND_URL (maildir:/path/to/Maildir).")
    done = _folder(root, done_folder, "ITSM_INBOUND_DONE_FOLDER")
    failed = _folder(root, failed_folder, "ITSM_INBOUND_FAILED_FOLDER")
    report = FetchReport()
    streak = FailureStreak()
    for path in _message_files(root):
        if should_stop():
            report.stopped = True
            break
        try:
            with path.open("rb") as stream:
                message = read_message(stream, source=MAILDIR, max_bytes=max_bytes,
                                       origin=str(path))
        except FileNotFoundError:  # another fetch-mail moved it
            report.gone += 1
            continue
        except OSError as exc:
            raise ConfigError(f"Cannot read {path} ({exc.strerror}): give this user read "
                              "and write access to the Maildir.") from None
        result = call_handler(handle, message)
        report.count(result)
        if result.final:
            _move(path, failed if result.failed else done)
        if stop := streak.stop_after(result):
            report.interrupted = stop
            break
    return report


def _message_files(root: Path) -> Iterator[Path]:
    """Files in new/ then cur/, by name (Maildir names start with the delivery time)."""
    for sub in ("new", "cur"):
        with os.scandir(root / sub) as entries:
            names = sorted(e.name for e in entries
                           if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
        for name in names:
            yield root / sub / name


def _folder(root: Path, name: str, setting: str) -> Path:
    """The Maildir++ subfolder ``.name`` (cur/new/tmp and the maildirfolder marker),
    created when missing."""
    folder = root / f".{name.lstrip('.')}"
    try:
        for sub in _SUBDIRS:
            (folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / "maildirfolder").touch(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the Maildir folder {folder} ({exc.strerror}): "
                          f"give this user write access to {root}, or set {setting}.") from None
    return folder


def _move(path: Path, folder: Path) -> None:
    """Rename the message into ``folder/cur`` (a message from new/ gets the ``:2,``
    info suffix that cur/ names carry). Gone already: another process moved it."""
    name = path.name if path.parent.name == "cur" or ":2," in path.name else path.name + ":2,"
    try:
        os.rename(path, folder / "cur" / name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"Cannot move {path} into {folder} ({exc.strerror}): give this user "
                          "write access to the Maildir.") from None
