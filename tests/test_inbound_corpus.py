"""The inbound corpus (tests/inbound_corpus): each message parsed, classified and its
reply text extracted, against tests/inbound_corpus/expected.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from itsm_notify.inbound.classify import (
    HELPDESK_TAG,
    TICKET_NUMBER_TAG,
    Mailboxes,
    classify,
    sender_trust,
)
from itsm_notify.inbound.message import parse_message
from itsm_notify.inbound.quotes import extract_reply
from itsm_notify.inbound.tokens import make_reply_address, make_verp_address

CORPUS = Path(__file__).parent / "inbound_corpus"
MANIFEST = tomllib.loads((CORPUS / "expected.toml").read_text(encoding="utf-8"))
CONFIG: dict[str, Any] = MANIFEST["config"]
PATTERNS = {"contract": TICKET_NUMBER_TAG, "django-helpdesk": HELPDESK_TAG}
MAILBOXES = Mailboxes(
    own_domains=tuple(CONFIG["own_domains"]),
    bounce_address=CONFIG["bounce_address"],
    reply_address=CONFIG["reply_address"],
    own_addresses=tuple(CONFIG["own_addresses"]),
    secrets=CONFIG["secret"],
    subject_patterns=tuple(PATTERNS[name] for name in CONFIG["subject_patterns"]),
)


def fill(raw: bytes) -> bytes:
    """The corpus' placeholders made real signed addresses."""
    secret = CONFIG["secret"]
    raw = re.sub(rb"\{\{VERP:(\d+):([0-9a-f]{16})\}\}", lambda m: make_verp_address(
        secret, CONFIG["bounce_address"], int(m.group(1)), m.group(2).decode()).encode(), raw)
    return re.sub(rb"\{\{REPLY:(\d+):(\d+)\}\}", lambda m: make_reply_address(
        secret, CONFIG["reply_address"], int(m.group(1)), int(m.group(2))).encode(), raw)


def test_every_corpus_file_has_an_entry_and_each_entry_a_file() -> None:
    listed = {entry["file"] for entry in MANIFEST["message"]}
    stored = {path.name for path in CORPUS.glob("*.eml")}
    assert listed == stored


@pytest.mark.parametrize("entry", MANIFEST["message"], ids=lambda e: e["file"])
def test_corpus_message(entry: dict[str, Any]) -> None:
    msg = parse_message(fill((CORPUS / entry["file"]).read_bytes()))
    result = classify(msg, MAILBOXES)

    assert result.kind == entry["kind"], result.reason
    for word in entry.get("reason", []):
        assert word.lower() in result.reason.lower(), result.reason
    if "from" in entry:
        assert msg.from_address == (entry["from"] or None)
    if "subject" in entry:
        assert msg.subject == entry["subject"]
    if "text_source" in entry:
        assert msg.text_source == entry["text_source"]
    for problem in entry.get("problems", []):
        assert any(problem in p for p in msg.problems), msg.problems
    if "trust" in entry:
        trust = sender_trust(msg, CONFIG["trusted_authserv_ids"])
        assert trust.verdict == entry["trust"], trust.reason
        for word in entry.get("trust_reason", []):
            assert word in trust.reason
    if "own" in entry:
        assert result.kind == "auto-reply" and result.own is entry["own"]
    if "to_helpdesk" in entry:
        assert result.kind == "new-mail" and result.to_helpdesk is entry["to_helpdesk"]
    if "first_key" in entry:
        check_first_key(result, entry)
    if "report" in entry:
        check_report(result, entry["report"])
    if {"new", "new_excludes", "cut"} & entry.keys():
        reply = extract_reply(msg.text)
        for text in entry.get("new", []):
            assert text in reply.new, reply.new
        for text in entry.get("new_excludes", []):
            assert text not in reply.new, reply.new
        for text in entry.get("cut", []):
            assert text in reply.cut, reply.cut
        assert_nothing_lost(msg.text, reply.new, reply.cut)


def check_first_key(result: Any, entry: dict[str, Any]) -> None:
    assert result.kind == "reply"
    expected = entry["first_key"]
    first = result.keys[0]
    assert (first.source, first.kind, first.value) == (
        expected["source"], expected["kind"], expected["value"])
    if "user_id" in expected:
        assert first.user_id == expected["user_id"]
    if "recipient_digest" in expected:
        assert first.recipient_digest == expected["recipient_digest"]
    if "parts" in expected:
        assert dict(first.parts) == expected["parts"]
    if "keys" in entry:
        assert len(result.keys) == entry["keys"], result.keys


def check_report(result: Any, expected: dict[str, Any]) -> None:
    if expected.get("none"):
        assert result.report is None
        return
    report = result.report
    assert result.delivery is not None
    assert [result.delivery.event_id, result.delivery.recipient_digest] == expected["delivery"]
    assert report.original_message_id == expected["original_message_id"]
    if result.kind == "complaint":
        assert report.feedback_type == expected["feedback_type"]
        assert list(report.original_rcpt_to) == expected["original_rcpt_to"]
        return
    assert report.format == expected["format"]
    assert len(report.recipients) == len(expected["recipients"])
    for got, want in zip(report.recipients, expected["recipients"], strict=True):
        assert got.address == want["address"]
        assert got.outcome == want["outcome"]
        assert got.status == want.get("status")
        assert want.get("diagnostic", "") in got.diagnostic


def assert_nothing_lost(text: str, new: str, cut: str) -> None:
    """Every word of the text is in what was kept or in what was cut."""
    words = set(text.split())
    assert words <= set(new.split()) | set(cut.split())
