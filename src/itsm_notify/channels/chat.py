"""Chat messages: Slack, Microsoft Teams (Workflows), Mattermost, Rocket.Chat, and a
signed JSON webhook.

A ``ChatMessage`` says what happened in neutral terms; each kind has a function that
turns it into the JSON its incoming webhook takes:

* **Slack**: Block Kit sections in ``mrkdwn``, and a ``text`` fallback for
  notifications. Ticket text has ``&``, ``<`` and ``>`` escaped as Slack requires, so
  it can hold no ``<!channel>``, ``<@U123>`` or ``<http://evil|click>``.
* **Teams**: an Adaptive Card (1.4) in the ``attachments`` envelope that a Workflows
  flow ("Post to a channel when a webhook request is received") posts; not the retired
  Office 365 connector MessageCard. Ticket text goes only in ``TextRun``s, which Teams
  shows as plain text (no Markdown, no links; a mention needs an entity, never sent).
* **Mattermost**: Markdown, ASCII punctuation backslash-escaped (CommonMark), so
  ``[x](y)``, ``<http://…>`` or ``# …`` stay text.
* **Rocket.Chat**: its Markdown, where a zero-width space breaks what would become a
  link (``[x]\u200b(y)``, ``<\u200bhttp://…|…>``); its parser has no escapes.
* **webhook**: the fields as JSON, unchanged, signed (``signing.py``).

In every text format an ``@`` that does not follow a letter or digit (``@channel``,
``@here``, ``@all``, ``@everyone``, ``@alice``) becomes the full-width ``＠``, which no
chat reads as a mention; ``bob@example.com`` is left alone. Ticket text is put on one line (control
and format characters removed) and cut to a length, so it cannot add lines either.
The JSON is always made by ``json.dumps``: no text can break its structure.

``ChatTransport`` posts each ``ChatOutgoing`` to its destination, the messages to one
destination one at a time and in order (different destinations in parallel), at most
``rate_per_second`` a second each; answers map to the transports' outcomes
(``http.py``), plus: 404 and 410 (and Slack's ``no_service``, ``channel_is_archived``
...) say the webhook is gone (``Outcome.destination_gone``); Slack's error codes come
as the body, even with a 200.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ..states import DeliveryState
from . import signing
from .base import RATE_LIMITED, Answered, Outcome, RateLimiter
from .http import (
    Endpoint,
    Exchange,
    Judgement,
    Verdict,
    default_verdict,
    error_text,
    json_body,
    make_client,
    one_line,
    retry_after_seconds,
    run_workers,
    unexpected,
    untried,
)
from .routes import ChatDestination

EVENT_LABELS = {"ticket_created": "New ticket", "ticket_assigned": "Ticket assigned",
                "status_changed": "Status changed", "comment_added": "New comment",
                "overdue": "Overdue", "test": "Test message"}
LIMITS = {"title": 200, "summary": 500, "actor_name": 100, "priority": 40, "status": 60,
          "ticket_number": 40, "site_name": 100}
"""Characters of each field a chat message shows (a Slack section holds 3,000)."""


@dataclass(frozen=True)
class ChatMessage:
    """What a chat message says, before any format."""

    event_type: str
    ticket_number: str
    title: str
    priority: str
    status: str
    actor_name: str
    summary: str
    """One line: what happened (a comment's first words, the new status, ...)."""
    link: str
    """The ticket's absolute URL (SITE_URL + /tickets/<id>/)."""
    site_name: str

    @property
    def label(self) -> str:
        return EVENT_LABELS.get(self.event_type, self.event_type.replace("_", " ").capitalize())


def test_message(site_name: str, site_url: str) -> ChatMessage:
    """What ``test-channel`` sends."""
    return ChatMessage(event_type="test", ticket_number="TEST", title="Test message",
                       priority="-", status="-", actor_name="itsm-notify",
                       summary=f"Chat notifications from {site_name} reach this channel.",
                       link=site_url, site_name=site_name)


# -------------------------------------------------------------------- escaping

_DROPPED = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_MENTION = re.compile(r"(?<!\w)@")
FULLWIDTH_AT = "\uff20"
ZWSP = "\u200b"
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-?\[-`{-~])")
"""ASCII punctuation, which CommonMark lets a backslash escape, but ``@``: not Markdown,
and a mention parser might not read ``\\@`` as escaped (``defuse_mentions`` sees to
it)."""


def plain_line(text: str, limit: int) -> str:
    """``text`` on one line: control, format and separator characters (bidi overrides,
    zero-width ones included) out, white space collapsed, cut to ``limit``."""
    kept = "".join(" " if unicodedata.category(ch) in _DROPPED else ch for ch in text)
    return one_line(kept, limit)


def defuse_mentions(text: str) -> str:
    """An ``@`` that does not follow a letter or digit becomes ``＠``: no chat reads a
    mention in ``＠channel``, whatever comes after it (even a format's own ``_``)."""
    return _MENTION.sub(FULLWIDTH_AT, text)


def _slack_entities(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(text: str) -> str:
    """Text for Slack ``mrkdwn`` (``&``, ``<``, ``>`` as Slack's entities)."""
    return defuse_mentions(_slack_entities(text))


def mattermost_text(text: str) -> str:
    """Text for Mattermost's Markdown: ASCII punctuation (but ``@``) backslash-escaped."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", defuse_mentions(text))


def rocketchat_text(text: str) -> str:
    """Text for Rocket.Chat's Markdown: a zero-width space after ``]`` and ``<``, so no
    ``[label](url)`` or ``<url|label>`` forms, and no mention."""
    return defuse_mentions(text.replace("]", "]" + ZWSP).replace("<", "<" + ZWSP))


def teams_text(text: str) -> str:
    """Text for a Teams ``TextRun`` (plain text): only Adaptive Cards' ``{{DATE(…)}}``
    functions are broken, and mentions defused."""
    return defuse_mentions(text.replace("{{", "{" + ZWSP + "{"))


def safe_link(url: str) -> str | None:
    """The ticket link if it is an http(s) URL, with the characters that would end it
    early in a format (space, quotes, ``<>|()``) percent-encoded; else None."""
    if not url.startswith(("https://", "http://")) or any(ch.isspace() for ch in url):
        return None
    for ch in '<>|()"\'':
        url = url.replace(ch, f"%{ord(ch):02X}")
    return url


def _fields(message: ChatMessage) -> dict[str, str]:
    return {name: plain_line(getattr(message, name), limit) for name, limit in LIMITS.items()}


# --------------------------------------------------------------------- formats


def slack_payload(message: ChatMessage) -> dict[str, Any]:
    f = {k: slack_text(v) for k, v in _fields(message).items()}
    link = safe_link(message.link)
    ticket = f"<{_slack_entities(link)}|{f['ticket_number']}>" if link else f["ticket_number"]
    headline = f"*{slack_text(message.label)}* · {ticket}: {f['title']}"
    details = (f"*Priority:* {f['priority']} · *Status:* {f['status']} · "
               f"*By:* {f['actor_name']}")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": details}]}]
    if f["summary"]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f["summary"]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f["site_name"]}]})
    return {"text": f"{slack_text(message.label)}: {f['ticket_number']} {f['title']}",
            "blocks": blocks, "unfurl_links": False, "unfurl_media": False}


def _run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextRun", "text": text, **style}


def teams_payload(message: ChatMessage) -> dict[str, Any]:
    f = {k: teams_text(v) for k, v in _fields(message).items()}
    body: list[dict[str, Any]] = [
        {"type": "RichTextBlock", "inlines": [
            _run(f"{message.label} · ", weight="Bolder"), _run(f["ticket_number"],
                                                               weight="Bolder")]},
        {"type": "RichTextBlock", "inlines": [_run(f["title"], size="Medium", weight="Bolder")]},
        {"type": "RichTextBlock", "inlines": [
            _run("Priority: ", weight="Bolder"), _run(f["priority"]),
            _run("   Status: ", weight="Bolder"), _run(f["status"]),
            _run("   By: ", weight="Bolder"), _run(f["actor_name"])]}]
    if f["summary"]:
        body.append({"type": "RichTextBlock", "inlines": [_run(f["summary"])]})
    body.append({"type": "RichTextBlock",
                 "inlines": [_run(f["site_name"], isSubtle=True, size="Small")]})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard", "version": "1.4", "body": body, "msteams": {"width": "Full"}}
    if link := safe_link(message.link):
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open ticket", "url": link}]
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
        "content": card}]}


def _markdown(message: ChatMessage, escape: Callable[[str], str], bold: str) -> str:
    f = {k: escape(v) for k, v in _fields(message).items()}
    link = safe_link(message.link)
    ticket = f"[{f['ticket_number']}]({link})" if link else f["ticket_number"]
    lines = [f"{bold}{escape(message.label)}{bold} · {ticket}: {f['title']}",
             f"{bold}Priority:{bold} {f['priority']} · {bold}Status:{bold} {f['status']} · "
             f"{bold}By:{bold} {f['actor_name']}"]
    if f["summary"]:
        lines.append(f["summary"])
    lines.append(f"_{f['site_name']}_")
    return "\n".join(lines)


def mattermost_payload(message: ChatMessage) -> dict[str, Any]:
    return {"text": _markdown(message, mattermost_text, "**")}


def rocketchat_payload(message: ChatMessage) -> dict[str, Any]:
    return {"text": _markdown(message, rocketchat_text, "*")}


def webhook_payload(message: ChatMessage, delivery_id: str) -> dict[str, Any]:
    """The generic webhook's JSON: the fields as they are (the receiver is a program)."""
    return {"id": delivery_id, "type": message.event_type, "site": message.site_name,
            "ticket": {"number": message.ticket_number, "title": message.title,
                       "priority": message.priority, "status": message.status,
                       "url": message.link},
            "actor": {"name": message.actor_name}, "summary": message.summary}


FORMATS: dict[str, Callable[[ChatMessage], dict[str, Any]]] = {
    "slack": slack_payload, "teams": teams_payload, "mattermost": mattermost_payload,
    "rocketchat": rocketchat_payload}


def body_for(destination: ChatDestination, message: ChatMessage, delivery_id: str) -> bytes:
    payload = webhook_payload(message, delivery_id) if destination.kind == "webhook" \
        else FORMATS[destination.kind](message)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def delivery_id(event_id: int | str, destination: str) -> str:
    """A stable id for (event, destination): the same on every retry (the webhook's
    idempotency key)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"itsm-notify:{event_id}:{destination}"))


# --------------------------------------------------------------------- answers

SLACK_GONE = frozenset({"no_service", "no_service_id", "no_team", "team_disabled",
                        "channel_not_found", "channel_is_archived", "invalid_token"})
"""Slack's incoming-webhook errors that say the webhook (or its channel) is gone."""
_SLACK_CODE = re.compile(r"[a-z_]{2,60}")


def judge_chat(kind: str, response: httpx.Response) -> Judgement:
    """An incoming webhook's answer. Slack answers ``ok``, or an error code as the body
    (with 400, 403, 404, 410, or even 200); Teams Workflows 202 with no body; Rocket.Chat
    ``{"success": false, "error"}`` on failure; the rest by status."""
    status = response.status_code
    retry = retry_after_seconds(response.headers.get("Retry-After"))
    verdict = default_verdict(status)
    reason = error_text(response)
    if kind == "slack":
        code = response.text.strip()
        if _SLACK_CODE.fullmatch(code) and code != "ok":
            reason = f"{status} {code}"
            if code in SLACK_GONE:
                return Judgement(Verdict.GONE, reason)
            if code == "rate_limited" or status == 429:
                return Judgement(Verdict.THROTTLED, reason, retry_after=retry)
            if verdict is Verdict.ACCEPTED:
                return Judgement(Verdict.REJECTED, reason)
    if kind == "rocketchat" and verdict is Verdict.ACCEPTED:
        body = json_body(response)
        if isinstance(body, dict) and body.get("success") is False:
            return Judgement(Verdict.REJECTED, reason)
    if verdict is Verdict.ACCEPTED:
        run_id = response.headers.get("x-ms-workflow-run-id")  # Teams Workflows' run
        return Judgement(verdict, f"{status} accepted", run_id)
    if status in (404, 410):
        return Judgement(Verdict.GONE, reason)
    if verdict is Verdict.CONFIGURATION:  # a destination's own refusal fails its message
        return Judgement(Verdict.REJECTED, f"{reason}: the webhook refused the request "
                         "(its URL revoked, or the signature secret wrong)")
    return Judgement(verdict, reason, retry_after=retry)


# ------------------------------------------------------------------- transport


@dataclass(frozen=True)
class ChatOutgoing:
    """One chat message for one destination."""

    key: Hashable
    destination: ChatDestination
    message: ChatMessage
    delivery_id: str
    """Stable across retries (``delivery_id(event_id, name)``): the webhook's
    idempotency key."""


class _Turns:
    """The messages to one destination go one at a time, in the order they came."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0
        self._serving = 0

    def ticket(self) -> int:
        self._issued += 1  # only ever called by the workers' feed, under its lock
        return self._issued - 1

    @contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._changed:
                self._serving += 1
                self._changed.notify_all()


class _Destination:
    """A destination as one ``deliver`` call sees it."""

    def __init__(self, destination: ChatDestination, client: httpx.Client) -> None:
        self.config = destination
        self.endpoint = Endpoint(f"chat destination {destination.name!r}")
        self.exchange = Exchange(client, timeout=destination.timeout,
                                 timeout_setting=f"chat.{destination.name}.timeout")
        self.pacer = RateLimiter(per_second=destination.rate_per_second)
        self.turns = _Turns()


class ChatTransport:
    """Posts chat messages, up to ``connections`` at a time over one pooled client.

    ``gave_up`` stays None: a destination that cannot be reached is given up for the
    run alone (its messages deferred without using up a retry; ``unreachable`` says
    why), and the other destinations, and email, go on."""

    name = "chat"
    gave_up: str | None = None

    def __init__(self, *, connections: int = 4, client: httpx.Client | None = None) -> None:
        self.connections = connections
        self.client = client or make_client(connections, timeout=60.0)
        self._destinations: dict[str, _Destination] = {}

    @property
    def unreachable(self) -> dict[str, str]:
        """Destination name → why it was given up in the last ``deliver``."""
        return {name: d.endpoint.gave_up for name, d in self._destinations.items()
                if d.endpoint.gave_up}

    def deliver(self, messages: Iterable[ChatOutgoing], limiter: RateLimiter,
                answered: Answered) -> None:
        self._destinations = {}
        run_workers(self._numbered(messages), self.connections,
                    lambda item: self._handle(*item, limiter), answered, name="itsm-notify-chat")

    def _numbered(self, messages: Iterable[ChatOutgoing]
                  ) -> Iterator[tuple[ChatOutgoing, _Destination, int]]:
        """Each message with its destination's state and its place in that queue (run
        under the workers' feed lock, so places follow the order of ``messages``)."""
        for out in messages:
            name = out.destination.name
            if name not in self._destinations:
                self._destinations[name] = _Destination(out.destination, self.client)
            state = self._destinations[name]
            yield out, state, state.turns.ticket()

    def _handle(self, out: ChatOutgoing, state: _Destination, ticket: int,
                limiter: RateLimiter) -> Outcome:
        with state.turns.turn(ticket):
            try:
                if state.endpoint.gave_up:
                    return untried(out.key, state.endpoint)
                if not limiter.acquire():
                    return Outcome(out.key, DeliveryState.DEFERRED, detail=RATE_LIMITED,
                                   counts_as_attempt=False)
                state.pacer.acquire()
                return state.exchange.send(out.key, state.endpoint,
                                           lambda: self._request(out),
                                           lambda response: judge_chat(out.destination.kind,
                                                                       response))
            except Exception as exc:  # a bug must not lose the message
                return unexpected(out.key, exc)

    def _request(self, out: ChatOutgoing) -> httpx.Request:
        destination = out.destination
        body = body_for(destination, out.message, out.delivery_id)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if destination.kind == "webhook" and destination.secret:
            headers |= signing.sign(destination.secret, body, delivery_id=out.delivery_id)
        return self.client.build_request("POST", destination.url, content=body,
                                         headers=headers, timeout=destination.timeout)

    def close(self) -> None:
        self.client.close()
