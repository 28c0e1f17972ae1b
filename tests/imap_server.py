"""A real IMAP server for the tests: Debian's Dovecot with a configuration of its own.

``Dovecot`` starts ``/usr/sbin/dovecot -F`` (installed by ``apt-get install -y
dovecot-imapd``) with everything in one temporary folder: its base_dir, state, log,
a passwd-file user database (one file per user) and each user's Maildir. It listens
on 127.0.0.1 only, on two free ports: IMAP with STARTTLS and IMAPS, both with a
certificate from the tests' trustme CA; plaintext login is refused until STARTTLS, as
on a real server.

Running it unprivileged: Dovecot refuses to run its login processes or to read mail as
root, so when the tests run as root (CI) the whole server runs as the ``dovecot`` user
that the package creates, and as the current user otherwise. Every service runs as
that one user (``default_internal_user``, ``default_login_user``, ``mail_uid``), nothing
is chrooted (``chroot =`` on the two services that chroot by default), and
``first_valid_uid`` lets that user read mail. The folder is made with ``mkdtemp``
outside pytest's tmp_path, whose parents are closed to other users.

Users are added while the server runs (``add_user``), so one server serves a whole
test module with a fresh mailbox per test.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
from imapclient import IMAPClient

__all__ = ["DOVECOT", "Dovecot", "ImapAccount", "dovecot_missing"]

HOST = "127.0.0.1"
DOVECOT = "/usr/sbin/dovecot"
_START_SECONDS = 15.0


def dovecot_missing() -> str | None:
    """Why Dovecot cannot run here, or None."""
    if not Path(DOVECOT).exists():
        return "Dovecot is not installed: apt-get install -y dovecot-imapd"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("dovecot")
        except KeyError:
            return "Dovecot's 'dovecot' user is missing: apt-get install -y dovecot-imapd"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ImapAccount:
    """One user on the server, with its own empty Maildir."""

    server: Dovecot
    user: str
    password: str

    def url(self, scheme: str = "imaps", folder: str = "INBOX") -> str:
        port = self.server.imaps_port if scheme == "imaps" else self.server.imap_port
        return f"{scheme}://{self.user}@{HOST}:{port}/{folder}"

    @contextlib.contextmanager
    def client(self) -> Iterator[IMAPClient]:
        """A logged-in client: IMAPS trusting the tests' CA (plain IMAP without TLS)."""
        if self.server.tls:
            connection = IMAPClient(HOST, self.server.imaps_port, timeout=10,
                                    ssl_context=self.server.client_context())
        else:
            connection = IMAPClient(HOST, self.server.imap_port, ssl=False, timeout=10)
        with connection as client:
            client.login(self.user, self.password)
            yield client

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        with self.client() as client:
            for raw in messages:
                client.append(folder, raw)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """Every message in ``folder`` (empty when the folder does not exist)."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            if not uids:
                return []
            fetched = client.fetch(uids, [b"BODY.PEEK[]"])
            return [bytes(fetched[uid][b"BODY[]"]) for uid in sorted(fetched)]


class Dovecot:
    """A started-and-stopped Dovecot on 127.0.0.1; use as a context manager."""

    def __init__(self, ca: trustme.CA, *, tls: bool = True) -> None:
        """``tls=False``: no TLS at all and plaintext login allowed, like an old
        server on a trusted network (the IMAPS port then speaks plain IMAP too)."""
        self.ca = ca
        self.tls = tls
        self.cert = ca.issue_cert(HOST, "localhost")
        self.imap_port = 0
        self.imaps_port = 0
        self.folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(
            os.getuid())

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="itsm-dovecot-"))
        self.cert.private_key_pem.write_to_path(str(self.folder / "key.pem"))
        self.cert.cert_chain_pems[0].write_to_path(str(self.folder / "cert.pem"))
        (self.folder / "users").mkdir()
        for attempt in range(3):  # a free port can be taken before Dovecot binds it
            self.imap_port, self.imaps_port = _free_port(), _free_port()
            (self.folder / "dovecot.conf").write_text(self._config())
            if os.geteuid() == 0:
                shutil.chown(self.folder, self._run_as.pw_uid, self._run_as.pw_gid)
                for path in self.folder.iterdir():
                    shutil.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
            if self._launch():
                return
            self._terminate()
            if attempt == 2:
                log = self._log()
                shutil.rmtree(self.folder, ignore_errors=True)
                raise RuntimeError(f"Dovecot did not start:\n{log}")

    def stop(self) -> None:
        self._terminate()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _launch(self) -> bool:
        assert self.folder is not None
        as_root = os.geteuid() == 0
        self._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.folder / "dovecot.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            user=self._run_as.pw_uid if as_root else None,
            group=self._run_as.pw_gid if as_root else None,
            extra_groups=[] if as_root else None,
            start_new_session=True)
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if all(self._accepts(port) for port in (self.imap_port, self.imaps_port)):
                return True
            time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, 9)
                self._process.wait()
        self._process = None

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log(self) -> str:
        assert self.folder is not None
        try:
            return (self.folder / "dovecot.log").read_text()
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------------- users

    def add_user(self, user: str | None = None, password: str | None = None) -> ImapAccount:
        """A new user with an empty mailbox; the name may contain ``@``."""
        assert self.folder is not None
        user = user or f"helpdesk-{secrets.token_hex(4)}@example.com"
        password = password or secrets.token_urlsafe(12)
        # One passwd-file per user: Dovecot opens a new file on its first lookup,
        # whereas it looks at a changed file at most once a second.
        (self.folder / "users" / user).write_text(
            f"{user}:{{PLAIN}}{password}::::{self.folder}/home/{user}\n")
        return ImapAccount(self, user, password)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def _config(self) -> str:
        assert self.folder is not None
        user, group = self._run_as.pw_name, _group_name(self._run_as.pw_gid)
        base = self.folder
        tls = (f"ssl = yes\nssl_cert = <{base}/cert.pem\nssl_key = <{base}/key.pem\n"
               "disable_plaintext_auth = yes") if self.tls else \
            "ssl = no\ndisable_plaintext_auth = no"
        return f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = itsm-test-{base.name}
protocols = imap
listen = {HOST}
shutdown_clients = yes

default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_uid = {user}
mail_gid = {group}
first_valid_uid = 1
first_valid_gid = 1

{tls}
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users/%u
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/users/%u
}}
mail_location = maildir:~/Maildir

service anvil {{
  chroot =
  # no authentication penalty: the tests fail logins on purpose, from 127.0.0.1
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.imaps_port}
    ssl = {"yes" if self.tls else "no"}
  }}
}}
"""


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name
