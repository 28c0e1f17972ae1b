"""Chat destinations: the ``[chat.<name>]`` tables of the config file, and which of them
an event goes to.

    [chat.ops]
    kind = "teams"            # slack | teams | mattermost | rocketchat | webhook
    url_env = "TEAMS_OPS_URL" # or url = "..." (the URL is a secret: never printed)
    events = ["ticket_created", "status_changed"]   # default: every event type
    priorities = ["critical"]                         # default: every priority
    projects = ["Network"]                            # project (queue) names; default: all
    secret_env = "OPS_WEBHOOK_SECRET"                # kind = "webhook" only (required)
    rate_per_second = 1       # at most this many messages a second (default: 1 for slack)
    timeout = 10              # seconds to wait for the destination
    debug = true              # in debug mode, only destinations marked so get messages

A filter left out matches everything; priorities and projects match without regard to
case. ``url_env`` and ``secret_env`` are read from the environment, then ``.env``, as
the settings are (``load_settings`` parses the tables into ``chat_destinations``).
Every mistake is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Secret
from ..errors import ConfigError

KINDS = ("slack", "teams", "mattermost", "rocketchat", "webhook")
KEYS = frozenset({"kind", "url", "url_env", "events", "priorities", "projects", "secret",
                  "secret_env", "rate_per_second", "timeout", "debug"})
DEFAULT_TIMEOUT = 10.0
SLACK_RATE_PER_SECOND = 1.0
"""Slack allows an incoming webhook about one message a second."""


@dataclass(frozen=True)
class ChatDestination:
    """One place chat messages go. ``None`` for a filter: everything matches."""

    name: str
    kind: str
    url: Secret = field(repr=False)
    events: frozenset[str] | None = None
    priorities: frozenset[str] | None = None
    """Casefolded."""
    projects: frozenset[str] | None = None
    """Casefolded."""
    secret: Secret | None = field(default=None, repr=False)
    """The HMAC key of a ``webhook`` destination."""
    rate_per_second: float = 0.0
    timeout: float = DEFAULT_TIMEOUT
    debug: bool = False

    def matches(self, event_type: str, priorities: Iterable[str],
                project_name: str | None) -> bool:
        """Whether an event goes here; ``priorities`` are the ticket's priority as
        stored and as labelled (``1`` and ``1. Critical``): either may be named."""
        if self.events is not None and event_type not in self.events:
            return False
        if self.priorities is not None and \
                not {p.casefold() for p in priorities} & self.priorities:
            return False
        return self.projects is None or (project_name or "").casefold() in self.projects


def destinations_for(event_type: str, priorities: Iterable[str], project_name: str | None,
                     destinations: Iterable[ChatDestination], *,
                     debug: bool = False) -> list[ChatDestination]:
    """The destinations an event goes to, in configuration order. In debug mode only
    those marked ``debug = true`` (as email goes only to DEVELOPMENT_EMAIL)."""
    wanted = tuple(priorities)
    return [d for d in destinations if (d.debug or not debug)
            and d.matches(event_type, wanted, project_name)]


# --------------------------------------------------------------------- parsing


def _where(name: str, key: str | None = None) -> str:
    return f"chat.{name}.{key}" if key else f"[chat.{name}]"


def _strings(name: str, key: str, value: Any, known: Collection[str] | None = None
             ) -> frozenset[str]:
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{_where(name, key)} must be a non-empty list of names, e.g. "
                          f'{key} = ["{next(iter(known or ["..."]))}"]; leave it out to match '
                          "everything.")
    if known is not None:
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(f"{_where(name, key)} has {unknown[0]!r}, which is not one of "
                              f"{', '.join(sorted(known))}: fix the name.")
    return frozenset(v.strip().casefold() if known is None else v for v in value)


def _secret(name: str, table: Mapping[str, Any], key: str,
            lookup: Callable[[str], str | None], what: str) -> Secret | None:
    """``key`` given inline, or ``key_env`` naming a variable; not both."""
    inline, env_key = table.get(key), table.get(f"{key}_env")
    if inline is not None and env_key is not None:
        raise ConfigError(f"{_where(name)} has both {key} and {key}_env: keep one (prefer "
                          f"{key}_env, so the {what} stays out of the file).")
    if env_key is not None:
        if not isinstance(env_key, str) or not env_key.strip():
            raise ConfigError(f"{_where(name, key + '_env')} must name an environment variable.")
        value = lookup(env_key.strip())
        if not value:
            raise ConfigError(f"{_where(name, key + '_env')} names {env_key.strip()}, which is "
                              f"not set: set it to the {what} (in the environment or .env).")
        return Secret(value.strip())
    if inline is not None:
        if not isinstance(inline, str) or not inline.strip():
            raise ConfigError(f"{_where(name, key)} must be the {what} as a string.")
        return Secret(inline.strip())
    return None


def _number(name: str, table: Mapping[str, Any], key: str, default: float, *,
            positive: bool) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
            or (positive and value == 0):
        bound = "a positive number" if positive else "a number, 0 or more"
        raise ConfigError(f"{_where(name, key)} must be {bound}: fix its value.")
    return float(value)


def parse_destination(name: str, table: Any, lookup: Callable[[str], str | None], *,
                      event_types: Collection[str] | None = None) -> ChatDestination:
    """One ``[chat.<name>]`` table; ``lookup`` reads a variable named by ``*_env``."""
    if not isinstance(table, dict):
        raise ConfigError(f"chat.{name} must be a table ([chat.{name}] with kind and url_env).")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"{_where(name)} has unknown key {unknown[0]!r}: the keys are "
                          f"{', '.join(sorted(KEYS))}.")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{_where(name, 'kind')} must be one of {', '.join(KINDS)}, got "
                          f"{kind!r}: fix its value.")
    url = _secret(name, table, "url", lookup, "webhook's URL")
    if url is None:
        raise ConfigError(f"{_where(name)} has no URL: add url_env = \"VARIABLE\" naming the "
                          "environment variable that holds the webhook's URL.")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{_where(name)}'s URL must start with https://: fix it (it is not "
                          "shown here, being a secret).")
    secret = _secret(name, table, "secret", lookup, "signing secret")
    if kind == "webhook" and secret is None:
        raise ConfigError(f"{_where(name)} is a webhook without a signing secret: add "
                          "secret_env naming the variable that holds it (receivers check the "
                          "signature with it).")
    if kind != "webhook" and secret is not None:
        raise ConfigError(f"{_where(name)} has a secret, which only kind = \"webhook\" uses: "
                          "remove it.")
    debug = table.get("debug", False)
    if not isinstance(debug, bool):
        raise ConfigError(f"{_where(name, 'debug')} must be true or false.")
    default_rate = SLACK_RATE_PER_SECOND if kind == "slack" else 0.0
    return ChatDestination(
        name=name, kind=kind, url=url, secret=secret, debug=debug,
        events=_strings(name, "events", table["events"], event_types)
        if "events" in table else None,
        priorities=_strings(name, "priorities", table["priorities"])
        if "priorities" in table else None,
        projects=_strings(name, "projects", table["projects"]) if "projects" in table else None,
        rate_per_second=_number(name, table, "rate_per_second", default_rate, positive=False),
        timeout=_number(name, table, "timeout", DEFAULT_TIMEOUT, positive=True))


def parse_destinations(chat: Any, lookup: Callable[[str], str | None], *,
                       event_types: Collection[str] | None = None
                       ) -> tuple[ChatDestination, ...]:
    """Every ``[chat.<name>]`` table of a config file's ``chat`` table, in order."""
    if not isinstance(chat, dict):
        raise ConfigError("chat must hold tables, one per destination: [chat.<name>].")
    return tuple(parse_destination(name, table, lookup, event_types=event_types)
                 for name, table in chat.items())
