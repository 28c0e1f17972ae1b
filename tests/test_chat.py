"""Chat channels: the destinations of the config file, the five formats under hostile
ticket text, and ChatTransport against loopback servers that answer as Slack, Teams
Workflows, Mattermost, Rocket.Chat and a signature-checking webhook receiver do."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from http_fakes import (
    MattermostFake,
    Reply,
    RocketChatFake,
    SlackFake,
    TeamsFake,
    WebhookReceiver,
)
from itsm_notify.channels import signing
from itsm_notify.channels.base import Outcome, RateLimiter
from itsm_notify.channels.chat import (
    FULLWIDTH_AT,
    ZWSP,
    ChatMessage,
    ChatOutgoing,
    ChatTransport,
    body_for,
    delivery_id,
    mattermost_payload,
    mattermost_text,
    plain_line,
    rocketchat_payload,
    rocketchat_text,
    slack_payload,
    slack_text,
    teams_payload,
    teams_text,
    webhook_payload,
)
from itsm_notify.channels.routes import (
    ChatDestination,
    destinations_for,
)
from itsm_notify.config import Secret, load_settings
from itsm_notify.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

LINK = "https://helpdesk.example.com/tickets/7/"
MESSAGE = ChatMessage(event_type="ticket_created", ticket_number="TKT-007",
                      title="Core switch down in building B", priority="critical",
                      status="open", actor_name="Alice Smith",
                      summary="Nothing on floor 2 reaches the network.", link=LINK,
                      site_name="Example Help Desk")
SECRET = "whsec-test-0123456789"


# ---------------------------------------------------------------- destinations


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_one_block_routes_critical_network_tickets_to_teams(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
site_name = "Example Help Desk"

[chat.ops]
kind = "teams"
url_env = "TEAMS_OPS_URL"
events = ["ticket_created", "status_changed"]
priorities = ["Critical"]
projects = ["Network"]

[chat.audit]
kind = "webhook"
url = "https://audit.example.com/hook"
secret_env = "AUDIT_SECRET"
debug = true
""")
    environ = {"TEAMS_OPS_URL": "https://prod.westeurope.logic.azure.com/workflows/x?sig=abc",
               "AUDIT_SECRET": SECRET}
    settings = load_settings(config_path=path, environ=environ, dotenv_path=None)
    ops, audit = settings.chat_destinations
    assert (ops.name, ops.kind, ops.url) == ("ops", "teams", environ["TEAMS_OPS_URL"])
    assert ops.events == {"ticket_created", "status_changed"}
    assert ops.priorities == {"critical"} and ops.projects == {"network"}
    assert (audit.kind, audit.secret, audit.debug, audit.events) == ("webhook", SECRET, True,
                                                                     None)
    assert "sig=abc" not in repr(ops) and SECRET not in repr(audit)
    assert settings.site_name == "Example Help Desk"  # the settings, from the same file
    both = [ops, audit]
    assert destinations_for("ticket_created", ["CRITICAL"], "network", both) == both
    assert destinations_for("ticket_created", ["1", "Critical"], "network", both) == both
    assert destinations_for("ticket_created", ["high"], "Network", both) == [audit]
    assert destinations_for("comment_added", ["critical"], "Network", both) == [audit]
    assert destinations_for("ticket_created", ["critical"], None, both) == [audit]
    assert destinations_for("ticket_created", ["critical"], "Network", both,
                            debug=True) == [audit]


def test_the_url_may_come_from_dotenv(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[chat.ops]\nkind = "slack"\nurl_env = "SLACK_OPS"\n')
    (tmp_path / ".env").write_text("SLACK_OPS=https://hooks.slack.com/services/T/B/x\n")
    [ops] = load_settings(config_path=path, environ={},
                          dotenv_path=tmp_path / ".env").chat_destinations
    assert ops.url == "https://hooks.slack.com/services/T/B/x" and ops.rate_per_second == 1.0


@pytest.mark.parametrize(("table", "message"), [
    ('[chat.ops]\nkind = "team"\nurl = "https://x"\n', "chat.ops.kind must be one of slack"),
    ('[chat.ops]\nkind = "slack"\n', "[chat.ops] has no URL"),
    ('[chat.ops]\nkind = "slack"\nurl_env = "MISSING_URL"\n',
     "chat.ops.url_env names MISSING_URL, which is not set"),
    ('[chat.ops]\nkind = "slack"\nurl = "https://x"\nurl_env = "U"\n', "both url and url_env"),
    ('[chat.ops]\nkind = "slack"\nurl = "ftp://hooks.example.com/s3cr3t"\n',
     "URL must start with https://"),
    ('[chat.ops]\nkind = "slack"\nurl = "https://x"\nchannel = "#ops"\n',
     "unknown key 'channel'"),
    ('[chat.ops]\nkind = "webhook"\nurl = "https://x"\n', "webhook without a signing secret"),
    ('[chat.ops]\nkind = "slack"\nurl = "https://x"\nsecret = "s"\n',
     "only kind = \"webhook\" uses"),
    ('[chat.ops]\nkind = "slack"\nurl = "https://x"\nevents = ["ticket_create"]\n',
     "chat.ops.events has 'ticket_create'"),
    ('[chat.ops]\nkind = "slack"\nurl = "https://x"\npriorities = "critical"\n',
     "chat.ops.priorities must be a non-empty list"),
    ('[chat.ops]\nkind = "slack"\nurl = "https://x"\ntimeout = 0\n',
     "chat.ops.timeout must be a positive number"),
    ('[chat]\nops = "https://x"\n', "chat.ops must be a table"),
])
def test_a_wrong_table_is_one_sentence_naming_the_key(tmp_path: Path, table: str,
                                                      message: str) -> None:
    path = write_config(tmp_path, table)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=path, environ={}, dotenv_path=None)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_an_unknown_table_stops_the_settings_too(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[chats.ops]\nkind = "slack"\n')
    with pytest.raises(ConfigError, match=r"unknown table \[chats\]"):
        load_settings(config_path=path, environ={}, dotenv_path=None)


def test_no_config_file_no_destinations() -> None:
    assert load_settings(environ={}, dotenv_path=None).chat_destinations == ()


# --------------------------------------------------------------- hostile text

ATTACKS = ["@channel", "@here", "@everyone", "@all", "@alice", "<!channel>", "<!here>",
           "<!everyone>", "<@U123ABC>", "<#C0123|general>", "<http://evil.example|click>",
           "[click](http://evil.example)", "![x](http://evil.example/p.png)",
           "[ref]: http://evil.example", "<https://evil.example>", "**bold**", "`code`",
           "\n# Heading", "\r\n> quote", "{{DATE(2017-02-14T06:08:39Z, SHORT)}}",
           '"}]}, "x": {"', "\\", "\\[", "\u202e", "\u200b@here", "<at>Alice</at>",
           "&lt;!channel&gt;", "&amp;", "@", "]", "(", "x@here"]
hostile = st.lists(st.one_of(st.sampled_from(ATTACKS), st.text(max_size=8)),
                   max_size=6).map("".join)
MENTION = re.compile(r"(?<!\w)@")


def hostile_message(title: str, summary: str, actor: str, number: str,
                    status: str) -> ChatMessage:
    return ChatMessage(event_type="comment_added", ticket_number=number, title=title,
                       priority=status, status=status, actor_name=actor, summary=summary,
                       link=LINK, site_name=actor)


def texts(value: Any) -> list[str]:
    """Every string under a "text" key, at any depth."""
    if isinstance(value, dict):
        found = [value["text"]] if isinstance(value.get("text"), str) else []
        return found + [t for v in value.values() for t in texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in texts(v)]
    return []


def unescaped(text: str, characters: str) -> list[str]:
    """The characters of ``characters`` in Markdown ``text`` no backslash escapes."""
    found, escaped = [], False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in characters:
            found.append(ch)
    return found


hostile_fields = given(title=hostile, summary=hostile, actor=hostile, number=hostile,
                       status=hostile)


@settings(max_examples=150, deadline=None)
@hostile_fields
def test_slack_forges_no_mention_and_no_link(title: str, summary: str, actor: str,
                                             number: str, status: str) -> None:
    message = hostile_message(title, summary, actor, number, status)
    payload = json.loads(body_for(_destination("slack"), message, "id"))
    assert payload == slack_payload(message)
    assert set(payload) == {"text", "blocks", "unfurl_links", "unfurl_media"}
    for text in texts(payload):
        assert not MENTION.search(text)
        rest = re.sub(rf"<{re.escape(LINK)}\|[^<>]*>", "", text, count=1)
        assert "<" not in rest and ">" not in rest
        assert "\n" not in text


@settings(max_examples=150, deadline=None)
@hostile_fields
def test_mattermost_forges_no_mention_and_no_link(title: str, summary: str, actor: str,
                                                  number: str, status: str) -> None:
    message = hostile_message(title, summary, actor, number, status)
    payload = json.loads(body_for(_destination("mattermost"), message, "id"))
    assert payload == mattermost_payload(message) and set(payload) == {"text"}
    text = payload["text"]
    assert not MENTION.search(text)
    rest = re.sub(rf"\[(?:\\.|[^\\\[\]])*\]\({re.escape(LINK)}\)", "", text, count=1)
    assert unescaped(rest, "[]()<>!#`") == []
    lines = 4 if plain_line(summary, 500) else 3  # headline, details, summary, site
    assert len(text.split("\n")) == lines  # no line added


@settings(max_examples=150, deadline=None)
@hostile_fields
def test_rocketchat_forges_no_mention_and_no_link(title: str, summary: str, actor: str,
                                                  number: str, status: str) -> None:
    message = hostile_message(title, summary, actor, number, status)
    payload = json.loads(body_for(_destination("rocketchat"), message, "id"))
    assert payload == rocketchat_payload(message)
    text = payload["text"]
    assert not MENTION.search(text)
    rest = re.sub(rf"\[(?:[^\]]|\]{ZWSP})*\]\({re.escape(LINK)}\)", "", text, count=1)
    assert "](" not in rest
    assert all(rest[i + 1:i + 2] == ZWSP for i, ch in enumerate(rest) if ch == "<")
    assert len(text.split("\n")) == (4 if plain_line(summary, 500) else 3)


@settings(max_examples=150, deadline=None)
@hostile_fields
def test_teams_puts_ticket_text_only_in_plain_text_runs(title: str, summary: str, actor: str,
                                                        number: str, status: str) -> None:
    message = hostile_message(title, summary, actor, number, status)
    payload = json.loads(body_for(_destination("teams"), message, "id"))
    assert payload == teams_payload(message)
    [attachment] = payload["attachments"]
    card = attachment["content"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert set(card) == {"$schema", "type", "version", "body", "msteams", "actions"}
    for block in card["body"]:
        assert block["type"] == "RichTextBlock"
        assert all(run["type"] == "TextRun" for run in block["inlines"])
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open ticket", "url": LINK}]
    assert "entities" not in json.dumps(card)
    for text in texts(card):
        assert not MENTION.search(text) and "{{" not in text


@settings(max_examples=100, deadline=None)
@hostile_fields
def test_the_webhook_carries_the_text_exactly(title: str, summary: str, actor: str,
                                              number: str, status: str) -> None:
    message = hostile_message(title, summary, actor, number, status)
    payload = json.loads(body_for(_destination("webhook"), message, "d-1"))
    assert payload == webhook_payload(message, "d-1")
    assert (payload["ticket"]["title"], payload["summary"], payload["actor"]["name"]) == \
        (title, summary, actor)


@settings(max_examples=200, deadline=None)
@given(text=hostile)
def test_escaping_only_escapes(text: str) -> None:
    """Undo each format's escaping and the text is the one-line text, ＠ read as @."""
    line = plain_line(text, 500)
    same = line.replace(FULLWIDTH_AT, "@")
    slack = slack_text(line).replace(FULLWIDTH_AT, "@")
    assert slack.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == same
    commonmark = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", mattermost_text(line))  # as shown
    assert commonmark.replace(FULLWIDTH_AT, "@") == same
    assert rocketchat_text(line).replace(ZWSP, "").replace(FULLWIDTH_AT, "@") == same
    assert teams_text(line).replace(ZWSP, "").replace(FULLWIDTH_AT, "@") == same


def test_an_address_keeps_its_at_and_a_non_http_link_is_dropped() -> None:
    assert slack_text("mail bob@example.com") == "mail bob@example.com"
    message = ChatMessage(**{**MESSAGE.__dict__, "link": "javascript:alert(1)"})
    assert "javascript" not in json.dumps(slack_payload(message))
    assert "actions" not in teams_payload(message)["attachments"][0]["content"]


# ------------------------------------------------------------------ transport


def _destination(kind: str, url: str = "https://chat.example.com/hook", **options: Any
                 ) -> ChatDestination:
    secret = Secret(SECRET) if kind == "webhook" else None
    return ChatDestination(name=options.pop("name", kind), kind=kind, url=Secret(url),
                           secret=secret, **options)


def post(outgoing: list[ChatOutgoing], connections: int = 4) -> tuple[list[Outcome],
                                                                    ChatTransport]:
    transport = ChatTransport(connections=connections)
    outcomes: list[Outcome] = []
    try:
        transport.deliver(outgoing, RateLimiter(), outcomes.append)
    finally:
        transport.close()
    return sorted(outcomes, key=lambda o: str(o.key)), transport


def chat(destination: ChatDestination, key: Any = 1, message: ChatMessage = MESSAGE
         ) -> ChatOutgoing:
    return ChatOutgoing(key=key, destination=destination, message=message,
                        delivery_id=delivery_id(key, destination.name))


@pytest.mark.parametrize(("kind", "fake"), [("slack", SlackFake), ("teams", TeamsFake),
                                            ("mattermost", MattermostFake),
                                            ("rocketchat", RocketChatFake)])
def test_each_kind_posts_its_json_and_is_accepted(kind: str, fake: Any) -> None:
    with fake() as server:
        destination = _destination(kind, server.url + server.path, rate_per_second=0)
        [outcome], _ = post([chat(destination)])
    [request] = server.requests
    assert request.path == server.path
    assert request.header("Content-Type") == "application/json; charset=utf-8"
    assert request.body == body_for(destination, MESSAGE, "unused")
    assert outcome.status == "sent" and 200 <= (outcome.code or 0) < 300
    if kind == "teams":
        assert outcome.code == 202 and (outcome.provider_id or "").startswith("08584")


def test_the_webhook_is_signed_and_the_receiver_refuses_replays() -> None:
    clock = [time.time()]
    with WebhookReceiver(SECRET, clock=lambda: clock[0]) as receiver:
        destination = _destination("webhook", receiver.url + receiver.path)
        first = chat(destination, key=(7, "audit"))
        outcomes, _ = post([first, first])  # a retried delivery: the same id twice
        assert [o.status for o in outcomes] == ["sent", "sent"]
        request = receiver.requests[0]
        assert request.header(signing.ID_HEADER) == delivery_id((7, "audit"), "webhook")
        assert list(receiver.processed) == [request.header(signing.ID_HEADER)]  # once
        assert receiver.processed[delivery_id((7, "audit"), "webhook")]["ticket"]["title"] \
            == MESSAGE.title
        replay = {k: v for k, v in request.headers if k.lower().startswith("x-itsm")}
        with httpx.Client(base_url=receiver.url) as client:
            clock[0] += 301  # the same request, captured and sent six minutes later
            late = client.post(receiver.path, content=request.body, headers=replay)
            clock[0] -= 301
            altered = client.post(receiver.path, content=request.body.replace(
                b"Core switch", b"Edge switch"), headers=replay)
            forged = client.post(receiver.path, content=request.body, headers={
                **replay, **signing.sign("wrong-secret", request.body, delivery_id="x")})
    assert (late.status_code, altered.status_code, forged.status_code) == (400, 400, 400)
    assert receiver.refused == ["the timestamp is too far from now: a replay, or a clock off",
                                "no signature matches the body", "no signature matches the body"]


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    headers = signing.sign("k", b'{"a":1}', delivery_id="d", now=1700000000)
    assert headers == {
        "X-ITSM-Webhook-Id": "d", "X-ITSM-Webhook-Timestamp": "1700000000",
        "X-ITSM-Webhook-Signature":  # printf '1700000000.{"a":1}' | openssl sha256 -hmac k
            "v1=" + __import__("hmac").new(b"k", b'1700000000.{"a":1}', "sha256").hexdigest()}
    lowered = {k.lower(): v for k, v in headers.items()}
    rotated = {**lowered, "x-itsm-webhook-signature": "v1=00, " + headers[
        "X-ITSM-Webhook-Signature"]}
    assert signing.verify("k", rotated, b'{"a":1}', now=1700000100) == 1700000000


@pytest.mark.parametrize(("kind", "fake", "reply", "status", "gone", "reason"), [
    ("slack", SlackFake, Reply(410, body="channel_is_archived"), "failed", True,
     "410 channel_is_archived"),
    ("slack", SlackFake, Reply(404, body="no_service"), "failed", True, "404 no_service"),
    ("slack", SlackFake, Reply(403, body="invalid_token"), "failed", True, "403 invalid_token"),
    ("slack", SlackFake, Reply(200, body="invalid_payload"), "failed", False,
     "200 invalid_payload"),
    ("slack", SlackFake, Reply(403, body="action_prohibited"), "failed", False,
     "403 action_prohibited"),
    ("slack", SlackFake, Reply(500, body="rollup_error"), "deferred", False, "500 rollup_error"),
    ("teams", TeamsFake, Reply(404, body={"error": {"code": "WorkflowNotFound",
                                                   "message": "The workflow is gone."}}),
     "failed", True, "404 WorkflowNotFound; The workflow is gone."),
    ("teams", TeamsFake, Reply(400, body={"error": {"code": "InvalidRequestContent",
                                                   "message": "Bad card."}}),
     "failed", False, "400 InvalidRequestContent; Bad card."),
    ("mattermost", MattermostFake, Reply(400, body={"id": "web.incoming_webhook.text.app_error",
                                                   "message": "No text specified"}),
     "failed", False, "400 No text specified"),
    ("rocketchat", RocketChatFake, Reply(200, body={"success": False, "error": "No room."}),
     "failed", False, "200 No room."),
    ("webhook", WebhookReceiver, Reply(410), "failed", True, "410 Gone"),
    ("webhook", WebhookReceiver, Reply(401, body={"error": "bad signature"}), "failed", False,
     "401 bad signature: the webhook refused the request"),
])
def test_answers_map_to_outcomes(kind: str, fake: Any, reply: Reply, status: str,
                                 gone: bool, reason: str) -> None:
    with (fake(SECRET) if kind == "webhook" else fake()) as server:
        server.script(reply)
        destination = _destination(kind, server.url + server.path, rate_per_second=0)
        [outcome], transport = post([chat(destination)])
    assert (outcome.status, outcome.destination_gone) == (status, gone)
    assert outcome.code == reply.status and outcome.counts_as_attempt
    assert outcome.detail.startswith(reason)
    assert server.url not in outcome.detail and transport.gave_up is None


def test_slack_rate_limit_is_waited_out() -> None:
    with SlackFake() as server:
        server.script(Reply(429, {"Retry-After": "1"}, "rate_limited"))
        destination = _destination("slack", server.url + server.path, rate_per_second=0)
        [outcome], _ = post([chat(destination)])
    first, second = server.requests
    assert outcome.status == "sent" and second.arrived - first.arrived >= 0.95


def test_one_destination_in_order_others_in_parallel() -> None:
    with SlackFake() as slack, MattermostFake() as mattermost:
        # the first messages answer slowest: order must still hold, one at a time
        slack.script(*[Reply(200, body="ok", delay=0.3 - 0.1 * n) for n in range(3)])
        mattermost.script(*[Reply(200, body="ok", delay=0.3) for _ in range(3)])
        to_slack = _destination("slack", slack.url + slack.path, rate_per_second=0)
        to_mm = _destination("mattermost", mattermost.url + mattermost.path)
        titles = [f"message {n}" for n in range(3)]
        started = time.monotonic()
        outcomes, _ = post([chat(d, key=(n, d.name), message=ChatMessage(
            **{**MESSAGE.__dict__, "title": title}))
            for n, title in enumerate(titles) for d in (to_slack, to_mm)])
        elapsed = time.monotonic() - started
    assert [o.status for o in outcomes] == ["sent"] * 6
    for server, render in ((slack, lambda r: r.json()["text"]),
                           (mattermost, lambda r: r.json()["text"])):
        assert server.max_in_flight == 1
        shown = [render(r) for r in server.requests]
        assert [next(t for t in titles if t in s) for s in shown] == titles
    assert elapsed < 1.3  # one after the other: 0.6 + 0.9 = 1.5 s


def test_slack_is_paced_to_its_rate() -> None:
    with SlackFake() as server:
        destination = _destination("slack", server.url + server.path, rate_per_second=5)
        started = time.monotonic()
        post([chat(destination, key=n) for n in range(3)])
        assert time.monotonic() - started >= 0.38
    arrivals = [r.arrived for r in server.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap >= 0.18 for gap in gaps)


def test_an_unreachable_or_hung_destination_does_not_hold_up_the_others() -> None:
    with SlackFake() as down:
        dead_url = down.url + down.path
    with TeamsFake() as teams, MattermostFake() as hung:
        hung.script(Reply(200, body="ok", delay=5))
        dead = _destination("slack", dead_url, name="dead", rate_per_second=0)
        slow = _destination("mattermost", hung.url + hung.path, name="slow", timeout=0.3)
        fine = _destination("teams", teams.url + teams.path, name="fine")
        started = time.monotonic()
        outcomes, transport = post([chat(dead, key="d1"), chat(dead, key="d2"),
                                    chat(slow, key="s1"), chat(slow, key="s2"),
                                    chat(fine, key="t1")])
        assert time.monotonic() - started < 3
    by_key = {o.key: o for o in outcomes}
    assert by_key["t1"].status == "sent"
    for key in ("d1", "d2", "s1", "s2"):
        assert by_key[key].status == "deferred" and not by_key[key].counts_as_attempt
    assert transport.unreachable == {
        "dead": "cannot reach chat destination 'dead' (connection refused); retried later",
        "slow": "chat destination 'slow' did not answer within 0.3 s (chat.slow.timeout); "
                "retried later"}
    assert transport.gave_up is None and len(hung.requests) == 1
    assert all(dead_url not in o.detail for o in outcomes)


# ------------------------------------------------------------ from an event


def event_context(kind: str, payload: dict[str, Any] | None = None, *,
                  comment: Any = None, actor_id: int | None = 2) -> Any:
    from itsm_notify.events.model import EventContext, OutboxEvent, Ticket, User

    users = {1: User(1, "alice", "alice@example.com", "Alice", "Lopez"),
             2: User(2, "bob", "bob@example.com", "Bob", "Okafor")}
    ticket = Ticket(7, "TKT-007", "Core switch down", "Nothing on floor 2\nreaches it.",
                    "open", "critical", 1, 2, None, None, None)
    return EventContext(OutboxEvent(10, kind, 7, actor_id, None), payload or {}, ticket, users,
                        comment=comment, manager_ids=())


def test_chat_message_says_what_happened() -> None:
    from itsm_notify.channels.messages import chat_message
    from itsm_notify.events.model import Comment

    desk = load_settings({"site_url": "https://helpdesk.example.com", "site_name": "Desk"},
                         environ={}, dotenv_path=None)
    created = chat_message(event_context("ticket_created", actor_id=None), desk)
    assert created == ChatMessage("ticket_created", "TKT-007", "Core switch down", "critical",
                                  "open", "System", "Nothing on floor 2 reaches it.",
                                  "https://helpdesk.example.com/tickets/7/", "Desk")
    changed = chat_message(event_context("status_changed", {"old_status": "open",
                                                            "new_status": "resolved"}), desk)
    assert changed is not None
    assert (changed.status, changed.summary, changed.actor_name) == \
        ("resolved", "open → resolved", "Bob Okafor")
    assigned = chat_message(event_context("ticket_assigned", {"assignee_id": 1}), desk)
    assert assigned is not None and assigned.summary == "Assigned to Alice Lopez"
    public = Comment(5, 7, 1, "Rebooted it, " * 100, False, None)
    commented = chat_message(event_context("comment_added", comment=public), desk)
    assert commented is not None and len(commented.summary) == 500
    assert commented.summary.startswith("Rebooted it, Rebooted")
    internal = Comment(6, 7, 2, "the vendor is slow, do not tell the customer", True, None)
    assert chat_message(event_context("comment_added", comment=internal), desk) is None
