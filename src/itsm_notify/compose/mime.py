"""The body of a message as the email package writes it, faster: quoted-printable
lines remembered, the MIME boundary, and the fixed multipart/alternative structure
around the two parts."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from typing import cast

from .headers import SMTP_POLICY, fold_header

_QP_MAX_LINE = SMTP_POLICY.max_line_length or 78
_QP_AS_IS = re.compile(rb"(?:[\t !-<>-~]*[!-<>-~])?")
"""A line quoted-printable leaves as it is: printable ASCII but ``=``, tabs and spaces,
not ending in white space (and not longer than ``_QP_MAX_LINE``)."""


@functools.lru_cache(maxsize=8192)
def _qp_line(line: bytes) -> bytes:
    """One line's quoted-printable encoding, its soft line breaks made CRLF. Most lines
    that are new (a ticket's title in a digest's row) need no encoding at all: they are
    recognised at C speed instead of going through the encoder."""
    if len(line) <= _QP_MAX_LINE and _QP_AS_IS.fullmatch(line):
        return line
    return _qp_encode(line)


_QP_ESCAPED = re.compile(rb"[^\t !-<>-~]")
"""A byte quoted-printable writes as ``=XX`` (the email package's body map)."""
_QP_ESCAPED_BUT_EQUALS = re.compile(rb"[^\t !-~]")
_QP_ESCAPES = {bytes([byte]): b"=%02X" % byte for byte in range(256)}


def _qp_encode(line: bytes) -> bytes:
    """``quoprimime.body_encode(line.decode("latin-1"), 78)`` of one line (no CR or LF),
    its soft line breaks CRLF. The email package escapes a line through a per-character
    mapping and then cuts it; a line of a page is mostly ``=`` to escape (attributes),
    which one C-speed replace does. The cutting below is the package's, on bytes;
    tests/test_fast_paths.py holds the two equal."""
    if _QP_ESCAPED_BUT_EQUALS.search(line) is None:
        line = line.replace(b"=", b"=3D")
    else:
        line = _QP_ESCAPED.sub(lambda match: _QP_ESCAPES[match[0]], line)
    if not line:
        return line
    pieces: list[bytes] = []
    start, last_start = 0, len(line) - 1 - _QP_MAX_LINE
    while start <= last_start:
        stop = start + _QP_MAX_LINE - 1
        if line[stop - 2] == 0x3D:  # never cut an escape: the "=" is the soft break
            pieces.append(line[start:stop - 1])
            start = stop - 2
        elif line[stop - 1] == 0x3D:
            pieces.append(line[start:stop])
            start = stop - 1
        else:
            pieces.append(line[start:stop] + b"=")
            start = stop
    if line[-1] in b" \t":  # white space ending a line is escaped, room permitting
        room, last = start - last_start, line[-1:]
        if room >= 3:
            tail = _QP_ESCAPES[last]
        elif room == 2:
            tail = last + b"=\r\n"
        else:
            tail = b"=\r\n" + _QP_ESCAPES[last]
        pieces.append(line[start:-1] + tail)
    else:
        pieces.append(line[start:])
    return b"\r\n".join(pieces)


def _qp_part(text: str) -> bytes:
    """A text part's body as ``set_content(text, cte="quoted-printable")`` encodes it and
    the generator writes it: the encoder works a line at a time, and most lines (the
    template's) recur from email to email, so each line's encoding is remembered."""
    lines = text.encode("utf-8").splitlines()
    return b"\r\n".join(map(_qp_line, lines)) + b"\r\n" if lines else b"\r\n"


Hole = tuple[int, Callable[[str], str]]
"""A value's place in a page: its index among the page's values, and its escaping."""
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # where bytes.splitlines cuts


class EncodedPage:
    """The quoted-printable body of the pages made from one page structure, which differ
    only in the values in their holes (inline.py): the structure's lines without a hole
    are encoded once, here, and a page's lines with one as it is filled. That skips
    splitting, looking up and joining again the eighty-odd lines of a page that never
    change, a third of composing a message that shares nothing with another.

    ``encode(values)`` is ``_qp_part`` of the filled page, or None when a value is empty
    or holds a line break (the page's lines would not be the structure's): the page is
    then encoded whole. tests/test_fast_paths.py holds the two equal."""

    def __init__(self, pieces: Sequence[str | Hole]) -> None:
        parts: list[bytes | tuple[str | Hole, ...]] = []
        encoded: list[bytes] = []  # lines without a hole, not yet in parts
        line: list[str | Hole] = []

        def end_line() -> None:
            if all(isinstance(piece, str) for piece in line):
                encoded.append(_qp_line("".join(cast(list[str], line)).encode()) + b"\r\n")
            else:
                if encoded:
                    parts.append(b"".join(encoded))
                    encoded.clear()
                parts.append(tuple(line))
            line.clear()

        for piece in pieces:
            if isinstance(piece, str):
                first, *rest = _LINE_BREAK.split(piece)
                line.append(first)
                for text in rest:
                    end_line()
                    line.append(text)
            else:
                line.append(piece)
        if any(piece != "" for piece in line):  # splitlines drops a last empty line
            end_line()
        if encoded:
            parts.append(b"".join(encoded))
        self.parts = tuple(parts) or (b"\r\n",)  # an empty page: one empty line

    def encode(self, values: Sequence[str]) -> bytes | None:
        if not all(values) or any("\n" in value or "\r" in value for value in values):
            return None
        return b"".join(
            part if isinstance(part, bytes) else _qp_line("".join(
                piece if isinstance(piece, str) else piece[1](values[piece[0]])
                for piece in part).encode()) + b"\r\n"
            for part in self.parts)


def body_of(text: str) -> bytes:
    """A text part's quoted-printable body: a filled page's from its structure's encoding
    (``EncodedPage``), any other text's line by line (``_qp_part``)."""
    encode = getattr(text, "quoted_printable", None)
    body = encode() if encode is not None else None
    return body if body is not None else _qp_part(text)


_BOUNDARY_KEY = secrets.token_bytes(16)
_BOUNDARY_PLACEHOLDER = b"===============0000000000000000000=="


@functools.lru_cache(maxsize=4096)
def _boundary(thread: str) -> str:
    """The MIME boundary, in the email package's format (so every boundary folds alike:
    see _MULTIPART_HEAD), unguessable from outside. It cannot occur in a part:
    quoted-printable writes ``=`` as ``=3D``."""
    digest = hmac.new(_BOUNDARY_KEY, thread.encode(), hashlib.sha256).digest()
    return f"==============={int.from_bytes(digest[:8]) % 10**19:019d}=="


_MULTIPART_HEAD = fold_header("MIME-Version", "1.0") + fold_header(
    "Content-Type", f'multipart/alternative; boundary="{_BOUNDARY_PLACEHOLDER.decode()}"')
_TEXT_PART_HEAD = (b'Content-Type: text/plain; charset="utf-8"\r\n'
                   b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
_HTML_PART_HEAD = (b'Content-Type: text/html; charset="utf-8"\r\n'
                   b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\n")
