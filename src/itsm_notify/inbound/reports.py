"""Delivery reports (bounces) and complaint reports, read from an ``InboundMessage``.
Pure.

What the help desk needs from a report is more than who bounced: the status code
(5.x.x fails the delivery and suppresses the address; 4.x.x is only noted), the
diagnostic to show, and the ORIGINAL message's Message-ID and the envelope recipient
the report came back to, to find the delivery it is about. So:

- RFC 3464 (``message/delivery-status``, also RFC 6533's global form) and RFC 5965 ARF
  (``message/feedback-report``) are read field by field, here;
- the common non-standard formats that carry a status and the original headers are
  read here too: Exim's plain-text bounce, qmail's QSBMF, Gmail's plain-text notice,
  and Exchange / Office 365 NDRs without a delivery-status part;
- anything else that looks like a bounce (the null sender, a mailer-daemon) goes to
  ``flufl.bounce``, Mailman's detectors, which know many more legacy formats but
  return only addresses (temporary or permanent): no status, no diagnostic, no
  original Message-ID. It runs only on a message small enough for the standard
  parser, and a detector's exception is a reason, not a crash.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Literal

from flufl.bounce import all_failures

from .message import InboundMessage, Part, header_text

Outcome = Literal["permanent", "temporary", "delivered", "unknown"]

_HEADER_PARSER = BytesHeaderParser(policy=policy.compat32)
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_REPLY = re.compile(r"(?:^|said:|returned(?: was)?:?|error[^:\n]{0,40}:|:\s|['#(])\s*"
                         r"([245])[0-5]\d(?=[\s:-])")
"""A basic SMTP reply code where reports put one, not any number (an IP, a port)."""
_MESSAGE_ID_LINE = re.compile(r"^[ \t>]*Message-ID:[ \t]*\r?\n?[ \t]*<([^<>\s]{1,250})>",
                              re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[^\s<>(),;:\"'\[\]]{1,64}@[A-Za-z0-9.-]{1,255}\.[A-Za-z0-9-]{2,63}")
_BLOCK_SPLIT = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")
_DAEMON = re.compile(r"(?:^|[<\s\"])(?:mailer-daemon|mailer_daemon|mailerdaemon|mail-daemon|"
                     r"postmaster)@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status notification|failure|has failed)|"
    r"failure notice|mail delivery (failed|failure|subsystem)|returned mail|"
    r"delivery notification|non[- ]?remis|unzustellbar|nicht zustellbar|"
    r"no se puede entregar|no entregado|échec de (la )?remise|warning: message .* delayed",
    re.IGNORECASE)
_BY_CLASS: dict[str, Outcome] = {"5": "permanent", "4": "temporary", "2": "delivered"}
FLUFL_MAX_SIZE = 1024 * 1024
"""flufl.bounce needs the standard parser's tree: only messages up to this size."""


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's line in a delivery report."""

    address: str
    """The recipient as reported (Final-Recipient, or the address in the text)."""
    original_recipient: str | None
    action: str
    """RFC 3464 Action (``failed``, ``delayed``, ``delivered`` ...), or ``""``."""
    status: str | None
    """The enhanced status code, ``5.1.1``, when the report gives one."""
    outcome: Outcome
    diagnostic: str

    @property
    def permanent(self) -> bool:
        return self.outcome == "permanent"


@dataclass(frozen=True)
class DeliveryReport:
    format: str
    """``rfc3464``, ``exim``, ``qmail``, ``gmail``, ``exchange`` or ``flufl.bounce``."""
    recipients: tuple[RecipientStatus, ...]
    original_message_id: str | None
    """The bounced message's Message-ID (without angle brackets), when the report
    returns its headers."""
    report_to: tuple[str, ...]
    """Where the report was delivered (envelope headers, then To): a VERP address."""
    reporting_mta: str = ""

    @property
    def permanent_failures(self) -> tuple[RecipientStatus, ...]:
        return tuple(r for r in self.recipients if r.outcome == "permanent")

    @property
    def temporary_failures(self) -> tuple[RecipientStatus, ...]:
        return tuple(r for r in self.recipients if r.outcome == "temporary")


@dataclass(frozen=True)
class ComplaintReport:
    """An ARF feedback report (RFC 5965): a recipient marked our mail as spam."""

    feedback_type: str
    user_agent: str
    original_message_id: str | None
    original_rcpt_to: tuple[str, ...]
    """Original-Rcpt-To fields; many providers redact them, so see ``original_to``."""
    original_to: tuple[str, ...]
    """The To addresses of the returned original message (often redacted too)."""
    original_mail_from: str | None
    report_to: tuple[str, ...]
    source_ip: str = ""
    reported_domain: str = ""


# ---------------------------------------------------------------- detection


def looks_like_bounce(msg: InboundMessage, envelope_sender: str | None = None) -> bool:
    """A mailer-daemon's message: the null sender with a bounce subject, or a daemon's
    From. A person's mail that says "failure notice" is not one."""
    sender = msg.return_path if envelope_sender is None else envelope_sender
    from_daemon = bool(_DAEMON.search(msg.from_address or msg.headers.get("from") or ""))
    subject_says = bool(_BOUNCE_SUBJECT.search(msg.subject))
    return from_daemon or (sender == "" and subject_says) or "x-failed-recipients" in msg.headers


def is_report(msg: InboundMessage, report_type: str) -> bool:
    """A ``multipart/report`` of that report-type (RFC 6522), at the top or inside."""
    for part in msg.root.walk():
        if part.content_type == "multipart/report":
            try:
                kind = str(part.headers.get_param("report-type", "") or "")
            except Exception:
                kind = ""
            if kind.lower() == report_type:
                return True
    return False


# ---------------------------------------------------------------- delivery reports


def parse_delivery_report(msg: InboundMessage,
                          envelope_sender: str | None = None) -> DeliveryReport | None:
    """The delivery report in ``msg``, or None when it is not one (or names nobody)."""
    report_to = _report_to(msg)
    original_id = _original_message_id(msg)
    status_parts = [p for p in msg.root.walk()
                    if p.content_type in ("message/delivery-status",
                                          "message/global-delivery-status")]
    if status_parts:
        recipients, mta = _rfc3464(status_parts)
        if recipients:
            return DeliveryReport("rfc3464", recipients, original_id, report_to, mta)
    if not looks_like_bounce(msg, envelope_sender):
        return None
    text = msg.text
    for fmt, reader in (("gmail", _gmail), ("exim", _exim), ("qmail", _qmail),
                        ("exchange", _exchange)):
        found = reader(msg, text)
        if found:
            return DeliveryReport(fmt, found, original_id or _quoted_message_id(text),
                                  report_to)
    found = _flufl(msg)
    if found:
        return DeliveryReport("flufl.bounce", found, original_id or _quoted_message_id(text),
                              report_to)
    return None


def _rfc3464(parts: list[Part]) -> tuple[tuple[RecipientStatus, ...], str]:
    recipients: list[RecipientStatus] = []
    reporting_mta = ""
    for part in parts:
        for block in _BLOCK_SPLIT.split(part.decoded(256 * 1024).strip()):
            fields = _HEADER_PARSER.parsebytes(block.strip() + b"\n")
            if fields.get("reporting-mta") and not reporting_mta:
                reporting_mta = _after_type(fields.get("reporting-mta"))
            final = _after_type(fields.get("final-recipient"))
            if not final:
                continue
            original = _after_type(fields.get("original-recipient")) or None
            action = header_text(fields.get("action"), 40).lower().split(" ")[0]
            diagnostic = _after_type(fields.get("diagnostic-code"))
            status = _status(header_text(fields.get("status"), 40)) or _status(diagnostic)
            recipients.append(RecipientStatus(
                address=final, original_recipient=original, action=action, status=status,
                outcome=_outcome(status, action), diagnostic=diagnostic))
            if len(recipients) >= 100:
                break
    return tuple(recipients), reporting_mta


def _after_type(value: object) -> str:
    """``rfc822; a@b`` → ``a@b``; ``smtp; 550 ...`` → ``550 ...`` (one line)."""
    text = header_text(str(value) if value is not None else "", 1000)
    kind, semicolon, rest = text.partition(";")
    rest = rest if semicolon else kind
    return rest.strip().strip("<>").strip()


def _status(text: str) -> str | None:
    found = _STATUS.search(text or "")
    if found:
        return found.group(0)
    reply = _SMTP_REPLY.search(text or "")
    return f"{reply.group(1)}.0.0" if reply else None


def _outcome(status: str | None, action: str = "") -> Outcome:
    if status:
        return _BY_CLASS[status[0]]
    if action.startswith(("fail", "error")):
        return "permanent"
    if action.startswith("delay"):
        return "temporary"
    if action in ("delivered", "relayed", "expanded"):
        return "delivered"
    return "unknown"


def _report_to(msg: InboundMessage) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for address in (*msg.envelope_to, *(m.address for m in msg.to)):
        seen.setdefault(address, None)
    return tuple(seen)


def _original_message_id(msg: InboundMessage) -> str | None:
    """The Message-ID in a returned message/rfc822 or text/rfc822-headers part."""
    for part in msg.root.walk():
        if part is msg.root:
            continue
        if part.content_type in ("message/rfc822", "message/global") and part.children:
            found = _ids_in(part.children[0].headers)
        elif part.content_type in ("text/rfc822-headers", "message/global-headers"):
            found = _ids_in(_HEADER_PARSER.parsebytes(part.decoded(256 * 1024)))
        else:
            continue
        if found:
            return found
    return None


def _ids_in(headers: Message) -> str | None:
    value = str(headers.get("message-id", "") or "")
    found = re.search(r"<([^<>\s]{1,250})>", value)
    return found.group(1) if found else None


def _quoted_message_id(text: str) -> str | None:
    """A ``Message-ID: <...>`` line in a report's text (returned headers quoted)."""
    found = _MESSAGE_ID_LINE.search(text)
    return found.group(1) if found else None


def _entries(text: str, start: re.Pattern[str], end: re.Pattern[str],
             entry: re.Pattern[str]) -> list[tuple[str, str]]:
    """(address, the lines after it) between a start and an end marker."""
    begin = start.search(text)
    if begin is None:
        return []
    stop = end.search(text, begin.end())
    section = text[begin.end(): stop.start() if stop else begin.end() + 20_000]
    out: list[tuple[str, str]] = []
    for line in section.split("\n"):
        found = entry.match(line)
        if found:
            out.append((found.group("address"), ""))
        elif out and line.strip():
            address, diagnostic = out[-1]
            out[-1] = (address, f"{diagnostic} {line.strip()}".strip())
        if len(out) >= 100:
            break
    return out


def _recipients(entries: list[tuple[str, str]], default: Outcome,
                action: str = "failed") -> tuple[RecipientStatus, ...]:
    out = []
    for address, diagnostic in entries:
        diagnostic = " ".join(diagnostic.split())[:1000]
        status = _status(diagnostic)
        outcome = _outcome(status) if status else default
        out.append(RecipientStatus(address, None, action if outcome != "temporary" else
                                   "delayed", status, outcome, diagnostic))
    return tuple(out)


_EXIM_START = re.compile(r"^(?:A message that you sent could not be delivered|"
                         r"A message that you sent has not yet been delivered).*?"
                         r"(?:address\(es\) failed|address\(es\)):?[ \t]*$",
                         re.MULTILINE | re.DOTALL)
_EXIM_END = re.compile(r"^-{3,} This is a copy of|^-{3,} The header of the original|"
                       r"^Reporting-MTA:", re.MULTILINE)
_EXIM_ENTRY = re.compile(r"^ {1,4}(?P<address>[^\s@]+@[^\s]+?)[ \t]*$")


def _exim(msg: InboundMessage, text: str) -> tuple[RecipientStatus, ...]:
    entries = _entries(text, _EXIM_START, _EXIM_END, _EXIM_ENTRY)
    if not entries:
        entries = [(a, "") for v in msg.headers.get_all("x-failed-recipients")
                   for a in _ADDRESS.findall(v)][:100]
    delayed = "has not yet been delivered" in text or "delayed" in msg.subject.lower()
    return _recipients(entries, "temporary" if delayed else "permanent")


_QMAIL_START = re.compile(r"^Hi\. This is the qmail-send program at .*?\n\s*\n",
                          re.MULTILINE | re.DOTALL)
_QMAIL_END = re.compile(r"^--- Below this line is a copy of the message|^--- Enclosed",
                        re.MULTILINE)
_QMAIL_ENTRY = re.compile(r"^<(?P<address>[^<>\s]+@[^<>\s]+)>:")


def _qmail(msg: InboundMessage, text: str) -> tuple[RecipientStatus, ...]:
    entries = _entries(text, _QMAIL_START, _QMAIL_END, _QMAIL_ENTRY)
    temporary = "temporary" in text[:2000].lower() and "permanent error" not in text[:2000]
    return _recipients(entries, "temporary" if temporary else "permanent")


_GMAIL_START = re.compile(r"^Delivery to the following recipients? (?:failed permanently|"
                          r"has been delayed|failed):?[ \t]*$", re.MULTILINE)
_GMAIL_END = re.compile(r"^-{3,} Original message -{3,}", re.MULTILINE)
_GMAIL_ENTRY = re.compile(r"^\s+(?P<address>[^\s@]+@[^\s]+)[ \t]*$")



_GMAIL_DETAILS = re.compile(r"^Technical details of (?:permanent|temporary) failure:(.*?)"
                            r"(?:^-{3,} Original message -{3,}|\Z)",
                            re.MULTILINE | re.DOTALL)


def _gmail(msg: InboundMessage, text: str) -> tuple[RecipientStatus, ...]:
    """Gmail's plain-text notice: the addresses, then one "Technical details" section."""
    entries = _entries(text, _GMAIL_START, _GMAIL_END, _GMAIL_ENTRY)
    details = _GMAIL_DETAILS.search(text[:50_000])
    if details:
        entries = [(address, details.group(1)[:2000]) for address, _ in entries]
    delayed = "has been delayed" in text
    return _recipients(entries, "temporary" if delayed else "permanent")


_EXCHANGE_START = re.compile(r"^(?:Delivery has failed to these recipients or groups:|"
                             r"Your message to \S+ couldn't be delivered\.|"
                             r"Diagnostic information for administrators:)",
                             re.MULTILINE)
_EXCHANGE_END = re.compile(r"^Original message headers:", re.MULTILINE)
_EXCHANGE_ENTRY = re.compile(r"^(?P<address>[^\s<>@]+@[^\s<>]+?)(?:<mailto:[^>]*>)?[ \t]*$")


def _exchange(msg: InboundMessage, text: str) -> tuple[RecipientStatus, ...]:
    admin = text.find("Diagnostic information for administrators:")
    source = text[admin:] if admin >= 0 else text
    entries = _entries(source, _EXCHANGE_START, _EXCHANGE_END, _EXCHANGE_ENTRY)
    if not entries:
        found = re.search(r"Your message to (\S+@\S+?) couldn't be delivered", text)
        code = re.search(r"Status code: ([^\n]*)", text)
        entries = [(found.group(1), code.group(1) if code else "")] if found else []
    merged: dict[str, str] = {}
    for address, diagnostic in entries:  # an address may appear above and below
        merged[address.lower()] = (merged.get(address.lower(), "") + " " + diagnostic).strip()
    return _recipients(list(merged.items()), "permanent")


def _flufl(msg: InboundMessage) -> tuple[RecipientStatus, ...]:
    if msg.size > FLUFL_MAX_SIZE or not msg.mime_complete:
        return ()  # the standard parser is safe only on small trees within the limits
    try:
        tree = email.message_from_bytes(msg.raw, policy=policy.compat32)
        temporary, permanent = all_failures(tree)
    except Exception:  # a detector's bug is not ours to crash on
        return ()
    out = [RecipientStatus(a.decode("ascii", "replace"), None, "failed", None, "permanent", "")
           for a in sorted(permanent)]
    out += [RecipientStatus(a.decode("ascii", "replace"), None, "delayed", None, "temporary",
                            "") for a in sorted(temporary - permanent)]
    return tuple(out[:100])


# ---------------------------------------------------------------- complaints


def parse_complaint(msg: InboundMessage) -> ComplaintReport | None:
    """The ARF feedback report in ``msg`` (RFC 5965), or None."""
    feedback = next((p for p in msg.root.walk() if p.content_type == "message/feedback-report"),
                    None)
    if feedback is None:
        return None
    fields = _HEADER_PARSER.parsebytes(feedback.decoded(64 * 1024).strip() + b"\n")
    original_to: tuple[str, ...] = ()
    for part in msg.root.walk():
        if part.content_type in ("message/rfc822", "message/global") and part.children:
            headers = part.children[0].headers
        elif part.content_type in ("text/rfc822-headers", "message/global-headers"):
            headers = _HEADER_PARSER.parsebytes(part.decoded(256 * 1024))
        else:
            continue
        original_to = tuple(dict.fromkeys(
            a for v in headers.get_all("to", []) for a in _ADDRESS.findall(str(v))))
        break
    return ComplaintReport(
        feedback_type=header_text(fields.get("feedback-type"), 40).lower() or "abuse",
        user_agent=header_text(fields.get("user-agent"), 200),
        original_message_id=_original_message_id(msg),
        original_rcpt_to=tuple(dict.fromkeys(
            a for v in fields.get_all("original-rcpt-to", []) for a in _ADDRESS.findall(str(v)))),
        original_to=original_to,
        original_mail_from=next(iter(_ADDRESS.findall(str(fields.get("original-mail-from",
                                                                      "")))), None),
        report_to=_report_to(msg),
        source_ip=header_text(fields.get("source-ip"), 60),
        reported_domain=header_text(fields.get("reported-domain"), 255),
    )

