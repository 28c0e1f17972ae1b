"""Configuration (contract §4): sources, precedence, Django's names, validation.

Most tests call ``load_settings`` with explicit ``environ=`` / ``dotenv_path=`` /
``config_path=``; the last ones go through the real CLI, where a bad setting must be
one sentence on stderr and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract_app import add_event, create_schema, outbox_states, run_cli, seed_helpdesk
from itsm_notify.config import AdminAddress, Settings, load_settings
from itsm_notify.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, *, flags: dict[str, Any] | None = None,
         env: dict[str, str] | None = None, dotenv: str | None = None,
         toml: str | None = None) -> Settings:
    """Settings from exactly the given sources (each one optional)."""
    dotenv_path = write(tmp_path / "test.env", dotenv) if dotenv is not None else None
    config_path = write(tmp_path / "test.toml", toml) if toml is not None else None
    return load_settings(flags, environ=env or {}, dotenv_path=dotenv_path,
                         config_path=config_path)


def config_error(tmp_path: Path, **sources: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **sources)
    message = str(info.value)
    assert "\n" not in message, "one sentence"
    return message


# ------------------------------------------------------------------------ precedence


def test_defaults_without_any_source(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.database_url == "sqlite:///itsm-notify.db"
    assert s.email_backend == "console"
    assert (s.email_host, s.email_port, s.email_timeout) == ("localhost", 25, 30.0)
    assert s.debug is False and s.admins == ()
    assert s.closed_statuses == ()  # the source's own: contract's resolved, closed


def test_precedence_flag_env_dotenv_toml_default(tmp_path: Path) -> None:
    # Five settings, each set in one layer fewer than the one before it.
    toml = """
email_host = "toml-host"
email_port = 1001
site_name = "Toml Desk"
default_from_email = "toml@example.com"
"""
    dotenv = "EMAIL_HOST=dotenv-host\nEMAIL_PORT=1002\nSITE_NAME='Dotenv Desk'\n"
    env = {"EMAIL_HOST": "env-host", "EMAIL_PORT": "1003"}
    flags = {"email_host": "flag-host", "email_port": None}  # None: the flag was not given
    s = load(tmp_path, flags=flags, env=env, dotenv=dotenv, toml=toml)
    assert s.email_host == "flag-host"
    assert s.email_port == 1003
    assert s.site_name == "Dotenv Desk"
    assert s.default_from_email == "toml@example.com"
    assert s.email_timeout == 30.0  # the default


def test_toml_keys_may_sit_under_an_itsm_notify_table(tmp_path: Path) -> None:
    s = load(tmp_path, toml='[itsm_notify]\nemail_port = 2525\nadmins = ["ops@example.com"]\n')
    assert s.email_port == 2525
    assert s.admins == (AdminAddress("", "ops@example.com"),)


def test_config_file_named_by_the_environment_or_dotenv(tmp_path: Path) -> None:
    toml = write(tmp_path / "elsewhere.toml", 'site_name = "From ITSM_NOTIFY_CONFIG"\n')
    s = load_settings(environ={"ITSM_NOTIFY_CONFIG": str(toml)}, dotenv_path=None)
    assert s.site_name == "From ITSM_NOTIFY_CONFIG"
    dotenv = write(tmp_path / "x.env", f"ITSM_NOTIFY_CONFIG={toml}\n")
    assert load_settings(environ={}, dotenv_path=dotenv).site_name == "From ITSM_NOTIFY_CONFIG"


def test_a_missing_dotenv_file_is_fine(tmp_path: Path) -> None:
    s = load_settings(environ={}, dotenv_path=tmp_path / "absent.env")
    assert s.email_backend == "console"


# ------------------------------------------------------------------ Django's names


@pytest.mark.parametrize(("value", "backend"), [
    ("console", "console"), ("smtp", "smtp"), ("file", "file"),
    ("django.core.mail.backends.console.EmailBackend", "console"),
    ("django.core.mail.backends.smtp.EmailBackend", "smtp"),
    ("django.core.mail.backends.filebased.EmailBackend", "file"),
])
def test_email_backend_accepts_django_dotted_names(tmp_path: Path, value: str,
                                                   backend: str) -> None:
    assert load(tmp_path, env={"EMAIL_BACKEND": value}).email_backend == backend


def test_a_django_env_file_works_unchanged(tmp_path: Path) -> None:
    dotenv = """\
# a Django project's .env
DATABASE_URL=postgresql+psycopg://helpdesk:pw@db.example.com/helpdesk
EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend
EMAIL_HOST=smtp.gmail.com
EMAIL_PORT=587
EMAIL_HOST_USER=helpdesk@example.com
EMAIL_HOST_PASSWORD=app-password
EMAIL_USE_TLS=True
EMAIL_TIMEOUT=12.5
DEFAULT_FROM_EMAIL=Help Desk <helpdesk@example.com>
SITE_URL=https://helpdesk.example.com/
ADMINS=Ops Team <ops@example.com>, noc@example.com
DEBUG=False
"""
    s = load(tmp_path, dotenv=dotenv)
    assert s.database_url == "postgresql+psycopg://helpdesk:pw@db.example.com/helpdesk"
    assert (s.email_backend, s.email_host, s.email_port) == ("smtp", "smtp.gmail.com", 587)
    assert s.email_host_user == "helpdesk@example.com"
    assert s.email_host_password == "app-password"
    assert "app-password" not in repr(s), "the password never shows in a repr"
    assert s.email_use_tls is True and s.email_use_ssl is False
    assert s.email_timeout == 12.5
    assert s.default_from_email == "Help Desk <helpdesk@example.com>"
    assert s.from_domain == "example.com"
    assert s.site_url == "https://helpdesk.example.com"
    assert s.ticket_url(7) == "https://helpdesk.example.com/tickets/7/"
    assert s.admins == (AdminAddress("Ops Team", "ops@example.com"),
                        AdminAddress("", "noc@example.com"))
    assert s.debug is False


@pytest.mark.parametrize(("raw", "expected"), [
    ("Name <a@x.example>, b@y.example",
     (AdminAddress("Name", "a@x.example"), AdminAddress("", "b@y.example"))),
    ('"Ops, Night Shift" <ops@example.com>',
     (AdminAddress("Ops, Night Shift", "ops@example.com"),)),
    ("  ", ()),
    ("a@x.example,", (AdminAddress("", "a@x.example"),)),
])
def test_admins_parsing(tmp_path: Path, raw: str, expected: tuple[AdminAddress, ...]) -> None:
    assert load(tmp_path, env={"ADMINS": raw}).admins == expected


def test_debug_with_development_email_redirects(tmp_path: Path) -> None:
    s = load(tmp_path, env={"DEBUG": "true", "DEVELOPMENT_EMAIL": "dev@example.com"})
    assert s.redirect_to == "dev@example.com"
    assert load(tmp_path, env={"DEVELOPMENT_EMAIL": "dev@example.com"}).redirect_to is None


# ------------------------------------------------------------------------ bad values


@pytest.mark.parametrize(("env", "key"), [
    ({"EMAIL_PORT": "smtp"}, "EMAIL_PORT"),
    ({"EMAIL_PORT": "0"}, "EMAIL_PORT"),
    ({"EMAIL_USE_TLS": "maybe"}, "EMAIL_USE_TLS"),
    ({"DEBUG": "sometimes"}, "DEBUG"),
    ({"EMAIL_TIMEOUT": "soon"}, "EMAIL_TIMEOUT"),
    ({"EMAIL_TIMEOUT": "0"}, "EMAIL_TIMEOUT"),
    ({"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}, "EMAIL_BACKEND"),
    ({"ADMINS": "Ops <not-an-address>"}, "ADMINS"),
    ({"SITE_URL": "helpdesk.example.com"}, "SITE_URL"),
    ({"DEFAULT_FROM_EMAIL": "helpdesk"}, "DEFAULT_FROM_EMAIL"),
    ({"ITSM_BATCH_SIZE": "0"}, "ITSM_BATCH_SIZE"),
    ({"ITSM_SMTP_CONNECTIONS": "four"}, "ITSM_SMTP_CONNECTIONS"),
    ({"ITSM_MAX_ATTEMPTS": "-1"}, "ITSM_MAX_ATTEMPTS"),
    ({"ITSM_RATE_PER_SECOND": "-2"}, "ITSM_RATE_PER_SECOND"),
    ({"EMAIL_USE_TLS": "true", "EMAIL_USE_SSL": "true"}, "EMAIL_USE_SSL"),
    ({"ITSM_BOUNCE_ADDRESS": "bounces@desk.example"}, "SECRET_KEY"),
    ({"ITSM_BOUNCE_ADDRESS": "Bounces <bounces@desk.example>", "SECRET_KEY": "k"},
     "ITSM_BOUNCE_ADDRESS"),
    ({"ITSM_BOUNCE_ADDRESS": "notification-bounces@desk.example", "SECRET_KEY": "k"},
     "at most 17 characters"),
    ({"ITSM_INBOUND_ADDRESSES": "help@desk.example, nope"}, "ITSM_INBOUND_ADDRESSES"),
    ({"ITSM_INBOUND_UNKNOWN_REPLY": "ignore"}, "ITSM_INBOUND_UNKNOWN_REPLY"),
    ({"ITSM_INBOUND_UNKNOWN_SENDER": "fallback:"}, "ITSM_INBOUND_UNKNOWN_SENDER"),
    ({"ITSM_SOURCE": "django-helpdesk", "ITSM_INBOUND_QUEUE": "it support"},
     "ITSM_INBOUND_QUEUE"),
    ({"ITSM_INBOUND_QUEUE": "it"}, "set ITSM_SOURCE=django-helpdesk"),
    ({"ITSM_FETCH_INTERVAL_SECONDS": "0"}, "ITSM_FETCH_INTERVAL_SECONDS"),
])
def test_a_bad_value_names_its_environment_key(tmp_path: Path, env: dict[str, str],
                                               key: str) -> None:
    assert key in config_error(tmp_path, env=env)


def test_a_bad_value_names_where_it_came_from(tmp_path: Path) -> None:
    assert "EMAIL_PORT (from the config file)" in config_error(tmp_path,
                                                               toml='email_port = "x"\n')
    assert "EMAIL_PORT (from .env)" in config_error(tmp_path, dotenv="EMAIL_PORT=x\n")
    assert "EMAIL_PORT (from the environment)" in config_error(tmp_path,
                                                                env={"EMAIL_PORT": "x"})


def test_a_good_higher_layer_does_not_hide_a_bad_lower_one(tmp_path: Path) -> None:
    """Every source is checked, so a broken config.toml is found before the day the
    environment variable that masked it is removed."""
    message = config_error(tmp_path, env={"EMAIL_PORT": "25"}, toml='email_port = "x"\n')
    assert "EMAIL_PORT" in message


def test_debug_without_development_email_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, env={"DEBUG": "true"})
    assert "DEBUG" in message and "DEVELOPMENT_EMAIL" in message


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml='email_hots = "typo.example.com"\n')
    assert "'email_hots'" in message and "config.example.toml" in message


def test_invalid_toml_and_missing_file_are_errors(tmp_path: Path) -> None:
    assert "not valid TOML" in config_error(tmp_path, toml="email_port = \n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={}, dotenv_path=None, config_path=tmp_path / "absent.toml")


def test_a_bad_password_value_never_leaks(tmp_path: Path) -> None:
    message = config_error(tmp_path, env={"EMAIL_HOST_PASSWORD": "s3cret-pw",
                                          "EMAIL_PORT": "x"})
    assert "s3cret-pw" not in message


# ------------------------------------------------------------------- through the CLI


def test_cli_reads_dotenv_in_the_working_folder_below_env_and_flags(tmp_path: Path) -> None:
    """db init creates the SQLite file the winning DATABASE_URL names."""
    write(tmp_path / ".env", "DATABASE_URL=sqlite:///from-dotenv.db\n")
    write(tmp_path / "config.toml", 'database_url = "sqlite:///from-toml.db"\n')

    assert run_cli(["db", "init", "--config", "config.toml"]).exit_code == 0
    assert (tmp_path / "from-dotenv.db").exists() and not (tmp_path / "from-toml.db").exists()

    result = run_cli(["db", "init"], env={"DATABASE_URL": "sqlite:///from-env.db"})
    assert result.exit_code == 0 and (tmp_path / "from-env.db").exists()

    result = run_cli(["db", "init", "--database-url", "sqlite:///from-flag.db"],
                     env={"DATABASE_URL": "sqlite:///from-env.db"})
    assert result.exit_code == 0 and (tmp_path / "from-flag.db").exists()

    (tmp_path / ".env").unlink()
    assert run_cli(["db", "init", "--config", "config.toml"]).exit_code == 0
    assert (tmp_path / "from-toml.db").exists()


@pytest.mark.parametrize(("sources", "key"), [
    ({"env": {"EMAIL_PORT": "twenty-five"}}, "EMAIL_PORT"),
    ({"env": {"EMAIL_BACKEND": "sendgrid"}}, "EMAIL_BACKEND"),
    ({"dotenv": "DEBUG=true\n"}, "DEVELOPMENT_EMAIL"),
    ({"toml": 'email_hots = "x"\n'}, "email_hots"),
])
@pytest.mark.parametrize("command", [["send-pending"], ["status", "--json"], ["db", "init"]])
def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, sources: dict[str, Any],
                                              key: str, command: list[str]) -> None:
    args = list(command)
    if "dotenv" in sources:
        write(tmp_path / ".env", sources["dotenv"])
    if "toml" in sources:
        write(tmp_path / "bad.toml", sources["toml"])
        args += ["--config", "bad.toml"]
    result = run_cli(args, env=sources.get("env"))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and lines[0].startswith("Error:")
    assert "Traceback" not in result.stderr


def test_debug_without_development_email_sends_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/itsm.db"
    engine = create_schema(url)
    ids = seed_helpdesk(engine)
    add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    result = run_cli(["send-pending"], env={"DATABASE_URL": url, "DEBUG": "1",
                                            "EMAIL_BACKEND": "file"})
    assert result.exit_code == 2 and "DEVELOPMENT_EMAIL" in result.stderr
    assert set(outbox_states(engine).values()) == {"pending"}
    assert not (tmp_path / "sent-emails").exists()
    engine.dispose()
