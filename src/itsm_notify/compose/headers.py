"""Header fields: the policies, the sanitiser every value from a ticket, a user or the
configuration passes through, and the folding of one field (remembered, since most
fields recur from email to email)."""

from __future__ import annotations

import functools
import re
import unicodedata
from email import policy
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.utils import formatdate
from typing import Any


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


SMTP_POLICY = policy.SMTP.clone(header_factory=_HeaderRegistry())
"""``policy.SMTP``, with ``List-Unsubscribe`` kept a readable URL: every message's policy."""
SMTPUTF8_POLICY = SMTP_POLICY.clone(utf8=True)
"""For an envelope that needs SMTPUTF8 (a non-ASCII address)."""

_UNSAFE_IN_HEADER = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_ENCODED_WORD_START = re.compile(r"=\?(?=[^?\s]*\?[bBqQ]\?)")


@functools.lru_cache(maxsize=4096)  # the same titles and names, email after email
def one_line(text: str, limit: int = 200) -> str:
    """Text fit for a header: control characters, line and paragraph separators and
    format characters become spaces; runs of white space fold to one; long text is cut.

    RFC 2047 encoded-word openers (``=?utf-8?q?``) are broken apart too: the email
    package decodes encoded words in a value it is given, so ``=?utf-8?q?=0D=0ABcc:..?=``
    in a title would otherwise become a real line break and a Bcc header."""
    if text.isascii() and text.isprintable():
        cleaned = text  # no printable ASCII character is in an unsafe category
    else:
        cleaned = "".join(" " if unicodedata.category(ch) in _UNSAFE_IN_HEADER else ch
                          for ch in text)
    cleaned = _ENCODED_WORD_START.sub("= ?", cleaned)
    folded = " ".join(cleaned.split())
    return folded if len(folded) <= limit else folded[: limit - 1].rstrip() + "…"


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
    """Last line of defence: no header value may hold a line break once parsed."""
    value = str(parsed)
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header would hold a line break")


_PLAIN_HEADER = re.compile(r"[A-Za-z0-9@<>._+-]+(?: [A-Za-z0-9@<>._+-]+)*")
_PLAIN_TEXT = re.compile(r"[!-<>-~]+(?: [!-<>-~]+)*")
"""Printable ASCII words but ``=`` (no encoded word can start), single spaces between."""


def fold_header(name: str, value: str | Address) -> bytes:
    """One header field as ``msg[name] = value`` then ``as_bytes`` write it under
    SMTP_POLICY, remembered (parsing a header value costs more than rendering a line of
    a template). Raises ValueError if the parsed value would hold a line break.

    A value that fits on a line and parses to itself is written as it is, never parsed:
    a plain one (letters, digits, ``@<>._+-``, single spaces) such as a Message-ID, and
    in an unstructured field (a Subject, an X- field) printable ASCII words but ``=``."""
    if isinstance(value, Address):  # unhashable: remembered by its parts
        return _fold(name, (value.display_name, value.username, value.domain))
    if len(name) + 2 + len(value) <= 78 and (_PLAIN_HEADER.fullmatch(value) or (
            _unstructured(name) and _PLAIN_TEXT.fullmatch(value))):
        return f"{name}: {value}\r\n".encode("ascii")
    return _fold(name, value)


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
    stored = Address(*value) if isinstance(value, tuple) else value
    parsed = SMTP_POLICY.header_store_parse(name, stored)[1]
    _refuse_line_breaks(name, parsed)
    return bytes(SMTP_POLICY.fold_binary(name, parsed))


_ADDRESS_SPECIALS = re.compile(r'[<>()\[\]:;@\\,"]')


@functools.lru_cache(maxsize=4096)
def header_address(name: str, address: str) -> Address:
    """``Name <addr>`` as an Address object (assigned as is, never re-parsed), its display
    name on one line and without RFC 5322 specials: CPython folds a long display name
    without quoting it, so ``<``, ``,`` or ``:`` in a name could split the header into
    other addresses."""
    local, _, domain = address.rpartition("@")
    display = " ".join(_ADDRESS_SPECIALS.sub(" ", one_line(name, limit=100)).split())
    return Address(display_name=display, username=local, domain=domain)
