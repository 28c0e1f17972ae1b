"""``itsm-notify test-channel NAME``: post one test message to a chat destination and
show each step, as ``test-email`` does for email.

The webhook's URL is a secret: only its scheme and host are shown. A destination that
was disabled (its webhook answered that it is gone) and now takes the message is
enabled again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from sqlalchemy import Engine

from ..channels.base import Outcome, RateLimiter
from ..channels.chat import ChatOutgoing, ChatTransport, body_for, delivery_id, test_message
from ..channels.routes import ChatDestination
from ..config import Settings
from ..errors import ConfigError
from ..states import DeliveryState
from ..storage.database import describe_exception
from ..storage.destinations import enable_destination
from .diagnostics import ProbeResult, Step

KIND_NAMES = {"slack": "Slack incoming webhook", "teams": "Teams Workflows webhook",
              "mattermost": "Mattermost incoming webhook",
              "rocketchat": "Rocket.Chat incoming webhook", "webhook": "signed JSON webhook"}


def find_destination(settings: Settings, name: str) -> ChatDestination:
    """The configured destination ``name``; ConfigError naming the ones there are."""
    for destination in settings.chat_destinations:
        if destination.name == name:
            return destination
    known = ", ".join(d.name for d in settings.chat_destinations)
    if not known:
        raise ConfigError("No chat destination is configured: add a [chat.<name>] table to "
                          "the config file (see config.example.toml).")
    raise ConfigError(f"There is no chat destination {name!r}: the config file has {known}.")


def _shown(url: str) -> str:
    """The URL without what makes it a secret (its path and query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…"


def _hint(destination: ChatDestination, gone: bool, status: DeliveryState) -> str:
    if gone:
        return ("the webhook is gone (deleted, or its channel archived): make a new one "
                f"and give chat.{destination.name} its URL")
    if status == DeliveryState.DEFERRED:
        return ("the destination could not take it now (unreachable, too slow, or busy): "
                f"check the network, or raise chat.{destination.name}.timeout")
    if destination.kind == "webhook":
        return "check the receiver's signing secret (secret_env) and the URL"
    return "check the URL: copy it again from the channel's webhook settings"


def send_test_message(settings: Settings, name: str, *, engine: Engine | None = None,
                      on_step: Callable[[Step], None] | None = None) -> ProbeResult:
    """Post the test message to ``name``, reporting each step to ``on_step``."""
    result = ProbeResult()

    def step(name: str, ok: bool, seconds: float, detail: str) -> None:
        done = Step(name, ok, seconds, detail)
        result.steps.append(done)
        if on_step is not None:
            on_step(done)

    destination = find_destination(settings, name)
    step(f"destination {name}", True, 0.0,
         f"{KIND_NAMES[destination.kind]} at {_shown(destination.url)}")
    message = test_message(settings.site_name, settings.site_url)
    started = time.perf_counter()
    body = body_for(destination, message, delivery_id("test", name))
    step("build the message", True, time.perf_counter() - started, f"{len(body)} bytes of JSON")
    transport = ChatTransport(connections=1)
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    try:
        transport.deliver([ChatOutgoing(key=name, destination=destination, message=message,
                                        delivery_id=delivery_id("test", name))],
                          RateLimiter(), outcomes.append)
    finally:
        transport.close()
    [outcome] = outcomes
    seconds = time.perf_counter() - started
    if outcome.status != DeliveryState.SENT:
        step("POST", False, seconds, outcome.detail)
        result.failed_step, result.reply = "POST", outcome.detail
        result.hint = _hint(destination, outcome.destination_gone, outcome.status)
        return result
    step("POST", True, seconds, outcome.detail)
    if engine is not None:
        started = time.perf_counter()
        try:
            if enable_destination(engine, name):
                step("enable", True, time.perf_counter() - started,
                     "it had been disabled; it gets messages again")
        except Exception as exc:  # the message went out; only the bookkeeping is left
            reply = f"the database could not be read ({describe_exception(exc)})"
            step("enable", False, time.perf_counter() - started, reply)
            result.failed_step, result.reply = "enable", reply
            result.hint = ("the message went out, but whether the destination was disabled is "
                           "unknown: run test-channel again once the database is reachable "
                           "(itsm-notify db upgrade, if it asks for it)")
    return result
