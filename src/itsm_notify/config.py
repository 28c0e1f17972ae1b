"""Settings: one typed object, loaded once and validated once.

Precedence (contract §4): command-line flag > environment > ``.env`` in the working
folder > ``config.toml`` > defaults. Every setting has one environment name (Django's,
where Django has one) and one TOML key, the environment name in lower case, so an
existing Django ``.env`` works unchanged.
"""

from __future__ import annotations

import os
import re
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from email.header import decode_header, make_header
from email.utils import getaddresses
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import dotenv_values

from .errors import ConfigError
from .events.addresses import address_problem

if TYPE_CHECKING:  # imported when used: an idle cron run reads no calendar and no chat
    from .channels.routes import ChatDestination
    from .timing.business_hours import BusinessCalendar
    from .timing.thresholds import Threshold


class Secret(str):
    """A string that never shows itself in a repr, a log line or an error message."""

    def __repr__(self) -> str:
        return "'********'" if self else "''"

    def masked(self) -> str:
        return "********" if self else "(not set)"


BACKEND_ALIASES = {
    "console": "console",
    "smtp": "smtp",
    "file": "file",
    "sendgrid": "sendgrid",
    "ses": "ses",
    "postmark": "postmark",
    "mailgun": "mailgun",
    "django.core.mail.backends.console.EmailBackend": "console",
    "django.core.mail.backends.smtp.EmailBackend": "smtp",
    "django.core.mail.backends.filebased.EmailBackend": "file",
    # django-sendgrid-v5's and django-anymail's names, so their users' .env works as is
    "sendgrid_backend.SendgridBackend": "sendgrid",
    "anymail.backends.sendgrid.EmailBackend": "sendgrid",
    "anymail.backends.amazon_ses.EmailBackend": "ses",
    "anymail.backends.amazon_sesv2.EmailBackend": "ses",
    "anymail.backends.postmark.EmailBackend": "postmark",
    "anymail.backends.mailgun.EmailBackend": "mailgun",
}
HTTP_EMAIL_BACKENDS = frozenset({"sendgrid", "ses", "postmark", "mailgun"})
"""Backends that send through a provider's HTTP API (itsm_notify.channels.http_email)."""
CONFIG_TABLES = frozenset({"itsm_notify", "chat"})
"""The tables a config file may hold: settings, and chat destinations ([chat.<name>])."""


@dataclass(frozen=True)
class AdminAddress:
    name: str
    email: str


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("must be a whole number")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError("must be a whole number") from None


def _parse_float(raw: Any) -> float:
    try:
        return float(str(raw).strip())
    except ValueError:
        raise ValueError("must be a number") from None


def _parse_str(raw: Any) -> str:
    return str(raw).strip()


def _parse_optional_str(raw: Any) -> str | None:
    text = str(raw).strip()
    return text or None


def _parse_list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _parse_optional_path(raw: Any) -> str | None:
    """A URL path prefix (``/helpdesk``; ``/``: the site's root); empty: not set."""
    text = str(raw).strip()
    if not text:
        return None
    if not text.startswith("/"):
        raise ValueError("must be a path starting with / (e.g. /helpdesk), or empty")
    return text.rstrip("/")


def _parse_labels(raw: Any) -> tuple[tuple[str, str], ...]:
    """``1=Open, 2=Reopened`` (or a TOML table): (stored value, label) pairs."""
    if isinstance(raw, dict):
        return tuple((str(k), str(v)) for k, v in raw.items())
    labels: dict[str, str] = {}
    for item in str(raw).split(","):
        if not item.strip():
            continue
        value, sep, label = item.partition("=")
        if not sep or not value.strip() or not label.strip():
            raise ValueError("must be value=Label pairs separated by commas, e.g. "
                             "'1=Open, 2=Reopened'")
        labels[value.strip()] = label.strip()
    return tuple(labels.items())


def _parse_backend(raw: Any) -> str:
    text = str(raw).strip()
    if text not in BACKEND_ALIASES:
        raise ValueError("must be console, smtp, file, sendgrid, ses, postmark or mailgun (or "
                         "the Django, django-sendgrid-v5 or django-anymail dotted name of one)")
    return BACKEND_ALIASES[text]


def _parse_admins(raw: Any) -> tuple[AdminAddress, ...]:
    items = raw if isinstance(raw, list) else [raw]
    admins = []
    for name, email in getaddresses([str(item) for item in items]):
        if not email:
            continue
        if problem := address_problem(email):
            raise ValueError(f"has {email!r}, {problem}")
        admins.append(AdminAddress(name=name, email=email))
    return tuple(admins)


def _parse_secret(raw: Any) -> Secret:
    return Secret(str(raw))


def _parse_unknown_reply(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in ("refuse", "quarantine"):
        raise ValueError("must be refuse or quarantine")
    return text


def _parse_unknown_sender(raw: Any) -> str:
    text = str(raw).strip()
    kind, colon, username = text.partition(":")
    if (kind.lower() in ("create", "refuse") and not colon) or (
            kind.lower() == "fallback" and username.strip()):
        return f"fallback:{username.strip()}" if colon else kind.lower()
    raise ValueError("must be create, refuse or fallback:<username>")


def _parse_queue_slug(raw: Any) -> str | None:
    text = str(raw).strip()
    if text and not re.fullmatch(r"[-a-zA-Z0-9_]{1,50}", text):
        raise ValueError("must be a django-helpdesk queue's slug (letters, digits, - and _)")
    return text or None


def _setting(default: Any, env: str, parse: Callable[[Any], Any], *, repr: bool = True,
             django: str | None = None) -> Any:
    """A settings field: its default, its environment name and its parser; ``django``:
    Django's name for the same setting, read when the environment name is not set."""
    return field(default=default, repr=repr,
                 metadata={"env": env, "parse": parse, "django": django})


@dataclass(frozen=True)
class Settings:
    """Everything the tool can be told. Field names are the TOML keys; ``env`` metadata
    is the environment name. Read ``config.example.toml`` for what each one means."""

    database_url: str = _setting("sqlite:///itsm-notify.db", "DATABASE_URL", _parse_str)
    email_backend: str = _setting("console", "EMAIL_BACKEND", _parse_backend)
    email_host: str = _setting("localhost", "EMAIL_HOST", _parse_str)
    email_port: int = _setting(25, "EMAIL_PORT", _parse_int)
    email_host_user: str = _setting("", "EMAIL_HOST_USER", _parse_str)
    email_host_password: Secret = _setting(
        Secret(""), "EMAIL_HOST_PASSWORD", _parse_secret, repr=False)
    email_use_tls: bool = _setting(False, "EMAIL_USE_TLS", _parse_bool)
    email_use_ssl: bool = _setting(False, "EMAIL_USE_SSL", _parse_bool)
    email_timeout: float = _setting(30.0, "EMAIL_TIMEOUT", _parse_float)
    email_ssl_cafile: str | None = _setting(None, "EMAIL_SSL_CAFILE", _parse_optional_str)
    email_allow_plaintext_auth: bool = _setting(False, "EMAIL_ALLOW_PLAINTEXT_AUTH", _parse_bool)
    email_file_path: str = _setting("sent-emails", "EMAIL_FILE_PATH", _parse_str)
    default_from_email: str = _setting("itsm-notify@localhost", "DEFAULT_FROM_EMAIL", _parse_str)
    reply_to_email: str | None = _setting(None, "REPLY_TO_EMAIL", _parse_optional_str)
    site_url: str = _setting("http://localhost:8000", "SITE_URL", _parse_str)
    site_name: str = _setting("Help Desk", "SITE_NAME", _parse_str)
    admins: tuple[AdminAddress, ...] = _setting((), "ADMINS", _parse_admins)
    debug: bool = _setting(False, "DEBUG", _parse_bool)
    development_email: str | None = _setting(None, "DEVELOPMENT_EMAIL", _parse_optional_str)
    template_dir: str | None = _setting(None, "ITSM_TEMPLATE_DIR", _parse_optional_str)
    internal_statuses: tuple[str, ...] = _setting((), "ITSM_INTERNAL_STATUSES", _parse_list)
    closed_statuses: tuple[str, ...] = _setting((), "ITSM_CLOSED_STATUSES", _parse_list)
    source: str = _setting("contract", "ITSM_SOURCE", _parse_str)
    source_path: str | None = _setting(None, "ITSM_SOURCE_PATH", _parse_optional_path)
    status_labels: tuple[tuple[str, str], ...] = _setting((), "ITSM_STATUS_LABELS", _parse_labels)
    priority_labels: tuple[tuple[str, str], ...] = _setting(
        (), "ITSM_PRIORITY_LABELS", _parse_labels)
    notify_actor: bool = _setting(False, "ITSM_NOTIFY_ACTOR", _parse_bool)
    batch_size: int = _setting(100, "ITSM_BATCH_SIZE", _parse_int)
    lease_seconds: int = _setting(300, "ITSM_LEASE_SECONDS", _parse_int)
    retry_base_seconds: float = _setting(60.0, "ITSM_RETRY_BASE_SECONDS", _parse_float)
    retry_max_seconds: float = _setting(3600.0, "ITSM_RETRY_MAX_SECONDS", _parse_float)
    max_attempts: int = _setting(8, "ITSM_MAX_ATTEMPTS", _parse_int)
    max_claims: int = _setting(5, "ITSM_MAX_CLAIMS", _parse_int)
    smtp_connections: int = _setting(4, "ITSM_SMTP_CONNECTIONS", _parse_int)
    one_cpu: bool = _setting(True, "ITSM_ONE_CPU", _parse_bool)
    rate_per_second: float = _setting(0.0, "ITSM_RATE_PER_SECOND", _parse_float)
    rate_per_hour: int = _setting(0, "ITSM_RATE_PER_HOUR", _parse_int)
    delivery_log: str = _setting("logs/email.log", "ITSM_DELIVERY_LOG", _parse_str)
    secret_key: Secret = _setting(Secret(""), "SECRET_KEY", _parse_secret, repr=False)
    max_text_length: int = _setting(4000, "ITSM_MAX_TEXT_LENGTH", _parse_int)
    overdue_realert_hours: float = _setting(24.0, "ITSM_OVERDUE_REALERT_HOURS", _parse_float)
    send_interval_seconds: int = _setting(60, "ITSM_SEND_INTERVAL_SECONDS", _parse_int)
    overdue_cron: str = _setting("0 * * * *", "ITSM_OVERDUE_CRON", _parse_str)
    time_zone: str | None = _setting(None, "ITSM_TIME_ZONE", _parse_optional_str,
                                     django="TIME_ZONE")
    default_locale: str = _setting("en", "ITSM_DEFAULT_LOCALE", _parse_str,
                                   django="LANGUAGE_CODE")
    due_soon: str = _setting("", "ITSM_DUE_SOON", _parse_str)
    due_soon_cron: str = _setting("*/5 * * * *", "ITSM_DUE_SOON_CRON", _parse_str)
    due_soon_anytime_priorities: tuple[str, ...] = _setting(
        ("critical",), "ITSM_DUE_SOON_ANYTIME_PRIORITIES", _parse_list)
    business_hours: str | None = _setting(None, "ITSM_BUSINESS_HOURS", _parse_optional_str)
    business_time_zone: str | None = _setting(None, "ITSM_BUSINESS_TIME_ZONE",
                                              _parse_optional_str)
    holidays: str | None = _setting(None, "ITSM_HOLIDAYS", _parse_optional_str)
    summary_bypass_priorities: tuple[str, ...] = _setting(
        ("critical",), "ITSM_SUMMARY_BYPASS_PRIORITIES", _parse_list)
    inbound_url: str | None = _setting(None, "ITSM_INBOUND_URL", _parse_optional_str)
    inbound_password: Secret = _setting(
        Secret(""), "ITSM_INBOUND_PASSWORD", _parse_secret, repr=False)
    inbound_ssl_cafile: str | None = _setting(None, "ITSM_INBOUND_SSL_CAFILE",
                                              _parse_optional_str)
    inbound_allow_plaintext_auth: bool = _setting(
        False, "ITSM_INBOUND_ALLOW_PLAINTEXT_AUTH", _parse_bool)
    inbound_done_folder: str = _setting("itsm-done", "ITSM_INBOUND_DONE_FOLDER", _parse_str)
    inbound_failed_folder: str = _setting("itsm-failed", "ITSM_INBOUND_FAILED_FOLDER",
                                          _parse_str)
    inbound_max_bytes: int = _setting(40 * 1024 * 1024, "ITSM_INBOUND_MAX_BYTES", _parse_int)
    inbound_addresses: tuple[str, ...] = _setting((), "ITSM_INBOUND_ADDRESSES", _parse_list)
    inbound_trusted_authserv_ids: tuple[str, ...] = _setting(
        (), "ITSM_INBOUND_TRUSTED_AUTHSERV_IDS", _parse_list)
    inbound_unknown_reply: str = _setting("refuse", "ITSM_INBOUND_UNKNOWN_REPLY",
                                          _parse_unknown_reply)
    inbound_unknown_sender: str = _setting("create", "ITSM_INBOUND_UNKNOWN_SENDER",
                                           _parse_unknown_sender)
    inbound_queue: str | None = _setting(None, "ITSM_INBOUND_QUEUE", _parse_queue_slug)
    fetch_interval_seconds: int = _setting(60, "ITSM_FETCH_INTERVAL_SECONDS", _parse_int)
    bounce_address: str | None = _setting(None, "ITSM_BOUNCE_ADDRESS", _parse_optional_str)
    http_connections: int = _setting(4, "ITSM_HTTP_CONNECTIONS", _parse_int)
    sendgrid_api_key: Secret = _setting(Secret(""), "SENDGRID_API_KEY", _parse_secret, repr=False)
    sendgrid_api_url: str = _setting("https://api.sendgrid.com/v3/", "SENDGRID_API_URL",
                                     _parse_str)
    postmark_server_token: Secret = _setting(
        Secret(""), "POSTMARK_SERVER_TOKEN", _parse_secret, repr=False)
    postmark_api_url: str = _setting("https://api.postmarkapp.com/", "POSTMARK_API_URL",
                                     _parse_str)
    mailgun_api_key: Secret = _setting(Secret(""), "MAILGUN_API_KEY", _parse_secret, repr=False)
    mailgun_sender_domain: str | None = _setting(None, "MAILGUN_SENDER_DOMAIN",
                                                 _parse_optional_str)
    mailgun_api_url: str = _setting("https://api.mailgun.net/v3", "MAILGUN_API_URL", _parse_str)
    aws_region: str | None = _setting(None, "AWS_REGION", _parse_optional_str)
    aws_access_key_id: str | None = _setting(None, "AWS_ACCESS_KEY_ID", _parse_optional_str)
    aws_secret_access_key: Secret = _setting(
        Secret(""), "AWS_SECRET_ACCESS_KEY", _parse_secret, repr=False)
    aws_session_token: Secret = _setting(Secret(""), "AWS_SESSION_TOKEN", _parse_secret,
                                         repr=False)
    aws_endpoint_url_sesv2: str | None = _setting(None, "AWS_ENDPOINT_URL_SESV2",
                                                  _parse_optional_str)
    amazon_ses_configuration_set_name: str | None = _setting(
        None, "AMAZON_SES_CONFIGURATION_SET_NAME", _parse_optional_str)
    chat_destinations: tuple[ChatDestination, ...] = field(
        default=(), repr=False, metadata={"env": None, "parse": None})
    """The config file's ``[chat.<name>]`` tables (channels/routes.py), in order."""

    @property
    def from_domain(self) -> str:
        """The domain of DEFAULT_FROM_EMAIL, used to make Message-IDs and thread ids."""
        _, address = getaddresses([self.default_from_email])[0]
        return address.rpartition("@")[2] or "localhost"

    @property
    def redirect_to(self) -> str | None:
        """The address every email goes to instead of its recipients (debug mode)."""
        return self.development_email if self.debug else None

    def ticket_url(self, ticket_id: int) -> str:
        return f"{self.site_url}{ticket_path(ticket_id)}"

    @cached_property
    def business_calendar(self) -> BusinessCalendar:
        """ITSM_BUSINESS_HOURS, ITSM_BUSINESS_TIME_ZONE and ITSM_HOLIDAYS as a calendar
        (always open when no hours are set); read once, the holidays file included."""
        from .timing.business_hours import load_calendar

        return load_calendar(business_hours=self.business_hours,
                             time_zone=self.business_time_zone,
                             default_time_zone=self.time_zone, holidays=self.holidays)

    @cached_property
    def due_soon_thresholds(self) -> tuple[Threshold, ...]:
        """ITSM_DUE_SOON's thresholds (none: no due-soon warnings)."""
        from .timing.thresholds import parse_thresholds

        return parse_thresholds(self.due_soon,
                                business_hours=not self.business_calendar.always_open)


def ticket_path(ticket_id: int) -> str:
    return f"/tickets/{ticket_id}/"


ENV_NAMES: dict[str, str] = {f.name: f.metadata["env"] for f in fields(Settings)
                             if f.metadata["env"]}
DJANGO_NAMES: dict[str, str] = {f.name: f.metadata["django"] for f in fields(Settings)
                                if f.metadata.get("django")}
"""Django's names for settings the tool shares with it (LANGUAGE_CODE, TIME_ZONE)."""


def _named(source: Mapping[str, str]) -> dict[str, str]:
    """The settings an environment (or .env) sets, by field name: each by its own
    environment name, else by Django's."""
    found = {name: source[env] for name, env in DJANGO_NAMES.items() if env in source}
    found.update({name: source[env] for name, env in ENV_NAMES.items() if env in source})
    return found


def config_file_path(config_path: str | Path | None, env: Mapping[str, str],
                     dotenv: Mapping[str, str]) -> Path | None:
    """The config file in force: the flag, else ITSM_NOTIFY_CONFIG from the environment,
    else from .env; None when there is none."""
    path = config_path or env.get("ITSM_NOTIFY_CONFIG") or dotenv.get("ITSM_NOTIFY_CONFIG")
    return Path(path) if path else None


def read_toml(path: Path, what: str, when_missing: str) -> dict[str, Any]:
    """A TOML file the tool is pointed at (the config file, a source mapping); one
    sentence, naming ``what`` it is, when it is missing (``when_missing``: the fix) or
    not valid TOML."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist: {when_missing}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML ({exc}): fix its syntax.") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file's TOML; ConfigError for a missing file, bad syntax or a table that
    is neither [itsm_notify] nor [chat.<name>]."""
    data = read_toml(path, "The config file",
                     "give an existing file with --config or ITSM_NOTIFY_CONFIG.")
    tables = sorted(k for k, v in data.items() if isinstance(v, dict) and k not in CONFIG_TABLES)
    if tables:
        raise ConfigError(f"The config file {path} has unknown table [{tables[0]}]: settings go "
                          "at the top or under [itsm_notify], chat destinations under "
                          "[chat.<name>] (see config.example.toml).")
    return data


def _toml_values(path: Path | None, data: Mapping[str, Any]) -> dict[str, Any]:
    if path is None:
        return {}
    # Allow keys in the top level or under an [itsm_notify] table.
    values = dict(data.get("itsm_notify", {})) | {k: v for k, v in data.items()
                                                  if not isinstance(v, dict)}
    unknown = sorted(set(values) - set(ENV_NAMES))
    if unknown:
        raise ConfigError(f"The config file {path} has unknown key {unknown[0]!r}: "
                          "see config.example.toml for the keys.")
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | Path | None = ".env",
) -> Settings:
    """Build the settings from every source, in precedence order, and validate them.

    ``overrides`` are command-line flags, keyed by field name (``None`` values are
    ignored so unset flags fall through).
    """
    env = dict(os.environ if environ is None else environ)
    dotenv = {k: v for k, v in (dotenv_values(dotenv_path) if dotenv_path else {}).items()
              if v is not None}
    path = config_file_path(config_path, env, dotenv)
    data = read_config_file(path) if path is not None else {}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("the config file", _toml_values(path, data)),
        (".env", _named(dotenv)),
        ("the environment", _named(env)),
        ("the command line", {k: v for k, v in (overrides or {}).items() if v is not None}),
    ]
    values: dict[str, Any] = {}
    if "chat" in data:
        values["chat_destinations"] = _chat_destinations(path, data["chat"], env, dotenv)
    for f in fields(Settings):
        for source, layer in layers:
            if f.name in layer:
                parse: Callable[[Any], Any] = f.metadata["parse"]
                try:
                    values[f.name] = parse(layer[f.name])
                except ValueError as exc:
                    raise ConfigError(f"{f.metadata['env']} (from {source}) {exc}: "
                                      f"fix its value.") from None
    settings = Settings(**values)
    validate(settings)
    return settings


def _chat_destinations(path: Path | None, chat: Any, env: Mapping[str, str],
                       dotenv: Mapping[str, str]) -> tuple[ChatDestination, ...]:
    """The ``[chat.<name>]`` tables; their ``*_env`` keys read the environment, then
    .env, as the settings are."""
    from .channels.routes import parse_destinations
    from .events.types import EVENT_TYPES

    try:
        return parse_destinations(chat, lambda name: env.get(name) or dotenv.get(name),
                                  event_types=EVENT_TYPES)
    except ConfigError as exc:
        raise ConfigError(f"The config file {path}: {exc}") from None


def _header_address_problem(value: str) -> str | None:
    """Why an address setting cannot go into a header as it is, or None. Its display name
    may be RFC 2047 encoded (a non-ASCII name in a .env file): what it decodes to counts."""
    pairs = getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        return "must hold exactly one address"
    name, address = pairs[0]
    try:
        decoded = str(make_header(decode_header(name)))
    except (ValueError, LookupError):
        return "has a display name that does not decode"
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
           for ch in decoded + address):
        return "holds a control character or a line break"
    if problem := address_problem(address):
        return f"is {problem}"
    return None


def validate(settings: Settings) -> None:
    """Cross-field checks; each failure names the key and the fix."""
    if settings.debug and not settings.development_email:
        raise ConfigError("DEBUG is on but DEVELOPMENT_EMAIL is not set: set DEVELOPMENT_EMAIL "
                          "to the address that receives every email in debug mode, "
                          "or turn DEBUG off.")
    if settings.email_use_tls and settings.email_use_ssl:
        raise ConfigError("EMAIL_USE_TLS and EMAIL_USE_SSL are both on: use EMAIL_USE_TLS with "
                          "port 587 (STARTTLS) or EMAIL_USE_SSL with port 465, not both.")
    if not settings.site_url.startswith(("http://", "https://")):
        raise ConfigError(f"SITE_URL must start with http:// or https://, got "
                          f"{settings.site_url!r}: set the web app's address, e.g. "
                          "https://helpdesk.example.com.")
    object.__setattr__(settings, "site_url", settings.site_url.rstrip("/"))
    if not settings.site_url.isprintable() or any(ch.isspace() for ch in settings.site_url):
        raise ConfigError("SITE_URL holds a space or a control character: set the web app's "
                          "address alone, e.g. https://helpdesk.example.com.")
    if "@" not in settings.default_from_email:
        raise ConfigError("DEFAULT_FROM_EMAIL must be an email address: set it, e.g. "
                          "'Help Desk <helpdesk@example.com>'.")
    for name in ("default_from_email", "reply_to_email", "development_email"):
        value = getattr(settings, name)
        if value and (problem := _header_address_problem(value)):
            raise ConfigError(f"{ENV_NAMES[name]} {problem}: fix its value, e.g. "
                              "'Help Desk <helpdesk@example.com>'.")
    for name in ("email_port", "batch_size", "lease_seconds", "max_attempts", "max_claims",
                 "smtp_connections",
                 "send_interval_seconds", "inbound_max_bytes", "http_connections",
                 "fetch_interval_seconds"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{ENV_NAMES[name]} must be at least 1: fix its value.")
    if settings.email_timeout <= 0:
        raise ConfigError("EMAIL_TIMEOUT must be a positive number of seconds: fix its value.")
    if settings.rate_per_second < 0 or settings.rate_per_hour < 0:
        raise ConfigError("ITSM_RATE_PER_SECOND and ITSM_RATE_PER_HOUR cannot be negative: "
                          "use 0 for no limit.")
    if not settings.inbound_done_folder or not settings.inbound_failed_folder or (
            settings.inbound_done_folder == settings.inbound_failed_folder):
        raise ConfigError("ITSM_INBOUND_DONE_FOLDER and ITSM_INBOUND_FAILED_FOLDER must be two "
                          "different folder names: fix their values.")
    _validate_inbound_addresses(settings)
    if settings.inbound_queue and settings.source != "django-helpdesk":
        raise ConfigError(f"ITSM_INBOUND_QUEUE names a django-helpdesk queue, but ITSM_SOURCE "
                          f"is {settings.source!r}: unset ITSM_INBOUND_QUEUE, or set "
                          f"ITSM_SOURCE=django-helpdesk.")
    if settings.overdue_realert_hours < 0:
        raise ConfigError("ITSM_OVERDUE_REALERT_HOURS cannot be negative: use 0 to alert on "
                          "every scan.")
    _validate_timing(settings)
    _validate_http_backend(settings)


BOUNCE_LOCAL_PART_MAX = 17
"""The longest local part of ITSM_BOUNCE_ADDRESS: its VERP form adds ``+``, an event id
(up to 12 digits), ``.``, 16 hex, ``.`` and a 16-character MAC, and RFC 5321 allows a
local part 64 characters."""


def _validate_inbound_addresses(settings: Settings) -> None:
    """ITSM_BOUNCE_ADDRESS: a bare address with a short local part, signed with
    SECRET_KEY; ITSM_INBOUND_ADDRESSES: bare addresses."""
    bounce = settings.bounce_address
    if bounce is not None:
        if address_problem(bounce) or "<" in bounce:
            raise ConfigError(f"ITSM_BOUNCE_ADDRESS must be one bare address such as "
                              f"bounces@helpdesk.example.com, got {bounce!r}: fix its value.")
        if len(bounce.rpartition("@")[0]) > BOUNCE_LOCAL_PART_MAX or "+" in bounce:
            raise ConfigError(f"ITSM_BOUNCE_ADDRESS {bounce!r} needs a local part of at most "
                              f"{BOUNCE_LOCAL_PART_MAX} characters without '+' (each email "
                              "adds a signed tag to it): use e.g. bounces@helpdesk.example.com.")
        if not settings.secret_key:
            raise ConfigError("ITSM_BOUNCE_ADDRESS is set but SECRET_KEY is not: set SECRET_KEY "
                              "(the bounce addresses are signed with it), or unset "
                              "ITSM_BOUNCE_ADDRESS.")
    for address in settings.inbound_addresses:
        if problem := address_problem(address):
            raise ConfigError(f"ITSM_INBOUND_ADDRESSES has {address!r}, {problem}: list bare "
                              "addresses separated by commas.")


def _validate_timing(settings: Settings) -> None:
    """The time zone, the business hours and the due-soon thresholds parse (each error
    names its setting); the holidays file is read here, once. Nothing to read when none
    is set."""
    from .compose.i18n import language_code

    if language_code(settings.default_locale) is None:
        raise ConfigError(f"ITSM_DEFAULT_LOCALE must be a language code such as en, de or "
                          f"pt-BR, got {settings.default_locale!r}: fix its value.")
    if settings.time_zone:
        from .timing.business_hours import parse_time_zone

        parse_time_zone(settings.time_zone, "ITSM_TIME_ZONE")
    if settings.due_soon or settings.business_hours or settings.holidays:
        settings.due_soon_thresholds  # noqa: B018 (parsed now, with the calendar, or refused)


_API_KEYS = {"sendgrid": ("sendgrid_api_key", "the API key SendGrid gave you (Settings > API "
                          "Keys, with Mail Send access)"),
             "postmark": ("postmark_server_token", "the Server API token of your Postmark "
                          "server (its API Tokens tab)"),
             "mailgun": ("mailgun_api_key", "your Mailgun sending API key")}


def _validate_http_backend(settings: Settings) -> None:
    """An HTTP email backend needs its key; every provider URL must be http(s)."""
    for name in ("sendgrid_api_url", "postmark_api_url", "mailgun_api_url",
                 "aws_endpoint_url_sesv2"):
        url = getattr(settings, name)
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{ENV_NAMES[name]} must start with https:// (or http:// for a "
                              f"local test server), got {url!r}: fix its value.")
    backend = settings.email_backend
    if backend in _API_KEYS:
        key, what = _API_KEYS[backend]
        if not getattr(settings, key):
            raise ConfigError(f"EMAIL_BACKEND is {backend} but {ENV_NAMES[key]} is not set: set "
                              f"it to {what}, preferably in the environment.")
    if backend == "mailgun" and settings.mailgun_sender_domain is not None \
            and "/" in settings.mailgun_sender_domain:
        raise ConfigError("MAILGUN_SENDER_DOMAIN must be a domain name such as mg.example.com, "
                          f"got {settings.mailgun_sender_domain!r}: fix its value.")
    pair = (bool(settings.aws_access_key_id), bool(settings.aws_secret_access_key))
    if backend == "ses" and pair[0] != pair[1]:
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both, or "
                          "neither to use the AWS credential chain (profile, SSO, instance role).")
