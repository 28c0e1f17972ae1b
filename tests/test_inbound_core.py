"""The inbound core's units and properties: signed addresses, the parser's bounds on
hostile input (a 30 MB message, MIME bombs, arbitrary bytes), classification rules,
sender trust, and the quote stripper's promise never to lose the new text."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itsm_notify.inbound.classify import (
    Mailboxes,
    classify,
    our_message_id_key,
    sender_trust,
)
from itsm_notify.inbound.message import Limits, html_to_text, parse_message
from itsm_notify.inbound.quotes import extract_reply
from itsm_notify.inbound.tokens import (
    VerpTarget,
    make_reply_address,
    make_verp_address,
    read_reply_address,
    read_verp_address,
)

SECRET = "s3cret"
MAILBOXES = Mailboxes(own_domains=("desk.example",), bounce_address="bounces@desk.example",
                      reply_address="support@desk.example", secrets=SECRET)


# ---------------------------------------------------------------- signed addresses


DIGEST = "5f1c0a3e9b2d4c67"


def test_verp_address_round_trips_and_survives_lower_and_upper_case() -> None:
    address = make_verp_address(SECRET, "bounces@desk.example", 98765, DIGEST)
    assert address.startswith(f"bounces+98765.{DIGEST}.") and address.endswith("@desk.example")
    assert address == address.lower()
    for form in (address, address.upper(), f"<{address}>"):
        assert read_verp_address(SECRET, "bounces@desk.example", form) == \
            VerpTarget(98765, DIGEST)


def test_reply_address_names_ticket_and_user() -> None:
    address = make_reply_address(SECRET, "Support@Desk.Example", 42, 7)
    target = read_reply_address(SECRET, "support@desk.example", address)
    assert target is not None and (target.ticket_id, target.user_id) == (42, 7)


def test_forged_or_altered_addresses_are_refused() -> None:
    verp = make_verp_address(SECRET, "bounces@desk.example", 5, DIGEST)
    reply = make_reply_address(SECRET, "support@desk.example", 42, 7)
    local, _, domain = verp.partition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    assert read_verp_address(SECRET, "bounces@desk.example", flipped) is None
    assert read_verp_address("other", "bounces@desk.example", verp) is None
    assert read_verp_address(SECRET, "bounces@other.example", verp.replace(
        "desk.example", "other.example")) is None
    # another id with the same MAC, a reply token read as VERP, a VERP token as a reply
    assert read_verp_address(SECRET, "bounces@desk.example", verp.replace("+5.", "+6.")) is None
    assert read_verp_address(SECRET, "bounces@desk.example",
                             verp.replace(DIGEST, DIGEST[::-1])) is None
    assert read_reply_address(SECRET, "support@desk.example", reply.replace("+42.", "+43.")) \
        is None
    assert read_verp_address(SECRET, "support@desk.example", reply) is None
    assert read_reply_address(SECRET, "bounces@desk.example",
                              verp.replace("bounces", "support")) is None
    assert read_verp_address(SECRET, "bounces@desk.example", "bounces+05.aaaa@desk.example") \
        is None
    assert read_verp_address((), "bounces@desk.example", verp) is None


def test_rotated_secrets_still_read_old_addresses() -> None:
    old = make_verp_address("old-key", "bounces@desk.example", 11, DIGEST)
    assert read_verp_address(["new-key", "old-key"], "bounces@desk.example", old) == \
        VerpTarget(11, DIGEST)
    assert read_verp_address(["new-key"], "bounces@desk.example", old) is None


def test_making_an_address_without_a_secret_or_too_long_says_why() -> None:
    with pytest.raises(ValueError, match="SECRET_KEY"):
        make_verp_address("", "bounces@desk.example", 1, DIGEST)
    with pytest.raises(ValueError, match="64 characters"):
        make_reply_address(SECRET, "a-rather-long-support-address@desk.example",
                           2**62, 2**62)


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_reply_tokens_round_trip(ticket_id: int, user_id: int) -> None:
    address = make_reply_address(SECRET, "s@d.example", ticket_id, user_id)
    target = read_reply_address(SECRET, "s@d.example", address)
    assert target is not None and (target.ticket_id, target.user_id) == (ticket_id, user_id)


@given(st.integers(0, 10**12 - 1), st.text("0123456789abcdef", min_size=16, max_size=16))
def test_verp_tokens_round_trip(event_id: int, digest: str) -> None:
    address = make_verp_address(SECRET, "bounces@d.example", event_id, digest)
    assert read_verp_address(SECRET, "bounces@d.example", address) == VerpTarget(event_id, digest)
    assert read_reply_address(SECRET, "bounces@d.example", address) is None


@given(st.text(max_size=120))
def test_reading_any_text_as_an_address_never_raises(text: str) -> None:
    assert read_verp_address(SECRET, "bounces@desk.example", text) is None
    assert read_reply_address(SECRET, "support@desk.example", text) is None


# ---------------------------------------------------------------- bounded parsing


def measured(raw: bytes, limits: Limits | None = None) -> tuple[object, float, int]:
    """The parsed message, seconds taken and peak bytes allocated while parsing."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        msg = parse_message(raw) if limits is None else parse_message(raw, limits=limits)
        return msg, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_30_mb_message_is_read_as_headers_only_quickly() -> None:
    head = (b"From: Big <big@example.net>\r\nTo: support@desk.example\r\n"
            b"Subject: a 30 MB attachment\r\nMessage-ID: <big-1@example.net>\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    raw = head + b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwMTIz\r\n" * (30 * 1024 * 1024 // 50)
    msg, seconds, peak = measured(raw)
    assert msg.oversize and not msg.mime_complete  # type: ignore[attr-defined]
    assert msg.key == "<big-1@example.net>"  # type: ignore[attr-defined]
    assert msg.subject == "a 30 MB attachment"  # type: ignore[attr-defined]
    assert "only its header was read" in msg.problems[0]  # type: ignore[attr-defined]
    assert seconds < 2 and peak < 5 * 1024 * 1024


def test_a_big_message_under_the_limit_is_read_in_bounded_memory() -> None:
    head = (b"From: a@example.net\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: base64\n\n")
    raw = head + b"SGVsbG8gdGhlcmUsIHRoaXMgaXMgYSBsaW5lIG9mIHRleHQgZm9yIHRoZSB0ZXN0Lg==\n" * 300_000
    msg, seconds, peak = measured(raw)
    assert not msg.oversize and len(msg.text) == Limits().max_text_chars  # type: ignore
    assert msg.text.startswith("Hello there, this is a line of text for the test.Hello")  # type: ignore
    assert seconds < 3 and peak < 2 * len(raw)  # each padded line decoded, not the whole


def deep_bomb(depth: int, filler_lines: int = 0) -> bytes:
    parts = [b"From: bomb@example.net\nSubject: bomb\nMIME-Version: 1.0\n"]
    for level in range(depth):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (level, level))
    parts.append(b"Content-Type: text/plain\n\nthe bottom\n" + b"filler line\n" * filler_lines)
    parts.extend(b"--b%d--\n" % level for level in reversed(range(depth)))
    return b"".join(parts)


@pytest.mark.parametrize("depth", [50_000])
def test_a_deep_mime_bomb_is_cut_at_the_depth_limit(depth: int) -> None:
    msg, seconds, peak = measured(deep_bomb(depth, filler_lines=200_000))
    assert any("nested deeper than 10 levels" in p for p in msg.problems)  # type: ignore
    assert not msg.mime_complete  # type: ignore[attr-defined]
    assert seconds < 3 and peak < 20 * 1024 * 1024


def test_a_shallow_nesting_is_read_whole() -> None:
    msg = parse_message(deep_bomb(5))
    assert msg.text.strip() == "the bottom" and msg.mime_complete


def test_a_wide_mime_bomb_is_cut_at_the_part_limit() -> None:
    raw = (b"From: a@example.net\nContent-Type: multipart/mixed; boundary=x\n\n"
           + b"--x\nContent-Type: text/plain\n\npart\n" * 100_000 + b"--x--\n")
    msg, seconds, _ = measured(raw)
    assert any("more than 250 MIME parts" in p for p in msg.problems)  # type: ignore
    assert seconds < 2


def test_nested_message_rfc822_is_cut_at_the_depth_limit() -> None:
    raw = b"From: a@example.net\n" + b"Content-Type: message/rfc822\n\n" * 100_000 + b"x"
    msg, seconds, _ = measured(raw)
    assert not msg.mime_complete and seconds < 2  # type: ignore[attr-defined]


def test_deeply_nested_html_still_gives_its_words() -> None:
    assert html_to_text("<div>" * 5000 + "still here" + "</div>" * 5000) == "still here"


mime_leaf = st.builds(
    lambda ctype, charset, cte, body: (
        f"Content-Type: {ctype}; charset={charset}\nContent-Transfer-Encoding: {cte}\n\n"
        .encode() + body),
    st.sampled_from(["text/plain", "text/html", "message/delivery-status", "message/rfc822",
                     "text/rfc822-headers", "application/octet-stream", "multipart/mixed",
                     "message/feedback-report", ";;="]),
    st.sampled_from(["utf-8", "x-bogus", "rot13", "utf-16", "iso-2022-jp", '"', "base64"]),
    st.sampled_from(["base64", "quoted-printable", "8bit", "x-uue", ""]),
    st.binary(max_size=200),
)


def multipart(children: list[bytes], boundary: str, ctype: str) -> bytes:
    out = f'Content-Type: multipart/{ctype}; boundary="{boundary}"\n\n'.encode()
    for child in children:
        out += f"--{boundary}\n".encode() + child + b"\n"
    return out + f"--{boundary}--\n".encode()


mime_tree = st.recursive(
    mime_leaf,
    lambda inner: st.builds(multipart, st.lists(inner, max_size=4),
                            st.sampled_from(["a", "b", "a'b", "x" * 70, ""]),
                            st.sampled_from(["mixed", "alternative", "report", "related"])),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_parsing_arbitrary_bytes_never_raises(raw: bytes) -> None:
    msg = parse_message(raw)
    assert msg.key and msg.size == len(raw)
    classify(msg, MAILBOXES)
    extract_reply(msg.text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mime_tree, st.sampled_from([b"", b"Return-Path: <>\n", b"From: MAILER-DAEMON@x.example\n"]))
def test_parsing_and_classifying_any_mime_structure_never_raises(tree: bytes,
                                                                  head: bytes) -> None:
    raw = head + b"Subject: =?utf-8?q?x=0D=0Ay?=\nMessage-ID: <t@x>\n" + tree
    msg = parse_message(raw)
    assert "\n" not in msg.subject and "\r" not in msg.subject
    assert msg.problems == () or all(p.endswith(".") for p in msg.problems)
    classify(msg, MAILBOXES)
    extract_reply(msg.text)


def test_a_part_that_starts_with_a_blank_line_has_no_headers() -> None:
    msg = parse_message(b"From: a@example.net\nContent-Type: multipart/mixed; boundary=b\n\n"
                        b"--b\n\nFirst: line looks like a header\n\nsecond paragraph\n--b--\n")
    assert msg.text == "First: line looks like a header\n\nsecond paragraph"


@pytest.mark.parametrize(("diagnostic", "status"), [
    ("smtp; 550 5.1.1 <a@b.example>: user unknown", "5.1.1"),
    ("host 203.0.113.9 said: 550 no such user", "5.0.0"),
    ("connect to 10.5.4.3[10.5.4.3]:443: Connection timed out", None),
    ("Remote host said: 554: delivery error", "5.0.0"),
    ("host mx.example[192.0.2.1]: 550 Unknown user", "5.0.0"),
])
def test_status_codes_come_from_reply_codes_not_addresses(diagnostic: str,
                                                          status: str | None) -> None:
    raw = (b"Return-Path: <>\nFrom: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\n\n"
           b"--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n"
           b"Final-Recipient: rfc822; a@b.example\nAction: delayed\nDiagnostic-Code: "
           + diagnostic.encode() + b"\n--r--\n")
    result = classify(parse_message(raw), MAILBOXES)
    assert result.kind == "delivery-report" and result.report is not None
    recipient = result.report.recipients[0]
    assert recipient.status == status
    assert recipient.outcome == ("temporary" if status is None else "permanent")


# ---------------------------------------------------------------- addresses and keys


@pytest.mark.parametrize("value", [
    b'alice@example.org)<bob@evil.example>',            # the CVE-2023-27043 shape
    b'"alice@example.org" <bob@evil.example>, c@d.example',
    b'=?utf-8?q?A=0D=0AB?= <a@example.org>',            # a line break in the name
    b'<>',
])
def test_an_ambiguous_from_gives_no_sender(value: bytes) -> None:
    msg = parse_message(b"From: " + value + b"\n\nhi")
    assert msg.from_address is None


def test_an_encoded_display_name_cannot_become_an_address() -> None:
    msg = parse_message(b"From: =?utf-8?q?admin=40desk.example_=3Cadmin=40desk.example=3E?= "
                        b"<mallory@evil.example>\n\nhi")
    assert msg.from_address == "mallory@evil.example"


def test_only_our_domains_message_ids_are_ticket_keys() -> None:
    assert our_message_id_key("itsm-notify.ticket-9@evil.example", ("desk.example",),
                              "in-reply-to") is None
    key = our_message_id_key("itsm-notify.overdue-3-ab12.0123456789abcdef@Desk.Example",
                             ("desk.example",), "references")
    assert key is not None and (key.kind, key.value) == ("event", "overdue-3-ab12")


def test_a_persons_failure_notice_is_not_a_delivery_report() -> None:
    msg = parse_message(b"Return-Path: <p@example.org>\nFrom: P <p@example.org>\n"
                        b"To: support@desk.example\nSubject: failure notice on my laptop\n\n"
                        b"The laptop shows a failure notice at boot.")
    assert classify(msg, MAILBOXES).kind == "new-mail"


# ---------------------------------------------------------------- sender trust


def with_results(*values: str) -> bytes:
    return b"".join(b"Authentication-Results: " + v.encode() + b"\n" for v in values) + \
        b"From: a@example.org\n\nhi"


@pytest.mark.parametrize(("results", "verdict"), [
    (["mx.desk.example; spf=fail smtp.mailfrom=x; dkim=pass header.d=example.org"], "pass"),
    (["mx.desk.example; spf=fail smtp.mailfrom=x; dkim=fail"], "fail"),
    (["mx.desk.example; dmarc=fail (p=none) header.from=example.org; dkim=pass"], "fail"),
    (["evil.example; dmarc=pass", "mx.desk.example; spf=none"], "unknown"),
    (["evil.example; dmarc=pass header.from=example.org"], "unknown"),
    (["mx.desk.example (comment; dmarc=pass) ; spf=fail; dkim=none"], "fail"),
    ([], "unknown"),
])
def test_sender_trust_reads_only_trusted_servers(results: list[str], verdict: str) -> None:
    trust = sender_trust(parse_message(with_results(*results)), ["mx.desk.example"])
    assert trust.verdict == verdict, trust.reason


# ---------------------------------------------------------------- quote stripping


answer_words = st.text(alphabet="abcdefghij", min_size=3, max_size=8)
line_kinds = st.one_of(
    st.builds(lambda w: ("answer", f"ANSWER {w}"), answer_words),
    st.builds(lambda w: ("quote", f"> quoted {w}"), answer_words),
    st.just(("blank", "")),
    st.just(("attribution", "On Tue, 5 Mar 2024 at 09:12, Desk <support@desk.example> wrote:")),
    st.just(("attribution", "Am 05.03.24 um 09:12 schrieb IT Help Desk:")),
    st.just(("separator", "-----Original Message-----")),
    st.just(("signature", "Sent from my iPhone")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(line_kinds, max_size=25))
def test_quote_stripping_loses_nothing_and_keeps_every_answer(lines: list[tuple[str, str]]) -> None:
    text = "\n".join(line for _, line in lines)
    reply = extract_reply(text)
    assert set(text.split()) <= set(reply.new.split()) | set(reply.cut.split())
    # answers above the first reply header, and answers between the quotes below an
    # attribution ("On ... wrote:"), are never cut; below a separator line the unquoted
    # text is the old message, as Outlook writes it
    first_header, kind_of_first = next(((i, k) for i, (k, _) in enumerate(lines)
                                        if k in ("attribution", "separator")),
                                       (len(lines), None))
    for index, (kind, line) in enumerate(lines):
        inline = kind_of_first == "attribution" and any(
            k == "quote" for k, _ in lines[first_header:index]) and not any(
            k == "separator" for k, _ in lines[first_header:index])
        if kind == "answer" and (index < first_header or inline):
            signed_above = any(k == "signature" for k, _ in lines[:index]) and not any(
                k == "quote" for k, _ in lines[index:])
            if not signed_above:
                assert line in reply.new, (text, reply)


def test_a_reply_of_only_quotes_has_no_new_text() -> None:
    reply = extract_reply("On Tue, Desk wrote:\n> the old text\n>\n")
    assert reply.new == "" and "the old text" in reply.cut


def test_a_line_ending_in_wrote_without_quotes_below_is_the_senders_text() -> None:
    text = "Hi,\nthe backup script wrote:\nERROR disk full\n\nThanks"
    assert extract_reply(text).new == text
