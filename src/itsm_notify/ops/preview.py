"""``itsm-notify preview``: every email the tool sends, in every language, as a folder of
HTML pages with an index (a gallery, like Rails' mailer previews), and ``--serve`` to
browse it on localhost.

A page shows one email as its reader gets it: its headers, the HTML part (in a
sandboxed iframe) beside the text part, and links to the same email in the other
languages. The emails are the real ones: the same Renderer and composition as
send-pending (``compose_email``), the test email as test-email builds it, each parsed
back from its bytes as a mail client reads them. The sample data is built here, in
memory: a preview never reads a database nor talks to a mail server. ``--event ID``
renders a real outbox event instead, loaded through the source as send-pending loads
it, for each of its recipients.
"""

from __future__ import annotations

import dataclasses
import email
import json
import signal
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from babel import Locale, UnknownLocaleError
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateSyntaxError
from sqlalchemy import Engine

from ..compose.i18n import Language, available_languages, catalog_language
from ..compose.render import Renderer, in_app_text, message_id
from ..config import Settings
from ..engine.sender import compose_email, load_batch
from ..errors import ConfigError, EventError
from ..events.audience import EmailRecipient
from ..events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from ..events.types import event_type, parse_payload, resolve
from ..source import load_source, replies_become_comments
from ..storage.database import database_errors, describe_exception, reads
from ..storage.outbox import load_event
from .diagnostics import build_test_message
from .serving import ServedInThread
from .unsubscribe import unsubscribe_url

PAGES = Path(__file__).resolve().with_name("preview_pages")
"""The gallery's own templates (its pages, not emails)."""

SAMPLE_READER = EmailRecipient(address="reader@example.com", name="Sam Reader",
                               first_name="Sam")
"""Who reads an event's email in a preview when its rules name no one."""


@dataclass(frozen=True)
class PreviewPage:
    """One email in one language, as its reader gets it (or why it could not be made)."""

    key: str
    """Names the email across languages: its page is ``<key>.<language>.html``."""
    title: str
    about: str
    language: str
    subject: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    text: str = ""
    html: str = ""
    message: bytes = b""
    error: str | None = None

    @property
    def file(self) -> str:
        return f"{self.key}.{self.language}.html"

    @property
    def eml_file(self) -> str:
        return f"{self.key}.{self.language}.eml"


# ------------------------------------------------------------------ languages


def choose_languages(wanted: str | None) -> tuple[str, ...]:
    """Every language a message can be written in, or the one ``wanted`` names (``pt-BR``
    is ``pt`` when only ``pt`` has a catalog); ConfigError when none has its catalog."""
    return available_languages() if wanted is None else (catalog_language(wanted),)


def language_name(code: str) -> str:
    """A language as its own readers name it: English, Deutsch, français."""
    try:
        name = Locale.parse(code.replace("-", "_")).get_display_name(code.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return code
    return name or code


# ------------------------------------------------------------------ sample data

ALICE = User(1, "alice.lopez", "alice.lopez@example.com", "Alice", "Lopez")
BOB = User(2, "bob.okafor", "bob.okafor@example.com", "Bob", "Okafor")
CAROL = User(3, "carol.nguyen", "carol.nguyen@example.com", "Carol", "Nguyen")
DAVE = User(4, "dave.schmidt", "dave.schmidt@example.com", "Dave", "Schmidt",
            is_manager=True)
ERIN = User(5, "erin.kowalski", "erin.kowalski@example.com", "Erin", "Kowalski")
USERS = {user.id: user for user in (ALICE, BOB, CAROL, DAVE, ERIN)}
NETWORK = Project(7, "Network & VPN", notify_team=True)

VPN_DESCRIPTION = (
    "Since 8:30 this morning everyone on the 3rd floor (Finance) loses the VPN every ten "
    "minutes. Reconnecting works, but Teams calls drop and the SAP session times out.\n\n"
    "- about 25 people affected, on Wi-Fi and on the LAN ports alike\n"
    "- colleagues working from home seem fine\n"
    '- the client says "Peer not responding (code 809)"')

BOB_COMMENT = (
    "Hi Alice,\n\n"
    "we found the cause: during last night's maintenance the idle timeout on the VPN "
    "concentrator was lowered to 600 seconds, which is exactly the ten minutes you see.\n\n"
    "I have set it back to 8 hours. Could you reconnect and tell me whether the drops stop? "
    "If they do not, please send me the client log from %APPDATA%\\VPN\\logs.\n\n"
    "Thanks,\nBob")


def _tickets(now: datetime) -> dict[str, Ticket]:
    """A VPN outage due in three hours, and three tickets overdue by different spans."""
    return {
        "vpn": Ticket(
            id=1042, number="TKT-1042", title="VPN drops every 10 minutes on the 3rd floor",
            description=VPN_DESCRIPTION, status="open", priority="critical", requester_id=1,
            assignee_id=2, project_id=NETWORK.id, due_at=now + timedelta(hours=3),
            created_at=now - timedelta(hours=2)),
        "printer": Ticket(
            id=1017, number="TKT-1017", title="Printer PR-2-EAST jams on every duplex job",
            description="Single-sided jobs print fine.", status="in_progress",
            priority="low", requester_id=5, assignee_id=2, project_id=None,
            due_at=now - timedelta(days=3), created_at=now - timedelta(days=8)),
        "laptop": Ticket(
            id=1031, number="TKT-1031", title="Laptop for a new hire in Sales (starts Monday)",
            description="Standard image, docking station, two monitors.", status="open",
            priority="medium", requester_id=4, assignee_id=2, project_id=None,
            due_at=now - timedelta(hours=5), created_at=now - timedelta(days=4)),
        "mailbox": Ticket(
            id=1039, number="TKT-1039", title="Shared mailbox finance@ receives no outside mail",
            description="Internal mail arrives; mail from customers bounces.", status="open",
            priority="high", requester_id=1, assignee_id=2, project_id=NETWORK.id,
            due_at=now - timedelta(minutes=40), created_at=now - timedelta(days=1)),
    }


def _context(event_id: int, name: str, ticket: Ticket, actor: User | None,
             payload: dict[str, Any], now: datetime, *, tickets: Sequence[Ticket] = (),
             comment: Comment | None = None) -> EventContext:
    """A sample event's context, its payload read as send-pending reads one."""
    raw = json.dumps(payload)
    parsed = parse_payload(name, raw)
    spec = event_type(name)
    return EventContext(
        event=OutboxEvent(id=event_id, event_type=name, ticket_id=ticket.id,
                          actor_id=actor.id if actor else None, payload=raw, created_at=now),
        payload=parsed, ticket=spec.facts(ticket, parsed), users=USERS,
        tickets=tuple(tickets), project=NETWORK if ticket.project_id == NETWORK.id else None,
        team_ids=(BOB.id, CAROL.id), manager_ids=(DAVE.id,), comment=comment,
        public_commenter_ids=(BOB.id,) if comment else ())


def sample_contexts(now: datetime, language: Language) -> list[tuple[str, EventContext]]:
    """One realistic event of every type, as of ``now`` (naive UTC), with what it shows;
    ``language``: the reader's, in which a summary's updates were collected."""
    t = _tickets(now)
    vpn = t["vpn"]
    digest = {"recipient": {"user_id": BOB.id}}
    comment = Comment(77, vpn.id, BOB.id, BOB_COMMENT, False, now - timedelta(minutes=4))
    samples = [
        ("Alice reports a VPN outage; her ticket goes to the network team.",
         _context(501, "ticket_created", vpn, ALICE, {}, now)),
        ("Dave, the service-desk manager, assigns the outage to Bob.",
         _context(502, "ticket_assigned", vpn, DAVE,
                  {"assignee_id": BOB.id, "previous_assignee_id": None}, now)),
        ("Bob starts work on the outage; Alice, who reported it, is told.",
         _context(503, "status_changed", vpn, BOB,
                  {"old_status": "open", "new_status": "in_progress"}, now)),
        ("Bob answers Alice, in several lines.",
         _context(504, "comment_added", vpn, BOB, {"comment_id": comment.id}, now,
                  comment=comment)),
        ("Bob's digest of three tickets overdue by 3 days, 5 hours and 40 minutes.",
         _context(505, "overdue", t["printer"], None,
                  {**digest, "ticket_ids": [t["printer"].id, t["laptop"].id,
                                            t["mailbox"].id], "total": 3},
                  now, tickets=(t["printer"], t["laptop"], t["mailbox"]))),
        ("The VPN outage is due in 3 hours: Bob is warned (the 4h threshold).",
         _context(506, "due_soon", vpn, None,
                  {**digest, "ticket_ids": [vpn.id], "total": 1, "thresholds": ["4h"]}, now)),
        ("Bob's hourly summary: three updates on two tickets.",
         _summary(now, language, t)),
    ]
    return samples


def _summary(now: datetime, language: Language, t: dict[str, Ticket]) -> EventContext:
    """An hourly summary for Bob of what others did since: Carol's note and Alice's reply
    on the outage (in progress by then), Dave's assignment of the laptop; each update's
    text as a summary collects it (the in-app text, in the reader's language)."""
    vpn, laptop = dataclasses.replace(t["vpn"], status="in_progress"), t["laptop"]
    noted, assigned, replied = (now - timedelta(minutes=m) for m in (48, 31, 12))
    note = Comment(78, vpn.id, CAROL.id, "The concentrator's firmware update is scheduled "
                   "for tonight, 22:00 to 22:15.", False, noted)
    reply = Comment(79, vpn.id, ALICE.id, "Still dropping after I reconnected, but only "
                    "every 20 minutes now.", False, replied)
    held = [(noted, _context(510, "comment_added", vpn, CAROL, {"comment_id": note.id}, now,
                             comment=note)),
            (assigned, _context(511, "ticket_assigned", laptop, DAVE, {"assignee_id": BOB.id},
                                now)),
            (replied, _context(512, "comment_added", vpn, ALICE, {"comment_id": reply.id},
                               now, comment=reply))]
    items = [{"ticket_id": ctx.ticket.id, "event_type": ctx.event.event_type,
              "at": at.isoformat(), "text": _collected_text(ctx, language)}
             for at, ctx in held]
    return _context(513, "summary", vpn, None,
                    {"recipient": {"user_id": BOB.id}, "kind": "hourly", "items": items,
                     "total": len(items)}, now, tickets=(vpn, laptop))


def _collected_text(ctx: EventContext, language: Language) -> str:
    return in_app_text(ctx, event_type(ctx.event.event_type).subject(ctx, language),
                       language)[1]


# ------------------------------------------------------------------ rendering


class _Pages:
    """Makes the pages: each email in each language, composed as it is sent."""

    def __init__(self, settings: Settings, now: datetime) -> None:
        self.settings = settings
        self.now = now
        self.renderer = Renderer(settings)
        self.domain = settings.from_domain
        self.tags_replies = replies_become_comments(settings)

    def event(self, key: str, title: str, about: str, ctx: EventContext,
              recipient: EmailRecipient, language: str, ticket_url: str | None = None
              ) -> PreviewPage:
        """``ctx``'s email to ``recipient``, written in ``language``."""
        reader = dataclasses.replace(recipient, locale=language)
        page = PreviewPage(key=key, title=title, about=about, language=language)
        name = ctx.event.event_type
        try:
            unsubscribe = unsubscribe_url(self.settings.site_url, self.settings.secret_key,
                                          reader.user_id, name)
            rendered = self.renderer.render_event(ctx, reader, unsubscribe_url=unsubscribe,
                                                  ticket_url=ticket_url)
            data = compose_email(self.renderer, ctx, reader, rendered,
                                 msg_id=message_id(ctx.event.id, reader.key, self.domain),
                                 domain=self.domain, unsubscribe_url=unsubscribe,
                                 tags_replies=self.tags_replies, now=self.now)
        except Exception as exc:  # a broken template shows on its page; the rest go on
            return dataclasses.replace(page, error=describe_failure(exc))
        return parsed(page, data)

    def test_email(self, address: str, language: str) -> PreviewPage:
        page = PreviewPage(key="test_email", title="test-email",
                           about=f"What itsm-notify test-email {address} sends.",
                           language=language)
        try:
            _, data = build_test_message(self.settings, address, self.now, locale=language)
        except Exception as exc:
            return dataclasses.replace(page, error=describe_failure(exc))
        return parsed(page, data)


def parsed(page: PreviewPage, data: bytes) -> PreviewPage:
    """``page`` with the message ``data`` as a mail client reads it: its headers decoded,
    its text and HTML parts (their lines ended the page's way, not the wire's)."""
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)

    def content(subtype: str) -> str:
        part = msg.get_body((subtype,))
        return part.get_content().replace("\r\n", "\n") if part is not None else ""

    return dataclasses.replace(
        page, subject=str(msg["Subject"] or ""), message=data,
        headers=tuple((name, str(value)) for name, value in msg.items()),
        text=content("plain"), html=content("html"))


def describe_failure(exc: BaseException) -> str:
    """Why an email could not be rendered, with the template line at fault when a
    template is (a template author's usual mistake)."""
    if isinstance(exc, TemplateSyntaxError):
        return f"{exc.filename or exc.name}, line {exc.lineno}: {exc.message}"
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if frame.filename.endswith((".html", ".txt"))]
    where = f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""
    return where + describe_exception(exc)


def sample_pages(settings: Settings, languages: Sequence[str], now: datetime
                 ) -> list[PreviewPage]:
    """Every email type's page in every language, from the sample data; the test email
    last. Who reads each is who its rules name first."""
    pages = _Pages(settings, now)
    made: list[PreviewPage] = []
    for language in languages:
        for about, ctx in sample_contexts(now, pages.renderer.language(language)):
            readers = resolve(ctx, settings).email
            name = ctx.event.event_type
            made.append(pages.event(name, name, about, ctx,
                                    readers[0] if readers else SAMPLE_READER, language))
        made.append(pages.test_email(BOB.email or "", language))
    return _by_email(made)


def event_pages(settings: Settings, engine: Engine, event_id: int, languages: Sequence[str],
                now: datetime) -> list[PreviewPage]:
    """The outbox event ``event_id``'s email to each of its recipients (a sample reader
    when its rules name none), in each language, whatever the event's state."""
    source = load_source(settings)
    with database_errors(settings.database_url):
        event = load_event(engine, event_id)
        if event is None:
            raise ConfigError(f"There is no event {event_id} in notification_outbox: give "
                              "the id of one of its rows.")
        with engine.connect() as conn, reads(conn):
            [(_, ctx)] = load_batch(source, conn, [event])
    if isinstance(ctx, EventError):
        raise ConfigError(f"Event {event_id} ({event.event_type}) cannot be rendered: {ctx}.")
    if ctx.comment is not None and ctx.comment.is_internal:
        raise ConfigError(f"Event {event_id} is an internal comment, which is never emailed: "
                          "there is nothing to preview.")
    recipients = source.resolve(ctx).email
    title = f"Event {event_id}: {event.event_type}"
    pages = _Pages(settings, now)
    made = []
    for number, recipient in enumerate(recipients or (SAMPLE_READER,), start=1):
        about = _recipient_note(recipient, number, len(recipients))
        for language in languages:
            made.append(pages.event(f"event-{event_id}-{number}", title, about, ctx,
                                    recipient, language,
                                    ticket_url=source.link(ctx, recipient)))
    return made


def _recipient_note(recipient: EmailRecipient, number: int, count: int) -> str:
    if not count:
        return "Its rules name no email recipient: shown to a sample reader."
    reads = f", who reads {recipient.locale}" if recipient.locale else ""
    return f"Recipient {number} of {count}: {recipient.name or recipient.address}{reads}."


def _by_email(pages: list[PreviewPage]) -> list[PreviewPage]:
    """Pages in the order of their emails, each email's languages together."""
    order = {key: index for index, key in enumerate(dict.fromkeys(p.key for p in pages))}
    return sorted(pages, key=lambda page: order[page.key])


# ------------------------------------------------------------------ the gallery


def write_gallery(folder: Path, pages: Sequence[PreviewPage], *, site_name: str,
                  origin: str, now: datetime) -> list[Path]:
    """``index.html`` and one page (and one ``.eml``, the message as sent) per email and
    language into ``folder``; the paths of the pages written, the index first.
    ``origin``: where the emails' data came from, in a sentence."""
    env = Environment(loader=FileSystemLoader(str(PAGES)), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    languages = list(dict.fromkeys(page.language for page in pages))
    emails: dict[str, list[PreviewPage]] = {}
    for page in pages:
        emails.setdefault(page.key, []).append(page)
    shared = {"site_name": site_name, "origin": origin, "emails": emails,
              "languages": languages, "names": {code: language_name(code)
                                                for code in languages},
              "generated": f"{now:%Y-%m-%d %H:%M} UTC"}
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "index.html"
    index.write_text(env.get_template("index.html").render(shared), encoding="utf-8")
    written = [index]
    email_page = env.get_template("email.html")
    keys = list(emails)
    for page in pages:
        position = keys.index(page.key)
        neighbours = {"previous": keys[position - 1] if position else None,
                      "next": keys[position + 1] if position + 1 < len(keys) else None}
        path = folder / page.file
        path.write_text(email_page.render(shared, page=page, **neighbours), encoding="utf-8")
        if page.message:
            (folder / page.eml_file).write_bytes(page.message)
        else:  # not rendered: no message from an earlier run may stand in for it
            (folder / page.eml_file).unlink(missing_ok=True)
        written.append(path)
    return written


SAMPLE_ORIGIN = ("Every email itsm-notify sends, with sample data: a VPN outage and the "
                 "people working on it, a digest of overdue tickets, a due-soon warning, an "
                 "hourly summary, and the test email.")


@dataclass(frozen=True)
class Gallery:
    """What ``make_gallery`` wrote."""

    folder: Path
    pages: list[PreviewPage]
    written: list[Path]
    """The index, then each page."""

    @property
    def index(self) -> Path:
        return self.written[0]

    @property
    def problems(self) -> list[str]:
        return [f"{page.title} ({page.language}): {page.error}" for page in self.pages
                if page.error]

    def as_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "index": str(self.index),
                "pages": [{"email": page.key, "language": page.language,
                           "subject": page.subject, "path": str(path), "error": page.error}
                          for page, path in zip(self.pages, self.written[1:], strict=True)],
                "problems": self.problems}


def make_gallery(settings: Settings, folder: Path, *, languages: Sequence[str],
                 now: datetime, event_id: int | None = None, engine: Engine | None = None
                 ) -> Gallery:
    """Render the emails (the samples, or the outbox event ``event_id`` read through
    ``engine``) in ``languages`` and write the gallery into ``folder``."""
    if event_id is None:
        pages, origin = sample_pages(settings, languages, now), SAMPLE_ORIGIN
    else:
        assert engine is not None, "an event is read from a database"
        pages = event_pages(settings, engine, event_id, languages, now)
        origin = f"Outbox event {event_id}, as each of its recipients would get it now."
    try:
        written = write_gallery(folder, pages, site_name=settings.site_name, origin=origin,
                                now=now)
    except OSError as exc:
        raise ConfigError(f"Cannot write the preview to {folder} ({exc.strerror or exc}): "
                          "choose another folder with --out.") from None
    return Gallery(folder, pages, written)


# ------------------------------------------------------------------ serving


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the terminal shows the URL and nothing else."""


class GalleryServer(ServedInThread):
    """The gallery served over HTTP on the loopback interface, from a thread."""

    def __init__(self, folder: Path, port: int) -> None:
        handler = partial(_QuietHandler, directory=str(folder))
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as exc:
            raise ConfigError(f"Cannot serve the preview on 127.0.0.1:{port} "
                              f"({exc.strerror or exc}): choose a free port with --port "
                              "(0: any).") from None
        server.daemon_threads = True
        super().__init__(server, "itsm-notify-preview")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def wait_for_stop() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM, then return (no KeyboardInterrupt)."""
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = {number: signal.signal(number, stop)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
