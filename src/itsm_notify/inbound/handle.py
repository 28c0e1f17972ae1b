"""The inbound handler: what intake calls once per message (``receive``, ``fetch-mail``)
and ``inbound reprocess`` calls again on a stored one.

One transaction per message, in this order:

1. record the message by its key (``store.record_message``): a message seen before
   (an MTA retry, an IMAP re-fetch, a second ``fetch-mail``) stops here, and nothing
   else is done;
2. classify it (``classify``: delivery report, complaint, auto-reply, reply, new mail);
3. act, through the source's writes: a bounce fails its delivery and suppresses the
   address, a complaint suppresses it, a reply becomes a public comment and a
   ``comment_added`` event (actor: its author, who is not told), new mail a ticket and
   a ``ticket_created`` event;
4. set the record's outcome (``states.InboundOutcome``) and reason, keeping the raw
   bytes of what did not become a comment, a ticket or a report's effect.

Anything that raises rolls the whole transaction back; the message is then recorded as
``rejected`` with its reason in a fresh transaction, raw bytes kept, to be listed and
re-processed. A database that cannot be used is a temporary failure: the message stays
in the mailbox, or the MTA is told 75 and retries.

Comments and tickets are written through the source's writer (source/writes.py): the
contract's tables, django-helpdesk's follow-ups and tickets, django-spire's tickets
(spire has no comments: a reply to one is kept, ``unmatched``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError

from ..compose.render import address_digest
from ..config import Settings
from ..errors import ConfigError, DatabaseUnavailable
from ..source import load_writer
from ..source.writes import Opening, Person, Refused, Reply, SourceWriter, Written
from ..states import ACTED_ON, InboundOutcome
from ..storage.database import describe_exception, raise_if_database_down, utcnow
from ..storage.deliveries import (
    EmailDelivery,
    email_deliveries_of_event,
    fail_delivery,
    suppress,
)
from ..storage.outbox import event_ticket, write_event
from ..storage.schema import inbound_messages
from .classify import (
    TICKET_NUMBER_TAG,
    AutoReplyMail,
    ComplaintMail,
    DeliveryReportMail,
    Mailboxes,
    NewMail,
    ReplyMail,
    TicketKey,
    classify,
    is_to_helpdesk,
    our_message_id_key,
    sender_trust,
)
from .handling import HandleResult, Outcome, ReceivedMail
from .message import InboundMessage, Limits, one_line, parse_message
from .quotes import extract_reply
from .reports import DeliveryReport, RecipientStatus
from .store import REJECTED, STDIN, record_message, update_record
from .tokens import VerpTarget

logger = logging.getLogger("itsm_notify.inbound")

MAX_TITLE = 500
MAX_ERROR = 500
_SMTP_CODE = re.compile(r"(?<![\d.])([45][0-5]\d)(?![\d.])")
_SEVERITY = {"permanent": 0, "temporary": 1, "delivered": 2, "unknown": 3}


@dataclass(frozen=True)
class InboundPolicy:
    """What the handler is told by the settings."""

    mailboxes: Mailboxes
    trusted_authserv_ids: tuple[str, ...] = ()
    unknown_reply: str = "refuse"
    """``refuse`` or ``quarantine``: a reply from someone not allowed on the ticket."""
    unknown_sender: str = "create"
    """``create``, ``refuse`` or ``fallback:<username>``: new mail from a stranger."""

    @classmethod
    def from_settings(cls, settings: Settings, subject_patterns: tuple[re.Pattern[str], ...]
                      = (TICKET_NUMBER_TAG,)) -> InboundPolicy:
        """The policy of ``settings``; ``subject_patterns``: the source's subject tags."""
        def bare(value: str | None) -> str | None:
            return getaddresses([value])[0][1] or None if value else None

        return cls(
            mailboxes=Mailboxes(
                own_domains=(settings.from_domain,),
                bounce_address=settings.bounce_address,
                reply_address=bare(settings.reply_to_email),
                own_addresses=tuple(a for a in (bare(settings.default_from_email),) if a),
                helpdesk_addresses=settings.inbound_addresses,
                secrets=settings.secret_key,
                subject_patterns=subject_patterns),
            trusted_authserv_ids=settings.inbound_trusted_authserv_ids,
            unknown_reply=settings.inbound_unknown_reply,
            unknown_sender=settings.inbound_unknown_sender)


@dataclass(frozen=True)
class Disposition:
    """What became of one message: its record's outcome, reason and links."""

    outcome: InboundOutcome
    reason: str
    ticket_id: int | None = None
    comment_id: int | None = None
    event_id: int | None = None
    cut_text: str | None = None

    def raw_to_keep(self, raw: bytes) -> bytes | None:
        """A message that was acted on is in the database already; any other is kept."""
        return None if self.outcome in ACTED_ON else raw


@dataclass(frozen=True)
class Reprocessed:
    """What ``reprocess`` made of one stored message (``outcome`` None: not re-run)."""

    record_id: int
    outcome: InboundOutcome | None
    reason: str


class InboundHandler:
    """Handles inbound messages against one database (the intake's ``Handler``)."""

    def __init__(self, settings: Settings, engine: Engine, *,
                 clock: Callable[[], datetime] = utcnow,
                 policy: InboundPolicy | None = None) -> None:
        self.writer: SourceWriter = load_writer(settings)
        self.engine = engine
        self.clock = clock
        self.policy = policy or InboundPolicy.from_settings(settings,
                                                            self.writer.subject_patterns)
        # the parser reads whole whatever intake accepted whole (ITSM_INBOUND_MAX_BYTES)
        self.limits = Limits(max_size=settings.inbound_max_bytes)

    def parse(self, raw: bytes) -> InboundMessage:
        return parse_message(raw, limits=self.limits)

    # ------------------------------------------------------------ entry points

    def handle(self, raw: bytes, *, source: str = STDIN) -> HandleResult:
        """Handle one message given as bytes."""
        return self(ReceivedMail.from_bytes(raw, source=source))

    def __call__(self, message: ReceivedMail) -> HandleResult:
        if message.too_large:
            return self._record_rejected(message, message.too_large_reason)
        result = self._handle_once(message)
        if result.outcome == Outcome.TEMPORARY_FAILURE and not result.outage:
            # a deadlock between racing handlers of one message (MariaDB picks a victim
            # when three insert one key and the first rolls back): once more, at once
            result = self._handle_once(message)
        return result

    def _handle_once(self, message: ReceivedMail) -> HandleResult:
        msg = self.parse(message.raw)
        try:
            with self.engine.connect() as conn:
                recorded = record_message(
                    conn, message_key=message.key, source=message.source, size=message.size,
                    outcome=REJECTED, reason="being handled", message_id=msg.message_id,
                    from_address=_sender(msg), subject=msg.subject, received_at=self.clock())
                if not recorded.new:
                    conn.rollback()
                    return HandleResult.already_seen(
                        rejected_before=recorded.previous_outcome == REJECTED,
                        recorded_at=recorded.previous_received_at)
                assert recorded.id is not None
                done = self._act(conn, msg)
                _store(conn, recorded.id, done, message.raw)
                conn.commit()
        except ConfigError:
            raise
        except Exception as exc:
            if (failure := self._temporary_failure(exc)) is not None:
                return failure
            logger.debug("the handler's traceback", exc_info=True)
            return self._record_rejected(message, _failure_reason(exc))
        return HandleResult.handled(f"{done.outcome}: {done.reason}")

    def reprocess(self, record_id: int) -> Reprocessed:
        """Run a stored message through the handler again (after its sender was added as
        a user, say). Only messages not acted on, and kept whole, can be: re-running a
        comment or a bounce would act twice."""
        row = None
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(inbound_messages.c.outcome, inbound_messages.c.raw,
                                          inbound_messages.c.size)
                                   .where(inbound_messages.c.id == record_id)
                                   .with_for_update()).first()
                refusal = _not_reprocessable(row)
                if refusal is not None:
                    return Reprocessed(record_id, None, refusal)
                assert row is not None
                done = self._act(conn, self.parse(row.raw))
                _store(conn, record_id, done, row.raw, updated_at=self.clock())
                conn.commit()
        except ConfigError:
            raise
        except Exception as exc:
            if self._temporary_failure(exc) is not None:
                raise DatabaseUnavailable(f"The database could not be used "
                                          f"({describe_exception(exc)}): try again.") from None
            reason = _failure_reason(exc)
            with self.engine.begin() as conn:
                update_record(conn, record_id, outcome=InboundOutcome.REJECTED, reason=reason,
                              raw=row.raw if row is not None else None,
                              updated_at=self.clock())
            logger.warning("inbound record %s re-processed: rejected: %s", record_id, reason)
            return Reprocessed(record_id, InboundOutcome.REJECTED, reason)
        logger.info("inbound record %s re-processed: %s: %s", record_id, done.outcome,
                    done.reason)
        return Reprocessed(record_id, done.outcome, done.reason)

    # ------------------------------------------------------------ failures

    def _temporary_failure(self, exc: Exception) -> HandleResult | None:
        """A database problem that may pass (down, a lock timeout, a deadlock): the
        message stays where it is. None for anything else (the message's own fault)."""
        if not isinstance(exc, DBAPIError):
            return None
        try:
            raise_if_database_down(self.engine)
        except DatabaseUnavailable as down:
            return HandleResult.temporary_failure(str(down))
        if isinstance(exc, OperationalError):
            # not an outage: this message waits for the next run, the others go on
            return HandleResult(Outcome.TEMPORARY_FAILURE,
                                f"the database refused for now ({describe_exception(exc)})")
        return None

    def _record_rejected(self, mail: ReceivedMail, reason: str) -> HandleResult:
        """Store a message that could not be handled, with its reason and raw bytes, in
        a transaction of its own."""
        msg = self.parse(mail.raw)
        try:
            with self.engine.connect() as conn:
                recorded = record_message(
                    conn, message_key=mail.key, source=mail.source, size=mail.size,
                    outcome=REJECTED, reason=reason, message_id=msg.message_id,
                    from_address=_sender(msg), subject=msg.subject, raw=mail.raw,
                    received_at=self.clock())
                conn.commit()
        except Exception as exc:
            failure = self._temporary_failure(exc)
            return failure or HandleResult.temporary_failure(
                f"it could not be stored ({describe_exception(exc)})")
        if not recorded.new:
            return HandleResult.already_seen(
                rejected_before=recorded.previous_outcome == REJECTED,
                recorded_at=recorded.previous_received_at)
        return HandleResult.rejected(reason)

    # ------------------------------------------------------------ deciding

    def _act(self, conn: Connection, msg: InboundMessage) -> Disposition:
        found = classify(msg, self.policy.mailboxes)
        match found:
            case DeliveryReportMail():
                return self._delivery_report(conn, found)
            case ComplaintMail():
                return self._complaint(conn, found)
            case AutoReplyMail():
                return Disposition(InboundOutcome.OWN_MAIL if found.own
                                   else InboundOutcome.AUTO_REPLY, found.reason)
            case ReplyMail():
                return self._reply(conn, msg, found)
            case NewMail():
                return self._new_mail(conn, msg, found.reason, found.to_helpdesk)
        raise AssertionError(f"unknown classification {found!r}")  # pragma: no cover

    def _delivery_report(self, conn: Connection, found: DeliveryReportMail) -> Disposition:
        report = found.report
        if report is None:
            return Disposition(InboundOutcome.IGNORED, found.reason)
        reported = [*(r.address for r in report.recipients),
                    *(r.original_recipient for r in report.recipients if r.original_recipient)]
        match = self._find_delivery(conn, found.delivery, report.original_message_id, reported)
        if match is None:
            return Disposition(InboundOutcome.UNMATCHED, f"{found.reason} It names none of our "
                               f"deliveries (no valid VERP address, or no delivery with its "
                               f"Message-ID to a reported recipient): no action.")
        delivery, how = match
        status = _status_for(report, delivery.recipient)
        what = f"delivery {delivery.id} (event {delivery.event_id}, {delivery.recipient})"
        if status.outcome == "permanent":
            error = one_line(f"bounced: {status.status or 'permanent failure'} "
                             f"{status.diagnostic}", MAX_ERROR)
            code = _smtp_code(status.diagnostic)
            now = self.clock()
            fail_delivery(conn, delivery.id, error, code, now)
            suppress(conn, delivery.recipient, error, code, now)
            return Disposition(InboundOutcome.BOUNCE, f"{found.reason} Matched {what} by {how}: "
                               f"failed, and the address is suppressed.")
        if status.outcome == "temporary":
            return Disposition(InboundOutcome.DELAY, f"{found.reason} Matched {what} by {how}: "
                               f"delayed ({status.status or '4.x.x'}), no action.")
        return Disposition(InboundOutcome.IGNORED, f"{found.reason} Matched {what} by {how}: "
                           f"it reports {status.outcome}, no action.")

    def _complaint(self, conn: Connection, found: ComplaintMail) -> Disposition:
        report = found.report
        match = self._find_delivery(conn, found.delivery, report.original_message_id,
                                    [*report.original_rcpt_to, *report.original_to])
        if match is None:
            return Disposition(InboundOutcome.UNMATCHED, f"{found.reason} It names none of our "
                               f"deliveries (the recipient may be redacted): no action.")
        delivery, how = match
        suppress(conn, delivery.recipient, one_line(found.reason, MAX_ERROR), None, self.clock())
        return Disposition(InboundOutcome.COMPLAINT, f"{found.reason} Matched delivery "
                           f"{delivery.id} ({delivery.recipient}) by {how}: the address is "
                           f"suppressed.")

    def _find_delivery(self, conn: Connection, verp: VerpTarget | None,
                       original_message_id: str | None,
                       reported: Iterable[str]) -> tuple[EmailDelivery, str] | None:
        """The email delivery a report is about, and how it was found: by its signed VERP
        return path, else by the original Message-ID, but then only when the report names
        that delivery's recipient (a forged report cannot fail someone else's mail)."""
        if verp is not None:
            for delivery in email_deliveries_of_event(conn, verp.event_id):
                if address_digest(delivery.recipient) == verp.recipient_digest:
                    return delivery, "its VERP return path"
        if not original_message_id:
            return None
        key = our_message_id_key(original_message_id,
                                 self.policy.mailboxes.own_domains_lower, "in-reply-to")
        event_id = _event_id(key)
        if event_id is None:
            return None
        recipients = {address.strip().lower() for address in reported}
        wanted = f"<{original_message_id}>".lower()
        for delivery in email_deliveries_of_event(conn, event_id):
            if (delivery.message_id or "").lower() == wanted and \
                    delivery.recipient.lower() in recipients:
                return delivery, "the original Message-ID and recipient"
        return None

    def _reply(self, conn: Connection, msg: InboundMessage, found: ReplyMail) -> Disposition:
        resolved = self._resolve_ticket(conn, found.keys)
        if resolved is None:
            if any(key.kind != "number" for key in found.keys):
                named = ", ".join(f"{k.kind} {k.value}" for k in found.keys[:3])
                return Disposition(InboundOutcome.UNMATCHED, f"A reply to our mail about "
                                   f"{named}, which no longer exists: no comment.")
            # only a subject tag that is no ticket's number: new mail after all
            return self._new_mail(conn, msg, "New mail whose subject tag names no ticket.",
                                  is_to_helpdesk(msg, self.policy.mailboxes))
        ticket_id, key = resolved
        trust = sender_trust(msg, self.policy.trusted_authserv_ids)
        if trust.refused:
            return Disposition(InboundOutcome.REFUSED, f"A reply to ticket {ticket_id} from "
                               f"{msg.from_address or 'an unknown sender'}: {trust.reason}",
                               ticket_id)
        comments = self.writer.comments
        if isinstance(comments, Refused):
            return Disposition(InboundOutcome.UNMATCHED, f"A reply to ticket {ticket_id}, "
                               f"matched by {key.source}: {comments.reason}", ticket_id)
        author = comments.reply_author(conn, msg.from_address) if msg.from_address else None
        if author is None:
            return self._not_allowed(ticket_id, f"{msg.from_address or 'the sender'} is no "
                                                f"active user of the help desk")
        if not comments.may_write(conn, ticket_id, author):
            return self._not_allowed(ticket_id, f"{author.label} is not on the ticket")
        reply = extract_reply(msg.text)
        if not reply.new.strip():
            return Disposition(InboundOutcome.IGNORED, f"A reply by {author.name} to ticket "
                               f"{ticket_id} with no new text (only quotes or a signature).",
                               ticket_id, cut_text=reply.cut)
        written = comments.add_reply(conn, Reply(ticket_id, author, reply.new.strip(),
                                                 msg.message_id))
        event_id = self._write_events(conn, written)
        note = f" ({written.note})" if written.note else ""
        return Disposition(InboundOutcome.COMMENT, f"A public comment by {author.name} on "
                           f"ticket {written.ticket_id}{note}, matched by {key.source}.",
                           written.ticket_id, written.row_id, event_id, reply.cut or None)

    def _not_allowed(self, ticket_id: int, why: str) -> Disposition:
        outcome = InboundOutcome.QUARANTINED if self.policy.unknown_reply == "quarantine" \
            else InboundOutcome.REFUSED
        return Disposition(outcome, f"A reply to ticket {ticket_id}, but {why}: no comment "
                                    f"(ITSM_INBOUND_UNKNOWN_REPLY={self.policy.unknown_reply}).",
                           ticket_id)

    def _new_mail(self, conn: Connection, msg: InboundMessage, reason: str,
                  to_helpdesk: bool) -> Disposition:
        if not to_helpdesk:
            return Disposition(InboundOutcome.IGNORED, reason)
        trust = sender_trust(msg, self.policy.trusted_authserv_ids)
        if trust.refused:
            return Disposition(InboundOutcome.REFUSED, f"{reason} {trust.reason}")
        if not msg.from_address:
            return Disposition(InboundOutcome.REFUSED, f"{reason} It names no single sender "
                                                       f"address: no ticket.")
        requester = self.writer.account(conn, msg.from_address) or \
            self._unknown_sender(conn, msg)
        if isinstance(requester, Refused):
            return Disposition(InboundOutcome.REFUSED, f"{reason} {requester.reason}")
        title = one_line(msg.subject, MAX_TITLE) or "(no subject)"
        written = self.writer.open_ticket(conn, Opening(title, msg.text.strip(), requester,
                                                        msg.message_id))
        if isinstance(written, Refused):
            return Disposition(InboundOutcome.REFUSED, f"{reason} {written.reason}")
        event_id = self._write_events(conn, written)
        return Disposition(InboundOutcome.TICKET, f"{reason} Opened ticket {written.number} "
                           f"for {msg.from_address}.", written.ticket_id, event_id=event_id)

    def _unknown_sender(self, conn: Connection, msg: InboundMessage) -> Person | Refused:
        """The requester for a sender no user has, by ITSM_INBOUND_UNKNOWN_SENDER."""
        assert msg.from_address is not None
        policy = self.policy.unknown_sender
        if policy == "create":
            return self.writer.stranger(conn, msg.from_address, msg.from_name)
        if policy.startswith("fallback:"):
            username = policy.partition(":")[2]
            fallback = self.writer.account_named(conn, username)
            if fallback is None:
                raise ConfigError(f"ITSM_INBOUND_UNKNOWN_SENDER names the fallback requester "
                                  f"{username!r}, who is no active user: fix its value.")
            return fallback
        return Refused(f"{msg.from_address} is no user of the help desk "
                       f"(ITSM_INBOUND_UNKNOWN_SENDER=refuse).")

    @staticmethod
    def _write_events(conn: Connection, written: Written) -> int | None:
        """The outbox events a write calls for, in the same transaction; the last one's
        id (a reply's ``comment_added``)."""
        event_id = None
        for event in written.events:
            event_id = write_event(conn, event.event_type, written.ticket_id, event.actor_id,
                                   event.payload)
        return event_id

    def _resolve_ticket(self, conn: Connection, keys: Iterable[TicketKey]
                        ) -> tuple[int, TicketKey] | None:
        """The first key, in the classifier's order, that names an existing ticket."""
        for key in keys:
            ticket_id: int | None = None
            if key.kind == "event":
                event_id = _event_id(key)
                ticket_id = event_ticket(conn, event_id) if event_id is not None else None
                if ticket_id is not None and not self.writer.ticket_exists(conn, ticket_id):
                    ticket_id = None  # deleted since
            elif key.kind == "ticket" and key.value.isdigit() and int(key.value) < 2**31:
                ticket_id = int(key.value) if self.writer.ticket_exists(conn, int(key.value)) \
                    else None
            elif key.kind == "number":
                ticket_id = self.writer.find_tagged_ticket(conn, key)
            if ticket_id is not None:
                return ticket_id, key
        return None


# ---------------------------------------------------------------- helpers


def _store(conn: Connection, record_id: int, done: Disposition, raw: bytes, *,
           updated_at: datetime | None = None) -> None:
    update_record(conn, record_id, outcome=done.outcome, reason=done.reason,
                  raw=done.raw_to_keep(raw), ticket_id=done.ticket_id,
                  comment_id=done.comment_id, event_id=done.event_id,
                  cut_text=done.cut_text, updated_at=updated_at)


def _not_reprocessable(row: object | None) -> str | None:
    if row is None:
        return "There is no such inbound message."
    outcome, raw, size = row.outcome, row.raw, row.size  # type: ignore[attr-defined]
    if outcome in ACTED_ON:
        return f"It was acted on already ({outcome}): re-running it would act twice."
    if raw is None:
        return "Its raw bytes were not kept."
    if len(raw) < size:
        return ("Only part of it was kept (it was too large): take it from the mailbox's "
                "failed folder instead.")
    return None


def _failure_reason(exc: BaseException) -> str:
    return (f"Handling it failed ({describe_exception(exc)}); it is stored to be "
            f"re-processed with 'itsm-notify inbound reprocess'.")


def _sender(msg: InboundMessage) -> str | None:
    return msg.from_address or (msg.headers.get("from") or None)


def _event_id(key: TicketKey | None) -> int | None:
    if key is None or key.kind != "event" or not key.value.isdigit():
        return None
    value = int(key.value)
    return value if value < 2**63 else None


def _status_for(report: DeliveryReport, address: str) -> RecipientStatus:
    """The report's line for ``address``; else (a VERP match whose final recipient was
    another address: a forward) its most severe line."""
    wanted = address.strip().lower()
    for status in report.recipients:
        if wanted in (status.address.lower(), (status.original_recipient or "").lower()):
            return status
    return min(report.recipients, key=lambda s: _SEVERITY[s.outcome])


def _smtp_code(diagnostic: str) -> int | None:
    found = _SMTP_CODE.search(diagnostic)
    return int(found.group(1)) if found else None
