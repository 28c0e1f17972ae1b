"""Header fields: the policies, the sanitiser every value from a ticket, a user or the
configuration passes through, and the folding of one field (remembered, since most
fields recur from email to email)."""

from __future__ import annotations

import functools
import re
import unicodedata
from email import policy
from email.headerregistry import (
    Address,
    AddressHeader,
    HeaderRegistry,
    UnstructuredHeader,
)
from email.parser import BytesHeaderParser
from email.utils import formatdate
from typing import Any

from ..errors import UnsafeHeader


class ListUrlHeader(UnstructuredHeader):
    """``List-Unsubscribe`` holds ``<URL>`` (RFC 2369), which must not become RFC 2047
    encoded words: CPython folds a URL longer than a line that way, and mail clients then
    no longer see the link (nor offer one-click unsubscribe). Written on one line, within
    RFC 5322's 998 characters, when it is plain ASCII."""

    # The registry mixes this class with BaseHeader, which typeshed keeps apart from it.

    def fold(self, *, policy: Any) -> str:
        line = f"{self.name}: {self}"  # type: ignore[attr-defined]
        if line.isascii() and len(line) <= 998:
            return line + policy.linesep
        return str(super().fold(policy=policy))  # type: ignore[misc]


class _HeaderRegistry(HeaderRegistry):
    """The email package's header factory, with ``List-Unsubscribe`` a ListUrlHeader, and
    each header's class made once: CPython makes a new class for every header it parses,
    which costs more than the parsing."""

    def __init__(self) -> None:
        super().__init__()
        self.map_to_type("list-unsubscribe", ListUrlHeader)  # type: ignore[arg-type]
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        made = self._classes.get(name)
        if made is None:
            made = self._classes[name] = super().__getitem__(name)
        return made


SMTP_POLICY = policy.SMTP.clone(header_factory=_HeaderRegistry(), refold_source="none")
"""``policy.SMTP``, with ``List-Unsubscribe`` kept a readable URL: every message's policy.
A field given already in wire form (``RawField``) is written as it is, never re-parsed."""
SMTPUTF8_POLICY = SMTP_POLICY.clone(utf8=True)
"""For an envelope that needs SMTPUTF8 (a non-ASCII address)."""

READER_POLICY = policy.default
"""How a mail reader parses what we send (encoded words decoded): the final checks use it."""

_UNSAFE_IN_HEADER = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
"""Control (C0, C1, DEL), format, line and paragraph separator, surrogate, private-use
and unassigned characters: none of them may reach a header."""




def has_unsafe_characters(text: str) -> bool:
    """Whether ``text`` holds a character that must never reach a header."""
    if text.isascii():
        return not text.isprintable()
    return any(unicodedata.category(ch) in _UNSAFE_IN_HEADER for ch in text)


def break_encoded_words(text: str) -> str:
    """Every ``=?`` broken apart (``= ?``), so that no parser decodes an RFC 2047 encoded
    word in the text. Whatever follows the opener does not matter: Python's parser (and
    others) decodes look-alikes with odd charsets (``=? x?q?...?=``), inside atoms and
    inside quoted strings, so the opener itself must go."""
    return text.replace("=?", "= ?") if "=?" in text else text


@functools.lru_cache(maxsize=4096)  # the same titles and names, email after email
def one_line(text: str, limit: int = 200) -> str:
    """Text fit for a header: control characters, line and paragraph separators and
    format characters become spaces; every encoded-word opener is broken
    (``break_encoded_words``); runs of white space fold to one; long text is cut."""
    if text.isascii() and text.isprintable():
        cleaned = text  # no printable ASCII character is in an unsafe category
    else:
        cleaned = "".join(" " if unicodedata.category(ch) in _UNSAFE_IN_HEADER else ch
                          for ch in text)
    folded = " ".join(break_encoded_words(cleaned).split())
    return folded if len(folded) <= limit else folded[: limit - 1].rstrip() + "…"


def ascii_fallback(text: str) -> str:
    """The last resort for a text field the email package would not write safely: plain
    printable ASCII without ``=`` (so no encoded word at all), which needs no encoding."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join("".join(ch if ch.isprintable() and ch != "=" else " "
                            for ch in ascii_text).split()) or "-"


# ------------------------------------------------------------------ wire format


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date field of a second (``formatdate`` drops the fraction): every email of a
    second has the same, formatted once."""
    return formatdate(second, usegmt=True)


def needs_smtputf8(sender: str, rcpt: str) -> bool:
    """Whether an envelope needs SMTPUTF8 (a non-ASCII address), and its message 8-bit
    headers."""
    return not (sender.isascii() and rcpt.isascii())


def _refuse_line_breaks(name: str, parsed: Any) -> None:
    """No header value may hold a line break once parsed."""
    value = str(parsed)
    if "\r" in value or "\n" in value:
        raise UnsafeHeader(f"the {name} header would hold a line break")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
"""A display name the policy writes as it is: words of letters and digits."""
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_PLAIN_URL = re.compile(r"<(?:[!-<>-~]|=(?!\?))+>")
"""``<URL>`` of printable ASCII, no ``=?``: List-Unsubscribe's value as ListUrlHeader writes it."""
_PLAIN_HEADER = re.compile(r"[A-Za-z0-9@<>._+-]+(?: [A-Za-z0-9@<>._+-]+)*")
_PLAIN_TEXT = re.compile(r"[!-<>-~]+(?: [!-<>-~]+)*")
"""Printable ASCII words but ``=`` (no encoded word can start), single spaces between."""


class RawField(str):
    """A field value already in its wire form (ASCII, one line), written as it is: an
    address whose local part must be quoted in a way the email package does not write
    (see ``header_address``)."""


def fold_header(name: str, value: str | Address) -> bytes:
    """One header field as ``msg[name] = value`` then ``as_bytes`` write it under
    SMTP_POLICY, remembered (parsing a header value costs more than rendering a line of
    a template), and checked as a reader parses it (``_verify``). Raises UnsafeHeader if
    it is not exactly that one field, or its value as read holds a control character or
    a line break, or an address field reads as other addresses.

    A value that fits on a line and parses to itself is written as it is, never parsed:
    a plain one (letters, digits, ``@<>._+-``, single spaces) such as a Message-ID, and
    in an unstructured field (a Subject, an X- field) printable ASCII words but ``=``:
    no encoded word can start in either, and no character in them is unsafe."""
    if isinstance(value, Address):  # unhashable: remembered by its parts
        display, local, domain = value.display_name, value.username, value.domain
        if _PLAIN_LOCAL.fullmatch(local) and _PLAIN_DOMAIN.fullmatch(domain):
            # A plain address: the policy writes the field on one line when it fits, the
            # name as it writes it beside any address (a plain name as it is, another
            # one encoded and quoted by the policy once and remembered, then checked as
            # a reader parses it). Held to the policy by a property test.
            addr = f"{local}@{domain}"
            if not display:
                if len(name) + len(addr) + 2 <= 78:
                    return f"{name}: {addr}\r\n".encode("ascii")
            else:
                phrase = display if _PLAIN_NAME.fullmatch(display) else _phrase(name, display)
                if phrase is not None and len(name) + len(phrase) + len(addr) + 5 <= 78:
                    return f"{name}: {phrase} <{addr}>\r\n".encode("ascii")
        return _fold(name, (display, local, domain))
    if type(value) is str and name == "List-Unsubscribe" and _PLAIN_URL.fullmatch(value) \
            and len(name) + 2 + len(value) <= 998:
        return f"{name}: {value}\r\n".encode("ascii")  # ListUrlHeader's one line
    if type(value) is str and len(name) + 2 + len(value) <= 78 and (
            _PLAIN_HEADER.fullmatch(value) or (_unstructured(name)
                                               and _PLAIN_TEXT.fullmatch(value))):
        return f"{name}: {value}\r\n".encode("ascii")
    return _fold(name, value)


_PROBE_ADDRESS = "a@b.invalid"


@functools.lru_cache(maxsize=4096)
def _phrase(name: str, display: str) -> str | None:
    """The display name as the policy writes it before an address on one line (encoded
    words, quotes), checked with a probe address as a reader parses it; None when it
    does not fit one line."""
    try:
        folded = _fold(name, (display, *_PROBE_ADDRESS.split("@"))).decode("ascii")
    except UnsafeHeader:
        return None
    head, tail = f"{name}: ", f" <{_PROBE_ADDRESS}>\r\n"
    if not (folded.startswith(head) and folded.endswith(tail)) or "\r\n" in folded[:-2]:
        return None
    return folded[len(head):-len(tail)]


@functools.lru_cache(maxsize=64)
def _unstructured(name: str) -> bool:
    """Whether the policy parses ``name`` as unstructured text, folded the plain way."""
    kind = SMTP_POLICY.header_factory[name]  # type: ignore[index]
    return issubclass(kind, UnstructuredHeader) and not issubclass(kind, ListUrlHeader)


@functools.lru_cache(maxsize=256)
def _fold_all(fields: tuple[tuple[str, str], ...]) -> bytes:
    """Header fields folded, one after the other: the fields an event's recipients share."""
    return b"".join(fold_header(name, value) for name, value in fields)


@functools.lru_cache(maxsize=16384)
def _fold(name: str, value: str | tuple[str, str, str]) -> bytes:
    if isinstance(value, RawField):
        folded = f"{name}: {value}\r\n".encode("ascii")
        _verify(name, folded, _intended_addresses(name, value))
        return folded
    stored = Address(*value) if isinstance(value, tuple) else value
    parsed = SMTP_POLICY.header_store_parse(name, stored)[1]
    _refuse_line_breaks(name, parsed)
    folded = bytes(SMTP_POLICY.fold_binary(name, parsed))
    _verify(name, folded, _intended_addresses(name, stored))
    return folded


def _intended_addresses(name: str, value: str | Address) -> list[tuple[str, str]] | None:
    """The (local part, domain) pairs an address field is meant to hold; None for a
    field that holds no addresses."""
    if isinstance(value, Address):
        return [(value.username, value.domain)]
    if not issubclass(SMTP_POLICY.header_factory[name], AddressHeader):  # type: ignore[index]
        return None
    if isinstance(value, RawField):
        local, _, domain = value.rpartition("@")
        return [(_unquote_local(local), domain)]
    try:
        parsed = SMTP_POLICY.header_store_parse(name, value)[1]
        return [(a.username, a.domain) for a in parsed.addresses]
    except Exception:  # the verification then refuses it
        return []


def _verify(name: str, folded: bytes, addresses: list[tuple[str, str]] | None) -> None:
    """The last check of a field, on its final bytes, as a reader parses them: exactly
    this one field, no bare CR or LF, nothing unsafe in what a reader decodes, and an
    address field holding exactly the intended addresses.

    A message's header block is its fields one after the other, each checked here, so
    the block as a whole reads as exactly these fields: every field starts a line, ends
    with CRLF and continues only on lines that start with white space."""
    if folded.count(b"\r") != folded.count(b"\r\n") or \
            folded.count(b"\n") != folded.count(b"\r\n"):
        raise UnsafeHeader(f"the {name} header would hold a bare CR or LF")
    try:
        message = BytesHeaderParser(policy=READER_POLICY).parsebytes(folded + b"\r\n")
        names = [key.lower() for key in message]
        read = message[name]
        text = str(read)
        read_addresses = [(a.username, a.domain, a.display_name)
                          for a in getattr(read, "addresses", ())]
    except Exception as exc:  # a parser that fails on it: a reader could not read it either
        raise UnsafeHeader(f"the {name} header does not parse back "
                           f"({type(exc).__name__})") from None
    if names != [name.lower()]:
        raise UnsafeHeader(f"the {name} header would read as other header fields")
    if has_unsafe_characters(text) or any(has_unsafe_characters(part)
                                          for a in read_addresses for part in a):
        raise UnsafeHeader(f"the {name} header would read with a control character or a "
                           "line break")
    if addresses is not None and [(a[0], a[1]) for a in read_addresses] != addresses:
        raise UnsafeHeader(f"the {name} header would read as other addresses")


_ADDRESS_SPECIALS = re.compile(r'[<>()\[\]:;@\\,"]')
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _unquote_local(local: str) -> str:
    """A local part as it reads: a quoted string's quotes and quoted pairs undone."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


@functools.lru_cache(maxsize=4096)
def header_address(name: str, address: str) -> Address | RawField:
    """The recipient as a To field's value, made safe, checked the way a reader parses it.

    Usually ``Name <addr>`` as an Address object (assigned as is, never re-parsed), its
    display name on one line, every encoded-word opener broken and without RFC 5322
    specials: CPython folds a long display name without quoting it, so ``<``, ``,`` or
    ``:`` in a name could split the header into other addresses. A name that still does
    not read back safely is dropped.

    A local part holding ``=?`` (legal in an address, and Django accepts it) would be
    decoded as an encoded word by Python's parser even inside quotes, and the email
    package writes it back unescaped: such an address is written here as a quoted string
    with every ``?`` escaped (``"=\\?utf-8..."@example.com``), which means the same
    address to every reader and decodes nowhere.

    Raises UnsafeHeader for an address that cannot be written safely at all (a control
    character in it): that one email is not sent."""
    local, _, domain = address.rpartition("@")
    local = _unquote_local(local)
    if has_unsafe_characters(local) or has_unsafe_characters(domain) or not domain:
        raise UnsafeHeader("the address holds a control character or a line break")
    if "=?" in local:
        escaped = re.sub(r'([\\"?])', r"\\\1", local)
        raw = RawField(f'"{escaped}"@{domain}')
        fold_header("To", raw)  # checked now; remembered for the message
        return raw
    display = " ".join(_ADDRESS_SPECIALS.sub(" ", one_line(name, limit=100)).split())
    for candidate in (display, ""):
        to = Address(display_name=candidate, username=local, domain=domain)
        try:
            fold_header("To", to)
        except UnsafeHeader:
            continue
        return to
    raise UnsafeHeader("the address does not read back as itself in a To header")


@functools.lru_cache(maxsize=1024)
def safe_text(name: str, text: str) -> str:
    """An unstructured field's value (a Subject, X-ITSM-Ticket) that reads back safely:
    ``text`` made one line, or, should the email package still write it in a way that
    reads back with something unsafe, its plain-ASCII fallback. Hostile text degrades;
    it never silences a ticket's email."""
    value = one_line(text, limit=300)
    try:
        fold_header(name, value)
    except UnsafeHeader:
        value = ascii_fallback(value)
        fold_header(name, value)
    return value
