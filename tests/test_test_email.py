"""``itsm-notify test-email``: every step shown, failures explained, the password never.

Against a real aiosmtpd server speaking STARTTLS (or implicit TLS) with a throwaway
certificate from a private CA (trustme), and AUTH.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from typer.testing import Result

from contract_app import run_cli
from itsm_notify.compose.i18n import Languages
from smtp_server import SmtpSink

USER = "helpdesk@example.com"
PASSWORD = "Corr3ct-Horse-Battery"
WRONG = "Wr0ng-Guess-Staple"
SMTP_STEPS = ["render", "resolve host", "connect", "greeting", "EHLO",
              "STARTTLS (certificate checked)", "AUTH", "MAIL FROM", "RCPT TO", "DATA", "QUIT"]


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def tls_sink(server_tls_context: ssl.SSLContext) -> Iterator[SmtpSink]:
    """STARTTLS required, AUTH offered only after it."""
    with SmtpSink(tls_context=server_tls_context, require_starttls=True,
                  auth_credentials={USER: PASSWORD}) as sink:
        yield sink


def smtp_settings(sink: SmtpSink, ca: Path | None, **more: Any) -> dict[str, str]:
    env = {"EMAIL_BACKEND": "smtp", "EMAIL_HOST": sink.host, "EMAIL_PORT": str(sink.port),
           "EMAIL_USE_TLS": "true", "EMAIL_HOST_USER": USER, "EMAIL_HOST_PASSWORD": PASSWORD,
           "EMAIL_TIMEOUT": "3", "DEFAULT_FROM_EMAIL": "Help Desk <helpdesk@example.com>"}
    if ca is not None:
        env["EMAIL_SSL_CAFILE"] = str(ca)
    env.update({name: str(value) for name, value in more.items()})
    return env


def run_test_email(env: dict[str, str], address: str = "ops@example.com",
               *options: str) -> Result:
    return run_cli(["test-email", address, *options], env)


def step_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:1] in ("✓", "✗")]


def assert_no_secret(output: str, secret: str) -> None:
    assert secret not in output
    assert base64.b64encode(secret.encode()).decode() not in output
    assert "Traceback" not in output


# ------------------------------------------------------------------------ success


def test_starttls_and_auth_success_shows_every_step(tls_sink: SmtpSink,
                                                    ca_bundle_path: Path) -> None:
    result = run_test_email(smtp_settings(tls_sink, ca_bundle_path))

    assert result.exit_code == 0, result.output
    out = result.stdout
    # The effective settings come first, the password masked.
    assert out.index("EMAIL_HOST ") < out.index("✓ render")
    assert f"EMAIL_PORT           {tls_sink.port}" in out
    assert "EMAIL_HOST_PASSWORD  ********" in out
    assert "STARTTLS (EMAIL_USE_TLS)" in out
    lines = step_lines(out)
    assert [line[2:48].strip() for line in lines[:-1]] == SMTP_STEPS
    assert all(" ms " in line for line in lines[:-1])
    starttls = next(line for line in lines if line.startswith("✓ STARTTLS"))
    assert "TLSv1." in starttls and "certificate for" in starttls
    assert f"as {USER}" in next(line for line in lines if line.startswith("✓ AUTH"))
    assert lines[-1].startswith("✓ Test email sent to ops@example.com in ")
    assert_no_secret(result.output, PASSWORD)

    [message] = tls_sink.messages
    assert message.rcpt_tos == ["ops@example.com"]
    assert message.tls and message.auth_login == USER
    assert message.subject == "Test email from Help Desk"
    assert message.message["X-ITSM-Event"] == "test_email"
    assert message.message["Auto-Submitted"] == "auto-generated"
    assert message.message.get_content_type() == "multipart/alternative"
    body = message.message.get_body(preferencelist=("plain",))
    assert body is not None and "through the smtp backend works" in body.get_content()


def test_from_override_and_debug_does_not_redirect(tls_sink: SmtpSink,
                                                   ca_bundle_path: Path) -> None:
    env = smtp_settings(tls_sink, ca_bundle_path, DEBUG="true",
                        DEVELOPMENT_EMAIL="dev@example.com")
    result = run_test_email(env, "ops@example.com", "--from", "Alerts <alerts@example.com>")
    assert result.exit_code == 0, result.output
    [message] = tls_sink.messages
    assert message.mail_from == "alerts@example.com"
    assert message.message["From"] == "Alerts <alerts@example.com>"
    assert message.rcpt_tos == ["ops@example.com"]
    assert "test-email sends to the address given" in result.stdout


def test_the_test_email_in_another_language(tls_sink: SmtpSink, ca_bundle_path: Path) -> None:
    result = run_test_email(smtp_settings(tls_sink, ca_bundle_path), "ops@example.com",
                            "--language", "de-AT")
    assert result.exit_code == 0, result.output
    [message] = tls_sink.messages
    german = Languages().get("de")
    assert message.subject == german.gettext("Test email from {site}").format(site="Help Desk")
    body = message.message.get_body(preferencelist=("plain",))
    assert body is not None
    assert german.gettext("This is a one-off test message; no action is needed.") in \
        body.get_content()


def test_implicit_tls_success(server_tls_context: ssl.SSLContext, ca_bundle_path: Path) -> None:
    with SmtpSink(implicit_tls_context=server_tls_context,
                  auth_credentials={USER: PASSWORD}) as sink:
        env = smtp_settings(sink, ca_bundle_path, EMAIL_USE_TLS="false", EMAIL_USE_SSL="true")
        result = run_test_email(env)
        assert result.exit_code == 0, result.output
        assert "TLS handshake (implicit TLS, certificate checked)" in result.stdout
        assert [m.tls for m in sink.messages] == [True]


def test_file_and_console_backends(tmp_path: Path) -> None:
    folder = tmp_path / "mails"
    result = run_test_email({"EMAIL_FILE_PATH": str(folder)}, "ops@example.com",
                        "--backend", "file")
    assert result.exit_code == 0, result.output
    [eml] = list(folder.glob("*.eml"))
    assert b"Subject: Test email from Help Desk" in eml.read_bytes()
    assert "deliver (file backend)" in result.stdout

    console = run_test_email({}, "ops@example.com")
    assert console.exit_code == 0
    assert "Envelope: itsm-notify@localhost → ops@example.com" in console.stdout
    assert "deliver (console backend)" in console.stdout


# ------------------------------------------------------------------------ failures


def test_wrong_password_names_auth_and_the_fix(tls_sink: SmtpSink,
                                               ca_bundle_path: Path) -> None:
    result = run_test_email(smtp_settings(tls_sink, ca_bundle_path, EMAIL_HOST_PASSWORD=WRONG))

    assert result.exit_code == 1
    out = result.stdout
    assert step_lines(out)[-1].startswith("✗ AUTH")
    assert "✗ AUTH failed: 535" in out
    assert "use an app password for Gmail" in out
    assert "EMAIL_HOST_USER and EMAIL_HOST_PASSWORD" in out
    assert_no_secret(result.output, WRONG)
    assert tls_sink.messages == []


def test_closed_port_gives_the_hint_within_the_timeout(tls_sink: SmtpSink) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = smtp_settings(tls_sink, None, EMAIL_PORT=port)
    started = time.monotonic()

    result = run_test_email(env)

    assert time.monotonic() - started < 3  # EMAIL_TIMEOUT=3
    assert result.exit_code == 1
    assert "✗ connect failed: connection refused" in result.stdout
    hint = result.stdout.split("Likely fix:")[1]
    assert "EMAIL_HOST" in hint and "EMAIL_PORT" in hint and "firewall" in hint
    assert_no_secret(result.output, PASSWORD)


def test_untrusted_certificate_is_named_plainly(tls_sink: SmtpSink) -> None:
    result = run_test_email(smtp_settings(tls_sink, None))  # no CA file: the system store

    assert result.exit_code == 1
    out = result.stdout
    assert "✗ STARTTLS (certificate checked) failed" in out
    assert "unknown CA" in out
    assert "EMAIL_SSL_CAFILE" in out.split("Likely fix:")[1]
    assert not any("AUTH" in line for line in step_lines(out))  # never got to the password
    assert_no_secret(result.output, PASSWORD)


def test_hostname_mismatch_is_named_plainly(trust_ca: trustme.CA,
                                            ca_bundle_path: Path) -> None:
    other = server_context(trust_ca.issue_cert("mail.example.org"))
    with SmtpSink(tls_context=other, auth_credentials={USER: PASSWORD}) as sink:
        result = run_test_email(smtp_settings(sink, ca_bundle_path))
    assert result.exit_code == 1
    assert "hostname mismatch" in result.stdout
    assert "set EMAIL_HOST to a name the certificate was issued for" in result.stdout


def test_expired_certificate_is_named_plainly(trust_ca: trustme.CA,
                                              ca_bundle_path: Path) -> None:
    now = datetime.now(UTC)
    expired = server_context(trust_ca.issue_cert("127.0.0.1", not_before=now - timedelta(days=60),
                                                 not_after=now - timedelta(days=1)))
    with SmtpSink(tls_context=expired, auth_credentials={USER: PASSWORD}) as sink:
        result = run_test_email(smtp_settings(sink, ca_bundle_path))
    assert result.exit_code == 1
    assert "the server's certificate has expired" in result.stdout


def test_implicit_tls_against_a_plain_server(smtp_sink: SmtpSink,
                                             ca_bundle_path: Path) -> None:
    env = smtp_settings(smtp_sink, ca_bundle_path, EMAIL_USE_TLS="false", EMAIL_USE_SSL="true")
    result = run_test_email(env)
    assert result.exit_code == 1
    assert "✗ TLS handshake (implicit TLS, certificate checked) failed" in result.stdout
    assert "EMAIL_USE_TLS=true with port 587" in result.stdout


def test_starttls_against_an_implicit_tls_port(server_tls_context: ssl.SSLContext,
                                               ca_bundle_path: Path) -> None:
    with SmtpSink(implicit_tls_context=server_tls_context) as sink:
        started = time.monotonic()
        result = run_test_email(smtp_settings(sink, ca_bundle_path, EMAIL_TIMEOUT=1))
        assert time.monotonic() - started < 3
    assert result.exit_code == 1
    assert "✗ greeting failed: connected, but the server sent no greeting within 1 s" in \
        result.stdout
    assert "set EMAIL_USE_SSL=true instead of EMAIL_USE_TLS" in result.stdout


def test_password_is_not_sent_over_plaintext(server_tls_context: ssl.SSLContext) -> None:
    with SmtpSink(auth_credentials={USER: PASSWORD}, auth_require_tls=False) as sink:
        env = smtp_settings(sink, None, EMAIL_USE_TLS="false")
        refused = run_test_email(env)
        assert refused.exit_code == 1
        assert "✗ AUTH failed: refused to send the password over an unencrypted connection" in \
            refused.stdout
        assert "EMAIL_ALLOW_PLAINTEXT_AUTH=true" in refused.stdout
        assert sink.messages == []

        allowed = run_test_email({**env, "EMAIL_ALLOW_PLAINTEXT_AUTH": "true"})
        assert allowed.exit_code == 0, allowed.output
        assert [m.auth_login for m in sink.messages] == [USER]
        assert_no_secret(allowed.output, PASSWORD)


def test_usage_errors_exit_2() -> None:
    bad_address = run_test_email({}, "not-an-address")
    assert bad_address.exit_code == 2
    assert "not-an-address" in bad_address.stderr
    bad_language = run_test_email({}, "ops@example.com", "--language", "xx")
    assert bad_language.exit_code == 2 and "Traceback" not in bad_language.output
    assert "There is no catalog for the language 'xx'" in bad_language.stderr
    bad_backend = run_test_email({}, "ops@example.com", "--backend", "carrier-pigeon")
    assert bad_backend.exit_code == 2
    assert "EMAIL_BACKEND" in bad_backend.stderr
