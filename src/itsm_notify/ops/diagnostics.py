"""``itsm-notify test-email ADDRESS``: send one email and show every step on the way.

For SMTP the conversation is driven one command at a time (resolve, connect, TLS,
greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, QUIT), each timed, so a failure names
the step, the server's reply and the likely fix: the questions people otherwise take
to a forum. The console and file backends show their one step.

The password is never shown: settings print it masked, and every reply and error text
is scrubbed of it before it is reported.
"""

from __future__ import annotations

import base64
import dataclasses
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import make_msgid
from typing import Any, TypeVar

from ..channels import make_transport
from ..channels.base import Outgoing, deliver_all
from ..compose.headers import needs_smtputf8
from ..compose.render import (
    RenderedEmail,
    Renderer,
    recipient_variables,
    sender_address,
)
from ..config import ENV_NAMES, Settings
from ..events.audience import EmailRecipient
from ..states import DeliveryState
from ..storage.database import utcnow

T = TypeVar("T")

PORT_HINT = "587 for STARTTLS, 465 for implicit TLS, 25 for a local relay"
TLS_MODE_HINT = ("use EMAIL_USE_TLS=true with port 587 (STARTTLS), or EMAIL_USE_SSL=true with "
                 "port 465 (implicit TLS), not the other way round")
APP_PASSWORD_HINT = ("check EMAIL_HOST_USER and EMAIL_HOST_PASSWORD; use an app password for "
                     "Gmail (and Microsoft 365), not the account's own password")


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class ProbeResult:
    steps: list[Step] = field(default_factory=list)
    failed_step: str | None = None
    reply: str | None = None
    """What went wrong: the server's reply, or what the network said."""
    hint: str | None = None
    """The likely fix."""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_step else 0


class StepFailed(Exception):
    """A step failed; ``reply`` is what happened, ``hint`` the likely fix."""

    def __init__(self, reply: str, hint: str) -> None:
        super().__init__(reply)
        self.reply = reply
        self.hint = hint


def effective_settings(settings: Settings) -> list[tuple[str, str]]:
    """The settings test-email uses, by environment name; the password masked."""
    rows = [("EMAIL_BACKEND", settings.email_backend),
            ("DEFAULT_FROM_EMAIL", settings.default_from_email)]
    if settings.email_backend == "file":
        rows.append(("EMAIL_FILE_PATH", settings.email_file_path))
    if settings.email_backend == "smtp":
        security = ("STARTTLS (EMAIL_USE_TLS)" if settings.email_use_tls else
                    "implicit TLS (EMAIL_USE_SSL)" if settings.email_use_ssl else
                    "none (plain SMTP)")
        rows += [("EMAIL_HOST", settings.email_host), ("EMAIL_PORT", str(settings.email_port)),
                 ("security", security),
                 ("EMAIL_SSL_CAFILE", settings.email_ssl_cafile or "(the system's CA store)"),
                 ("EMAIL_HOST_USER", settings.email_host_user or "(not set: no login)"),
                 ("EMAIL_HOST_PASSWORD", settings.email_host_password.masked()),
                 ("EMAIL_TIMEOUT", f"{settings.email_timeout:g} s")]
    rows += _http_backend_settings(settings)
    if settings.redirect_to:
        rows.append(("DEBUG", f"on (other commands redirect to {settings.redirect_to}; "
                              "test-email sends to the address given)"))
    return rows


_HTTP_BACKEND_SETTINGS = {
    "sendgrid": ("sendgrid_api_url", "sendgrid_api_key"),
    "postmark": ("postmark_api_url", "postmark_server_token"),
    "mailgun": ("mailgun_api_url", "mailgun_sender_domain", "mailgun_api_key"),
    "ses": ("aws_region", "aws_endpoint_url_sesv2", "aws_access_key_id",
            "aws_secret_access_key", "amazon_ses_configuration_set_name"),
}


def _http_backend_settings(settings: Settings) -> list[tuple[str, str]]:
    """The settings of an HTTP email backend, by environment name; secrets masked."""
    names = _HTTP_BACKEND_SETTINGS.get(settings.email_backend)
    if names is None:
        return []
    rows = []
    for name in names:
        value = getattr(settings, name)
        shown = value.masked() if hasattr(value, "masked") else (value or "(not set)")
        rows.append((ENV_NAMES[name], str(shown)))
    return [*rows, ("ITSM_HTTP_CONNECTIONS", str(settings.http_connections)),
            ("EMAIL_TIMEOUT", f"{settings.email_timeout:g} s")]


def build_test_message(settings: Settings, address: str, now: datetime,
                       locale: str | None = None) -> tuple[str, bytes]:
    """The subject and bytes of the ``test_email`` template to ``address`` (never
    redirected: it was asked for), in ``locale`` (default: ITSM_DEFAULT_LOCALE)."""
    direct = dataclasses.replace(settings, debug=False)
    renderer = Renderer(direct)
    language = renderer.language(locale)
    recipient = EmailRecipient(address=address, name="", locale=locale)
    variables = {"site_name": settings.site_name, "site_url": settings.site_url,
                 "sent_at_display": language.time(now), "backend": settings.email_backend,
                 "event_type": "test_email", "unsubscribe_url": None,
                 "language": language.code, **recipient_variables(recipient)}
    text, html = renderer.render("test_email", variables, language)
    subject = language.gettext("Test email from {site}").format(site=settings.site_name)
    rendered = RenderedEmail(subject=subject, text=text, html=html)
    return rendered.subject, renderer.compose(
        rendered, recipient, event_type_name="test_email", ticket_number=None,
        msg_id=make_msgid("itsm-notify.test", settings.from_domain), thread=None, now=now)


class _SteppedSMTP(smtplib.SMTP):
    """smtplib.SMTP over a socket this module connected (and for implicit TLS wrapped)
    itself, so that connecting, the TLS handshake and the greeting are separate steps."""

    def __init__(self, host: str, sock: socket.socket, timeout: float) -> None:
        super().__init__(timeout=timeout)  # no host: smtplib connects nothing itself
        self._host = host  # the name STARTTLS checks the certificate against
        self.sock = sock


class EmailProbe:
    """One test email through the configured backend, step by step."""

    def __init__(self, settings: Settings, address: str,
                 on_step: Callable[[Step], None] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.address = address
        self.on_step = on_step
        self.clock = clock
        self.result = ProbeResult()
        password = str(settings.email_host_password)
        self._secrets = [s for s in {password, base64.b64encode(password.encode()).decode()}
                         if len(s) >= 3] if password else []

    def run(self) -> ProbeResult:
        try:
            data = self.step("render", self._render)
            if self.settings.email_backend == "smtp":
                self._smtp(data)
            else:
                self.step(f"deliver ({self.settings.email_backend} backend)",
                          lambda: self._other_backend(data))
        except StepFailed:
            pass
        return self.result

    # ------------------------------------------------------------------ steps

    def step(self, name: str, action: Callable[[], tuple[T, str]]) -> T:
        """Run one step, time it, report it; raise StepFailed with the reply and a fix."""
        started = time.perf_counter()
        try:
            value, detail = action()
        except Exception as exc:  # every failure becomes a step report, never a traceback
            failure = exc if isinstance(exc, StepFailed) else StepFailed(*self.explain(name,
                                                                                       exc))
            reply, hint = self._scrub(failure.reply), self._scrub(failure.hint)
            self._report(Step(name, False, time.perf_counter() - started, reply))
            self.result.failed_step, self.result.reply, self.result.hint = name, reply, hint
            raise StepFailed(reply, hint) from None
        self._report(Step(name, True, time.perf_counter() - started, self._scrub(detail)))
        return value

    def _report(self, step: Step) -> None:
        self.result.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    # ------------------------------------------------------------------ backends

    def _render(self) -> tuple[bytes, str]:
        subject, data = build_test_message(self.settings, self.address, self.clock())
        return data, f"subject {subject!r}, {len(data)} bytes"

    def _other_backend(self, data: bytes) -> tuple[None, str]:
        transport = make_transport(self.settings)
        out = Outgoing(key=self.address, sender=sender_address(self.settings),
                       rcpt=self.address, data=data)
        try:
            [outcome] = deliver_all(transport, [out])
        finally:
            transport.close()
        if outcome.status != DeliveryState.SENT:
            raise StepFailed(outcome.detail, "check the backend's settings")
        return None, outcome.detail

    def _smtp(self, data: bytes) -> None:
        s = self.settings
        addresses = self.step("resolve host", self._resolve)
        sock = self.step("connect", lambda: self._connect(addresses))
        if s.email_use_ssl:
            sock = self.step("TLS handshake (implicit TLS, certificate checked)",
                             lambda: self._wrap(sock))
        smtp = _SteppedSMTP(s.email_host, sock, s.email_timeout)
        try:
            self.step("greeting", lambda: self._reply(smtp.getreply(), "greeting"))
            self.step("EHLO", lambda: self._ehlo(smtp))
            if s.email_use_tls:
                self.step("STARTTLS (certificate checked)", lambda: self._starttls(smtp))
            if s.email_host_user:
                self.step("AUTH", lambda: self._login(smtp))
            self._send(smtp, data)
            self.step("QUIT", lambda: self._quit(smtp))
        finally:
            smtp.close()

    def _resolve(self) -> tuple[list[tuple[Any, ...]], str]:
        s = self.settings
        infos = socket.getaddrinfo(s.email_host, s.email_port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return infos, f"{s.email_host} → {', '.join(addresses)}"

    def _connect(self, infos: list[tuple[Any, ...]]) -> tuple[socket.socket, str]:
        """Connect to the first address that answers, as smtplib would."""
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.settings.email_timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock, f"{sockaddr[0]} port {sockaddr[1]}"
        assert error is not None  # getaddrinfo returns at least one address
        raise error

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.email_ssl_cafile)

    def _wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, str]:
        try:
            wrapped = self.tls_context().wrap_socket(sock, server_hostname=self.settings.email_host)
        except BaseException:
            sock.close()
            raise
        return wrapped, _tls_description(wrapped)

    @staticmethod
    def _reply(reply: tuple[int, bytes], what: str) -> tuple[None, str]:
        code, text = reply
        shown = _reply_text(code, text)
        if not 200 <= code < 300:
            raise StepFailed(shown, _reply_hint(code, what))
        return None, shown

    def _ehlo(self, smtp: smtplib.SMTP) -> tuple[None, str]:
        code, text = smtp.ehlo()
        if code != 250:
            raise StepFailed(_reply_text(code, text), "the server does not speak ESMTP properly: "
                             "check EMAIL_HOST and EMAIL_PORT")
        offered = [name.upper() for name in smtp.esmtp_features]
        greeting = text.decode("utf-8", "replace").splitlines()[:1] or [""]
        detail = f"{code} {greeting[0]}; offers {' '.join(offered) or '-'}"
        s = self.settings
        if not (s.email_use_tls or s.email_use_ssl) and smtp.has_extn("starttls"):
            detail += " (the server offers STARTTLS: consider EMAIL_USE_TLS=true)"
        return None, detail

    def _starttls(self, smtp: smtplib.SMTP) -> tuple[None, str]:
        if not smtp.has_extn("starttls"):
            raise StepFailed("the server does not offer STARTTLS on this port", TLS_MODE_HINT)
        smtp.starttls(context=self.tls_context())
        code, text = smtp.ehlo()
        if code != 250:
            raise StepFailed(_reply_text(code, text), "the server refused EHLO after STARTTLS")
        return None, _tls_description(smtp.sock)  # type: ignore[arg-type]

    def _login(self, smtp: smtplib.SMTP) -> tuple[None, str]:
        s = self.settings
        if not (s.email_use_tls or s.email_use_ssl) and not s.email_allow_plaintext_auth:
            raise StepFailed(
                "refused to send the password over an unencrypted connection",
                "set EMAIL_USE_TLS=true (port 587) or EMAIL_USE_SSL=true (port 465), or "
                "EMAIL_ALLOW_PLAINTEXT_AUTH=true for a trusted local relay")
        if not smtp.has_extn("auth"):
            raise StepFailed("the server does not offer AUTH on this connection",
                             "unset EMAIL_HOST_USER for a relay that needs no login, or "
                             + TLS_MODE_HINT + " (many servers offer AUTH only over TLS)")
        code, text = smtp.login(s.email_host_user, s.email_host_password)
        mechanisms = smtp.esmtp_features.get("auth", "").strip().upper()
        return None, f"{_reply_text(code, text)} as {s.email_host_user} (offered: {mechanisms})"

    def _send(self, smtp: smtplib.SMTP, data: bytes) -> None:
        sender = sender_address(self.settings)
        self.step("MAIL FROM", lambda: self._mail(smtp, sender))
        self.step("RCPT TO", lambda: self._reply(smtp.rcpt(self.address), "RCPT TO"))
        self.step("DATA", lambda: self._reply(smtp.data(data), "DATA"))

    def _mail(self, smtp: smtplib.SMTP, sender: str) -> tuple[list[str], str]:
        options: list[str] = []
        if needs_smtputf8(sender, self.address):
            if not smtp.has_extn("smtputf8"):
                raise StepFailed("the address is not ASCII and the server does not offer "
                                 "SMTPUTF8", "use an ASCII address, or a server with SMTPUTF8")
            options = ["SMTPUTF8"]
        _, detail = self._reply(smtp.mail(sender, options), "MAIL FROM")
        return options, detail

    @staticmethod
    def _quit(smtp: smtplib.SMTP) -> tuple[None, str]:
        try:
            code, text = smtp.quit()
        except (OSError, smtplib.SMTPException):
            return None, "closed without a reply (harmless: the message was accepted)"
        return None, _reply_text(code, text)

    # ------------------------------------------------------------------ failures

    def explain(self, step: str, exc: BaseException) -> tuple[str, str]:
        """(what happened, the likely fix) for an exception raised by ``step``."""
        s = self.settings
        where = f"{s.email_host}:{s.email_port}"
        if isinstance(exc, socket.gaierror):
            return (f"the host name {s.email_host!r} does not resolve ({exc.strerror})",
                    "check EMAIL_HOST for a typo, and this machine's DNS")
        if isinstance(exc, ConnectionRefusedError):
            return (f"connection refused by {where}",
                    f"check EMAIL_HOST and EMAIL_PORT ({PORT_HINT}): nothing accepts "
                    "connections there, or a firewall rejects them")
        if isinstance(exc, TimeoutError | socket.timeout):
            return self._explain_timeout(step, where)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _explain_certificate(exc, s.email_host)
        if isinstance(exc, ssl.SSLError):
            return (f"TLS failed ({exc.reason or exc})",
                    TLS_MODE_HINT + "; EMAIL_USE_SSL needs a server that starts TLS at once")
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return _reply_text(exc.smtp_code, exc.smtp_error), APP_PASSWORD_HINT
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return str(exc), TLS_MODE_HINT
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):  # smtplib's word for a timeout
                return self._explain_timeout(step, where)
            return (f"the server closed the connection during {step}",
                    "if the port expects implicit TLS (usually 465) set EMAIL_USE_SSL=true; "
                    "otherwise the server refuses this client: check its logs")
        if isinstance(exc, smtplib.SMTPResponseException):
            return (_reply_text(exc.smtp_code, exc.smtp_error),
                    _reply_hint(exc.smtp_code, step))
        if isinstance(exc, smtplib.SMTPException):
            return str(exc), "check the mail server's settings and its log"
        if isinstance(exc, OSError):
            return (f"{exc.strerror or exc} ({where})",
                    f"check EMAIL_HOST and EMAIL_PORT ({PORT_HINT}) and the firewall")
        return f"{type(exc).__name__}: {exc}", "this looks like a bug in itsm-notify: report it"

    def _explain_timeout(self, step: str, where: str) -> tuple[str, str]:
        seconds = f"{self.settings.email_timeout:g} s"
        if step == "connect":
            return (f"no answer from {where} within {seconds}",
                    f"check EMAIL_HOST and EMAIL_PORT ({PORT_HINT}) and that no firewall drops "
                    "the connection (many cloud providers block outgoing port 25)")
        if step == "greeting":
            return (f"connected, but the server sent no greeting within {seconds}",
                    "the port probably expects implicit TLS (usually 465): set "
                    "EMAIL_USE_SSL=true instead of EMAIL_USE_TLS, or use port 587")
        return (f"the server stopped answering during {step} (no reply within {seconds})",
                "try again, or raise EMAIL_TIMEOUT; " + TLS_MODE_HINT)


def _reply_text(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(message.split())}".strip()


def _reply_hint(code: int, step: str) -> str:
    """The likely fix for an SMTP reply ``code`` at ``step``."""
    if code in (534, 535):
        return APP_PASSWORD_HINT
    if code == 530:
        return ("the server wants a login (and often TLS first): set EMAIL_HOST_USER and "
                "EMAIL_HOST_PASSWORD, and " + TLS_MODE_HINT)
    if 400 <= code < 500:
        return "a temporary refusal: try again in a few minutes"
    if step == "MAIL FROM":
        return ("the server refuses the sender: use a DEFAULT_FROM_EMAIL (or --from) that "
                "this account may send as")
    if step == "RCPT TO":
        return ("the server refuses the recipient: check the address, and that the relay "
                "lets this account send to it")
    if step == "DATA":
        return "the server refused the message itself: its reply says why"
    return "the server refused: its reply says why"


def _tls_description(sock: ssl.SSLSocket) -> str:
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    subject = dict(item[0] for item in cert.get("subject", ()) if item)
    issuer = dict(item[0] for item in cert.get("issuer", ()) if item)
    parts = [f"{sock.version()} {(sock.cipher() or ('?',))[0]}"]
    names = [str(value) for _, value in cert.get("subjectAltName", ())]
    if not names and "commonName" in subject:
        names = [subject["commonName"]]
    if names:
        parts.append(f"certificate for {', '.join(names)}")
    if issuer:
        parts.append(f"issued by {issuer.get('organizationName') or issuer.get('commonName')}")
    if cert.get("notAfter"):
        parts.append(f"valid until {cert['notAfter']}")
    return ", ".join(parts)


# OpenSSL's X509_V_ERR_* codes, named the way a person would say them.
_CERT_EXPIRED, _CERT_NOT_YET_VALID = 10, 9
_UNKNOWN_CA = {18, 19, 20, 21, 2}
_HOSTNAME_MISMATCH = {62, 64}  # a name, or an IP address


def _explain_certificate(exc: ssl.SSLCertVerificationError, host: str) -> tuple[str, str]:
    code, message = exc.verify_code, exc.verify_message or str(exc)
    if code in _UNKNOWN_CA:
        return (f"the server's certificate was issued by an unknown CA, not one this machine "
                f"trusts ({message})",
                "install a certificate from a public CA on the server, or point "
                "EMAIL_SSL_CAFILE at your private CA's certificate")
    if code in _HOSTNAME_MISMATCH:
        return (f"hostname mismatch: the server's certificate is not valid for {host!r} "
                f"({message})",
                "set EMAIL_HOST to a name the certificate was issued for (as written in it), "
                "not an IP address or an alias")
    if code == _CERT_EXPIRED:
        return ("the server's certificate has expired",
                "renew the certificate on the mail server")
    if code == _CERT_NOT_YET_VALID:
        return ("the server's certificate is not valid yet",
                "check this machine's clock, and the certificate's start date")
    return (f"the server's certificate was rejected ({message})",
            "fix the server's certificate, or point EMAIL_SSL_CAFILE at your CA bundle")


def send_test_email(settings: Settings, address: str, *,
                    on_step: Callable[[Step], None] | None = None,
                    clock: Callable[[], datetime] = utcnow) -> ProbeResult:
    """Send one test email to ``address`` through the configured backend, reporting each
    step to ``on_step`` as it happens."""
    return EmailProbe(settings, address, on_step=on_step, clock=clock).run()
