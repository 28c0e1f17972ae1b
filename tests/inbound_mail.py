"""Inbound messages as real senders write them, for the end-to-end tests: a reply the
way Gmail and Outlook quote the email they answer, a Postfix DSN, an ARF complaint, an
Exchange out-of-office, new mail. Each builds on what the tool really sent (a message
the SMTP test server received), so Message-IDs, VERP and reply addresses are real."""

from __future__ import annotations

import html
import itertools
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses

from smtp_server import ReceivedMessage

_IDS = itertools.count(1)
DATE = format_datetime(datetime(2026, 12, 8, 9, 30, tzinfo=UTC))


def _new_id(domain: str = "mail.gmail.com") -> str:
    return f"<CAGx{next(_IDS):06d}q2cF0b1zK3hVv8V2n0Yc5o1p@{domain}>"


def plain_text(sent: ReceivedMessage) -> str:
    body = sent.message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def reply_address(sent: ReceivedMessage) -> str:
    """Where a mail client sends a reply: Reply-To, else From."""
    value = sent.message["Reply-To"] or sent.message["From"]
    return getaddresses([str(value)])[0][1]


def gmail_reply(sent: ReceivedMessage, author: str, answer: str, *,
                threading: bool = True, subject: str | None = None,
                extra_headers: tuple[str, ...] = ()) -> bytes:
    """A reply from Gmail: plain and HTML, the sent text quoted under "On ... wrote:"."""
    quoted = "\n".join(f"> {line}" if line else ">" for line in
                       plain_text(sent).splitlines())
    boundary = "000000000000a1b2c3d4e5f6"
    heads = [f"From: {author}", f"To: {reply_address(sent)}",
             f"Subject: {subject or 'Re: ' + str(sent.subject)}", f"Date: {DATE}",
             f"Message-ID: {_new_id()}", "MIME-Version: 1.0"]
    if threading:
        heads += [f"In-Reply-To: {sent.message['Message-ID']}",
                  f"References: {sent.message['References'] or ''} {sent.message['Message-ID']}"]
    heads += [*extra_headers, f'Content-Type: multipart/alternative; boundary="{boundary}"']
    answer_html = "".join(f"<div>{html.escape(line)}</div>" for line in answer.splitlines())
    parts = [
        "\r\n".join(heads), "",
        f"--{boundary}", 'Content-Type: text/plain; charset="UTF-8"', "",
        answer, "", "On Tue, 8 Dec 2026 at 09:13, Help Desk <helpdesk@desk.example> wrote:",
        "", quoted, "",
        f"--{boundary}", 'Content-Type: text/html; charset="UTF-8"', "",
        f'<div dir="ltr">{answer_html}</div><br><div class="gmail_quote">'
        f'<div class="gmail_attr">On Tue, 8 Dec 2026 at 09:13, Help Desk wrote:<br></div>'
        f"<blockquote>{html.escape(plain_text(sent))}</blockquote></div>", "",
        f"--{boundary}--", ""]
    return "\r\n".join(parts).encode()


def outlook_reply(sent: ReceivedMessage, author: str, answer: str) -> bytes:
    """A reply from Outlook desktop without In-Reply-To or References (as some clients and
    gateways send them): the answer, then Outlook's From/Sent/To/Subject block."""
    quoted = plain_text(sent)
    return "\r\n".join([
        f"From: {author}", f"To: {reply_address(sent)}", f"Subject: RE: {sent.subject}",
        f"Date: {DATE}", f"Message-ID: {_new_id('EXCH01.corp.example')}",
        "MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"', "",
        answer, "", "________________________________",
        "From: Help Desk <helpdesk@desk.example>", "Sent: Tuesday, December 8, 2026 09:13",
        f"To: {author}", f"Subject: {sent.subject}", "", quoted, ""]).encode()


def plain_mail(author: str, to: str, subject: str, body: str, *,
               extra_headers: tuple[str, ...] = (), content_type: str = "text/plain") -> bytes:
    return "\r\n".join([f"From: {author}", f"To: {to}", f"Subject: {subject}",
                        f"Date: {DATE}", f"Message-ID: {_new_id('example.com')}",
                        *extra_headers, "MIME-Version: 1.0",
                        f'Content-Type: {content_type}; charset="utf-8"', "", body,
                        ""]).encode()


def postfix_dsn(to: str, recipient: str, status: str, original_message_id: str,
                diagnostic: str) -> bytes:
    """Postfix's RFC 3464 report, as it returns it to the envelope sender ``to``."""
    failed = status.startswith("5")
    boundary = "4TqYc41Gz1z9sWN.1765186382/mail.example.net"
    return "\r\n".join([
        "Return-Path: <>", f"Delivered-To: {to}", f"Date: {DATE}",
        "From: MAILER-DAEMON@mail.example.net (Mail Delivery System)",
        "Subject: " + ("Undelivered Mail Returned to Sender" if failed
                       else "Delayed Mail (still being retried)"),
        f"To: {to}", "Auto-Submitted: auto-replied", "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        f"Message-Id: {_new_id('mail.example.net')}", "",
        f"--{boundary}", "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8", "",
        "This is the mail system at host mail.example.net.", "",
        f"<{recipient}>: {diagnostic}", "",
        f"--{boundary}", "Content-Description: Delivery report",
        "Content-Type: message/delivery-status", "",
        "Reporting-MTA: dns; mail.example.net", "",
        f"Final-Recipient: rfc822; {recipient}", f"Original-Recipient: rfc822;{recipient}",
        f"Action: {'failed' if failed else 'delayed'}", f"Status: {status}",
        f"Diagnostic-Code: smtp; {diagnostic}", "",
        f"--{boundary}", "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers", "",
        "From: Help Desk <helpdesk@desk.example>", f"To: <{recipient}>",
        "Subject: New Comment on Ticket", f"Message-ID: {original_message_id}", "",
        f"--{boundary}--", ""]).encode()


def arf_complaint(to: str, recipient: str, original_message_id: str) -> bytes:
    boundary = "part1_13d.2e68ed54_boundary"
    return "\r\n".join([
        "Return-Path: <>", f"Delivered-To: {to}", "From: <staff@hotmail.example>",
        f"Date: {DATE}", "Subject: FW: complaint", f"To: {to}", "MIME-Version: 1.0",
        f"Message-ID: {_new_id('hotmail.example')}",
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"',
        "", f"--{boundary}", 'Content-Type: text/plain; charset="US-ASCII"', "",
        "This is an email abuse report.", "",
        f"--{boundary}", "Content-Type: message/feedback-report", "",
        "Feedback-Type: abuse", "User-Agent: SomeGenerator/1.0", "Version: 1",
        f"Original-Rcpt-To: <{recipient}>", "",
        f"--{boundary}", "Content-Type: message/rfc822", "Content-Disposition: inline", "",
        "From: Help Desk <helpdesk@desk.example>", f"To: <{recipient}>",
        "Subject: New Comment on Ticket", f"Message-ID: {original_message_id}", "",
        "Hello,", "", f"--{boundary}--", ""]).encode()


def exchange_out_of_office(sent: ReceivedMessage, author: str) -> bytes:
    return "\r\n".join([
        f"From: {author}", f"To: {reply_address(sent)}",
        f"Subject: Automatic reply: {sent.subject}", f"Date: {DATE}",
        f"Message-ID: {_new_id('EXCH01.corp.example')}",
        f"In-Reply-To: {sent.message['Message-ID']}",
        "Auto-Submitted: auto-replied", "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"', "",
        "I am out of the office until Monday.", ""]).encode()
