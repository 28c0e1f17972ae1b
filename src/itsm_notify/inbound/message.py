"""One inbound RFC 5322 message, parsed once and bounded against hostile input. Pure.

``parse_message`` never raises: whatever the bytes, it returns an ``InboundMessage``
whose ``problems`` say, one sentence each, what could not be read and what was done
instead. The bounds (``Limits``) keep time and memory linear in the message's size:

- above ``max_size`` only the header section is parsed (``oversize``);
- the header section is cut at ``max_header_bytes`` and ``max_headers`` fields;
- MIME structure is walked by this module, not by ``email.feedparser``: the
  feedparser checks every line against every open boundary (time grows with
  depth × lines) and nests one generator per level (a deep MIME bomb ends in a
  RecursionError). Here each level is one linear scan for its own boundary, at most
  ``max_depth`` levels and ``max_parts`` parts; part bodies are views into the raw
  bytes, never copies, until a leaf is decoded;
- decoded text is cut at ``max_text_chars`` and HTML at ``max_html_bytes``.

Header values meant for people (subject, display names) are decoded (RFC 2047, raw
UTF-8) and made one line: control characters and line breaks become spaces, so a
subject carrying ``=?utf-8?q?=0D=0ABcc:...?=`` stays one harmless line. Addresses are
parsed from the raw, undecoded value, so an encoded display name cannot smuggle an
address in; the From address must read the same to two parsers (``getaddresses``
and the RFC 5322 header registry) or it is not trusted at all.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import html
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Literal

from inscriptis import get_annotated_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig


@dataclass(frozen=True)
class Limits:
    """How much of a message is read. The defaults suit a help desk's mailbox."""

    max_size: int = 25 * 1024 * 1024
    """Above this many bytes only the header section is parsed."""
    max_header_bytes: int = 256 * 1024
    max_headers: int = 500
    max_header_chars: int = 2000
    """One header value kept for people (subject, names) at most."""
    max_depth: int = 10
    """MIME nesting levels read (multipart and message/rfc822 alike)."""
    max_parts: int = 250
    max_text_chars: int = 500_000
    max_html_bytes: int = 2 * 1024 * 1024
    max_ids: int = 100
    """Message-IDs kept from References (the first 10 and the last ones)."""


DEFAULT_LIMITS = Limits()

_HEADER_PARSER = BytesHeaderParser(policy=policy.compat32)
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_MBOX_FROM_LINE = re.compile(rb"\AFrom [^\r\n]*\r?\n")
_ANGLE_ID = re.compile(r"<([^<>\s]{1,250})>")
_BARE_ID = re.compile(r"[^<>\s,;]{1,250}@[^<>\s,;]{1,250}")
_ADDR_SPEC = re.compile(r"[^@\s<>(),;:\"\[\]\\]{1,64}@[\w.-]{1,255}")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")
_BASE64_RUN = re.compile(rb"(?<==)(?=[A-Za-z0-9+/])")
_FOLD = re.compile(r"\r?\n[ \t]")
_UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_BODY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TAG = re.compile(r"<[^>]{0,2000}>")
ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to",
                    "x-rcpt-to", "original-recipient")
"""Headers where MTAs and local delivery agents name the envelope recipient."""
_HTML_CONFIG = ParserConfig(css=CSS_PROFILES["strict"],
                            annotation_rules={"blockquote": ["quote"]})


TextSource = Literal["plain", "html", "none"]


@dataclass(frozen=True)
class Mailbox:
    address: str
    """``local@domain``, the domain lower-cased."""
    name: str = ""


@dataclass(frozen=True)
class HeaderMap:
    """A message's header fields: names lower-cased, values decoded and one line."""

    items: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.items if key == name), None)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.items if key == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


@dataclass(frozen=True, eq=False)
class Part:
    """One MIME entity: its header fields and its body as transmitted (a view into the
    raw message); ``children`` for multipart and message/rfc822 entities."""

    headers: Message
    body: memoryview
    children: tuple[Part, ...] = ()

    @property
    def content_type(self) -> str:
        try:
            return self.headers.get_content_type()
        except Exception:  # a malformed Content-Type: RFC 2045's default applies
            return "text/plain"

    @property
    def is_attachment(self) -> bool:
        disposition = str(self.headers.get("content-disposition", "")).strip().lower()
        return disposition.startswith("attachment")

    def decoded(self, max_bytes: int | None = None) -> bytes:
        """The body without its Content-Transfer-Encoding (lenient, like MUAs); with
        ``max_bytes``, about that many bytes from the start (never all of a big body)."""
        encoding = str(self.headers.get("content-transfer-encoding", "")).strip().lower()
        data = bytes(self.body if max_bytes is None else self.body[: max_bytes * 3])
        if encoding == "base64":
            # padding inside the stream (each line encoded on its own) starts a new run
            out = []
            for run in _BASE64_RUN.split(_BASE64_JUNK.sub(b"", data)):
                run = run.rstrip(b"=")
                run = run[: len(run) - len(run) % 4 if len(run) % 4 == 1 else len(run)]
                try:
                    out.append(binascii.a2b_base64(run + b"=" * (-len(run) % 4)))
                except binascii.Error:
                    break
            return b"".join(out)
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
        return data

    def text(self, limit: int = DEFAULT_LIMITS.max_text_chars) -> str:
        """The decoded body as text, in its declared charset when that is a real text
        encoding, else UTF-8, else Windows-1252; at most ``limit`` characters."""
        try:
            charset = self.headers.get_content_charset() or "utf-8"
        except Exception:
            charset = "utf-8"
        return decode_text(self.decoded(limit * 4)[: limit * 4], charset)[:limit]

    def walk(self) -> Iterator[Part]:
        """This part and every part inside it, depth first (iteratively)."""
        stack: list[Part] = [self]
        while stack:
            part = stack.pop()
            yield part
            stack.extend(reversed(part.children))


@dataclass(frozen=True, eq=False)
class InboundMessage:
    key: str
    """What makes the message unique: its ``<Message-ID>``, or ``sha256:<hex>`` of the
    raw bytes when it has none (or an unusable one)."""
    size: int
    message_id: str | None
    """Without angle brackets."""
    from_address: str | None
    """None when there is no From, or it names no single unambiguous address."""
    from_name: str
    reply_to: tuple[Mailbox, ...]
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    envelope_to: tuple[str, ...]
    """Delivered-To, X-Original-To, Envelope-To ...: where the mail was delivered."""
    return_path: str | None
    """The Return-Path header's address; ``""`` for the null sender ``<>``."""
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    authentication_results: tuple[str, ...]
    headers: HeaderMap
    text: str
    """The body people wrote: text/plain preferred, else HTML made readable text
    (quoted blocks marked with ``> ``)."""
    text_source: TextSource
    root: Part
    raw: bytes = field(default=b"", repr=False)
    oversize: bool = False
    mime_complete: bool = True
    """False when a limit stopped the MIME walk (depth, part count, header size)."""
    problems: tuple[str, ...] = field(default=())

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every address the message was for (To, Cc, envelope), lower-cased, once."""
        seen: dict[str, None] = {}
        for address in (*(m.address for m in (*self.to, *self.cc)), *self.envelope_to):
            seen.setdefault(address.lower(), None)
        return tuple(seen)

    @property
    def referenced_ids(self) -> tuple[str, ...]:
        """In-Reply-To first, then References from the newest back."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)


# ---------------------------------------------------------------- entry point


def parse_message(raw: bytes, *, limits: Limits = DEFAULT_LIMITS) -> InboundMessage:
    """The message in ``raw``; never raises (what could not be read is in ``problems``)."""
    try:
        return _Parser(raw, limits).message()
    except Exception as exc:  # the contract: a reason, never a traceback
        return _unreadable(raw, f"The message could not be parsed ({type(exc).__name__}); "
                                f"it is kept as raw bytes only.")


def _unreadable(raw: bytes, problem: str) -> InboundMessage:
    return InboundMessage(
        key=_digest_key(raw), size=len(raw), message_id=None, from_address=None,
        from_name="", reply_to=(), to=(), cc=(), envelope_to=(), return_path=None,
        subject="", in_reply_to=(), references=(), authentication_results=(),
        headers=HeaderMap(), text="", text_source="none",
        root=Part(Message(), memoryview(b"")), raw=raw, mime_complete=False,
        problems=(problem,))


def _digest_key(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class _Parser:
    def __init__(self, raw: bytes, limits: Limits) -> None:
        self.raw = raw
        self.limits = limits
        self.problems: list[str] = []
        self.parts = 0
        self.too_deep = False
        self.too_many = False
        self.head_cut = False

    def message(self) -> InboundMessage:
        raw, limits = self.raw, self.limits
        view = memoryview(raw)
        if mbox := _MBOX_FROM_LINE.match(raw):  # an MTA pipe may prepend an mbox line
            view = view[mbox.end():]
        oversize = len(raw) > limits.max_size
        if oversize:
            self.problems.append(
                f"The message is {len(raw) // (1024 * 1024)} MB, over the "
                f"{limits.max_size // (1024 * 1024)} MB limit: only its header was read.")
            headers, _ = self.split(view)
            root = Part(headers, memoryview(b""))
        else:
            root = self.entity(view, depth=0)
        if self.too_deep:
            self.problems.append(f"The MIME structure is nested deeper than "
                                 f"{limits.max_depth} levels: the parts below were not read.")
        if self.too_many:
            self.problems.append(f"The message has more than {limits.max_parts} MIME parts: "
                                 f"the parts after those were not read.")
        return self.build(root, oversize)

    # ------------------------------------------------------------ structure

    def split(self, view: memoryview) -> tuple[Message, memoryview]:
        """An entity's header fields (parsed, bounded) and its body (a view)."""
        limit = self.limits.max_header_bytes
        for blank in (b"\n", b"\r\n"):  # an entity that starts with a blank line: no headers
            if view[: len(blank)] == blank:
                return _HEADER_PARSER.parsebytes(b"\n"), view[len(blank):]
        end = _END_OF_HEADERS.search(view, 0, limit + 4)
        if end is None and len(view) > limit:
            cut = bytes(view[:limit]).rfind(b"\n")
            head, body = bytes(view[: cut + 1]), view[len(view):]
            if not self.head_cut:
                self.problems.append("A header section is too large: it was cut.")
            self.head_cut = True
        elif end is None:
            head, body = bytes(view), view[len(view):]
        else:
            head, body = bytes(view[: end.start()]) + b"\n", view[end.end():]
        return _HEADER_PARSER.parsebytes(head), body

    def entity(self, view: memoryview, depth: int) -> Part:
        headers, body = self.split(view)
        self.parts += 1
        try:
            ctype = headers.get_content_type()
        except Exception:
            ctype = "text/plain"
        container = ctype.startswith("multipart/") or ctype in ("message/rfc822",
                                                                 "message/global")
        if not container:
            return Part(headers, body)
        if depth >= self.limits.max_depth:
            self.too_deep = True
            return Part(headers, body)
        if ctype.startswith("message/"):
            part = Part(headers, body)
            encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
            inner = memoryview(part.decoded()) if encoding in ("base64",
                                                               "quoted-printable") else body
            return Part(headers, body, (self.entity(inner, depth + 1),))
        children = []
        for chunk in self.chunks(headers, body):
            if self.parts >= self.limits.max_parts:
                self.too_many = True
                break
            children.append(self.entity(chunk, depth + 1))
        return Part(headers, body, tuple(children))

    def chunks(self, headers: Message, body: memoryview) -> list[memoryview]:
        """A multipart body's parts, between its boundary delimiter lines."""
        try:
            boundary = headers.get_boundary()
        except Exception:
            boundary = None
        if not boundary or len(boundary) > 200:
            self.problems.append("A multipart part has no usable boundary: its content was "
                                 "not read.")
            return []
        delimiter = re.compile(rb"^--" + re.escape(boundary.encode("utf-8", "surrogateescape"))
                               + rb"(--)?[ \t]*\r?$", re.MULTILINE)
        chunks: list[memoryview] = []
        start: int | None = None
        for found in delimiter.finditer(body):
            if start is not None:
                chunk_end = found.start()
                if chunk_end > start and body[chunk_end - 1] == 0x0A:  # the CRLF before
                    chunk_end -= 2 if chunk_end - start > 1 and body[chunk_end - 2] == 0x0D \
                        else 1
                chunks.append(body[start:max(start, chunk_end)])
            if found.group(1):  # the close delimiter
                return chunks
            start = found.end() + 1  # past the line end
            if len(chunks) > self.limits.max_parts:
                break
        if start is not None and start <= len(body):  # no close delimiter: the rest
            chunks.append(body[start:])
        return chunks

    # ------------------------------------------------------------ fields

    def build(self, root: Part, oversize: bool) -> InboundMessage:
        top = root.headers
        limits = self.limits
        raw_items = list(top.raw_items())
        header_items = [(name.strip().lower(), header_text(value, limits.max_header_chars))
                        for name, value in raw_items[: limits.max_headers]]
        if len(raw_items) > limits.max_headers:
            self.problems.append(f"The message has more than {limits.max_headers} header "
                                 f"fields: the rest were not read.")
        headers = HeaderMap(tuple(header_items))

        message_ids = _ids(_raw(top, "message-id"))
        message_id = message_ids[0] if message_ids else None
        references = _ids(_raw(top, "references"))
        if len(references) > limits.max_ids:
            references = references[:10] + references[-(limits.max_ids - 10):]
        from_address, from_name = self.sender(top)
        envelope = tuple(dict.fromkeys(
            mailbox.address for name in ENVELOPE_HEADERS
            for mailbox in _mailboxes(_raw_all(top, name))))
        return_path = _return_path(_raw(top, "return-path"))
        text, source = self.body_text(root) if not oversize else ("", "none")
        return InboundMessage(
            key=f"<{message_id}>" if message_id else _digest_key(self.raw),
            size=len(self.raw),
            message_id=message_id,
            from_address=from_address,
            from_name=from_name,
            reply_to=_mailboxes(_raw_all(top, "reply-to")),
            to=_mailboxes(_raw_all(top, "to")),
            cc=_mailboxes(_raw_all(top, "cc")),
            envelope_to=envelope,
            return_path=return_path,
            subject=header_text(_raw(top, "subject"), limits.max_header_chars),
            in_reply_to=tuple(_ids(_raw(top, "in-reply-to"))[: limits.max_ids]),
            references=tuple(references),
            authentication_results=tuple(headers.get_all("authentication-results")),
            headers=headers,
            text=text,
            text_source=source,
            root=root,
            raw=self.raw,
            oversize=oversize,
            mime_complete=not (oversize or self.too_deep or self.too_many or self.head_cut),
            problems=tuple(self.problems),
        )

    def sender(self, headers: Message) -> tuple[str | None, str]:
        values = _raw_all(headers, "from")
        if not values:
            return None, ""
        mailboxes = _mailboxes(values)
        if len(values) != 1 or len(mailboxes) != 1:
            self.problems.append("The From header does not name exactly one address: the "
                                 "sender is unknown.")
            return None, ""
        mailbox = mailboxes[0]
        if _registry_addresses(str(values[0])) != [mailbox.address.lower()]:
            self.problems.append("The From header is malformed, or reads differently to two "
                                 "address parsers (a forgery trick): the sender is unknown.")
            return None, ""
        return mailbox.address, mailbox.name

    def body_text(self, root: Part) -> tuple[str, TextSource]:
        plain, rich = _texts(root, self.limits)
        if plain.strip():
            return plain, "plain"
        if rich:
            return self.html_text(rich), "html"
        return "", "none"

    def html_text(self, parts: list[Part]) -> str:
        out = []
        budget = self.limits.max_html_bytes
        for part in parts:
            markup = part.text(budget)
            if len(markup) >= budget:
                self.problems.append("The HTML body is too large: only its start was read.")
            out.append(html_to_text(markup))
            budget -= len(markup)
            if budget <= 0:
                break
        return "\n\n".join(text for text in out if text)[: self.limits.max_text_chars]


def _texts(root: Part, limits: Limits) -> tuple[str, list[Part]]:
    """The inline text/plain bodies joined, and the HTML parts to use when there is no
    plain text. In multipart/alternative, plain text wins; message/rfc822 parts
    (forwarded as attachments) and attachments are not the sender's words."""
    plain: list[str] = []
    rich: list[Part] = []

    def visit(part: Part) -> None:
        ctype = part.content_type
        if part.is_attachment or ctype.startswith("message/"):
            return
        if ctype == "multipart/alternative":
            kinds = [(child.content_type, child) for child in part.children]
            for child in ([c for k, c in kinds if k == "text/plain"]
                          or [c for k, c in kinds if k.startswith("multipart/")]):
                visit(child)
            rich.extend([c for k, c in kinds if k == "text/html"][-1:])  # if plain is blank
        elif ctype.startswith("multipart/"):
            for child in part.children:
                visit(child)
        elif ctype == "text/plain":
            plain.append(clean_body(part.text(limits.max_text_chars)))
        elif ctype == "text/html":
            rich.append(part)

    visit(root)
    return "\n".join(plain)[: limits.max_text_chars], rich


# ---------------------------------------------------------------- decoding helpers


def decode_text(data: bytes, charset: str) -> str:
    """``data`` in ``charset`` when that names a text encoding Python knows; otherwise
    UTF-8 when it decodes cleanly, else Windows-1252 (what mislabelled mail mostly is)."""
    try:
        codecs.lookup(charset)
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError, UnicodeError):  # unknown or not a text codec
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def clean_body(text: str) -> str:
    """Body text with line ends as ``\\n`` and no control characters but tab and newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BODY_CONTROLS.sub("", text)


def one_line(text: str, limit: int) -> str:
    """Text fit for one line: control, format and separator characters become spaces,
    white space runs fold to one, and it is cut to ``limit`` characters."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(" " if unicodedata.category(ch) in _UNSAFE else ch for ch in text)
    return " ".join(text.split())[:limit]


def header_text(value: str | None, limit: int = DEFAULT_LIMITS.max_header_chars) -> str:
    """A raw header value for people: unfolded, RFC 2047 words and raw UTF-8 decoded,
    one line. Undecodable words stay as they are."""
    if not value:
        return ""
    value = _FOLD.sub(" ", str(value)[: limit * 4])
    raw = value.encode("utf-8", "surrogateescape")
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        value = raw.decode("cp1252", errors="replace")
    if "=?" in value:
        try:
            pieces = []
            for chunk, charset in decode_header(value):
                if isinstance(chunk, bytes):
                    pieces.append(decode_text(chunk, charset or "utf-8"))
                else:
                    pieces.append(chunk)
            value = "".join(pieces)
        except Exception:  # a malformed encoded word: keep the value as written
            pass
    return one_line(value, limit)


def _raw(headers: Message, name: str) -> str:
    """The first ``name`` field's value as received (8-bit bytes as surrogate escapes:
    ``Message.get`` would turn those into U+FFFD)."""
    return next(iter(_raw_all(headers, name)), "")


def _raw_all(headers: Message, name: str) -> list[str]:
    return [str(value) for key, value in headers.raw_items() if key.lower() == name]


def _ids(value: str) -> list[str]:
    """The Message-IDs in a header value, without angle brackets, in order, once."""
    if not value:
        return []
    value = value[:64 * 1024]
    found = _ANGLE_ID.findall(value) or _BARE_ID.findall(value)
    return list(dict.fromkeys(mid for mid in found if "@" in mid))


def _mailboxes(values: list[str]) -> tuple[Mailbox, ...]:
    """The addresses in raw address-header values (encoded words not yet decoded, so a
    display name cannot become an address), each name decoded for people."""
    out: dict[str, Mailbox] = {}
    try:
        pairs = getaddresses([_FOLD.sub(" ", str(v))[:8000] for v in values])
    except Exception:
        return ()
    for name, address in pairs:
        address = address.strip()
        if not _ADDR_SPEC.fullmatch(address):
            continue
        local, _, domain = address.rpartition("@")
        address = f"{local}@{domain.lower().rstrip('.')}"
        out.setdefault(address.lower(), Mailbox(address, header_text(name, 200)))
    return tuple(out.values())


def _registry_addresses(value: str) -> list[str] | None:
    """The addresses the RFC 5322 header registry reads in a From value (lower-cased)."""
    try:
        parsed = policy.default.header_factory("from", _FOLD.sub(" ", value)[:8000])
        return [a.addr_spec.lower() for a in parsed.addresses]  # type: ignore[attr-defined]
    except Exception:
        return None


def _return_path(value: str) -> str | None:
    if not value:
        return None
    stripped = value.strip()
    if stripped in ("<>", "") or stripped.upper() in ("<MAILER-DAEMON>",):
        return ""
    found = _mailboxes([stripped])
    return found[0].address if found else None


def html_to_text(markup: str) -> str:
    """Readable text of an HTML body (inscriptis: layout-aware, tables and lists kept),
    each line inside a ``<blockquote>`` prefixed with ``> `` per level, as a plain-text
    client would quote it, so the quote stripper can tell quoted from new text."""
    try:
        result = get_annotated_text(markup, _HTML_CONFIG) if markup.strip() else {}
    except Exception:  # lxml or inscriptis gave up on hostile markup
        result = {}
    text: str = result.get("text", "")
    if not text.strip() and markup.strip():
        # lxml refuses trees deeper than 256 levels: the visible words all the same
        return clean_body(" ".join(html.unescape(_TAG.sub(" ", markup)).split()))
    return clean_body(_mark_quotes(text, result.get("label", [])))


def _mark_quotes(text: str, labels: list[tuple[int, int, str]]) -> str:
    lines = text.split("\n")
    starts = []
    offset = 0
    for line in lines:
        starts.append(offset)
        offset += len(line) + 1
    depth = [0] * (len(lines) + 1)
    for start, end, _label in labels:
        first, last = bisect_left(starts, start), bisect_left(starts, end)
        depth[first] += 1
        depth[last] -= 1
    out, level = [], 0
    for index, line in enumerate(lines):
        level += depth[index]
        out.append(("> " * level + line).rstrip() if level else line.rstrip())
    return "\n".join(out)
