"""The body of a message as the email package writes it, faster: quoted-printable
lines remembered, the MIME boundary, and the fixed multipart/alternative structure
around the two parts."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from email import quoprimime

from .headers import SMTP_POLICY, fold_header

_QP_MAX_LINE = SMTP_POLICY.max_line_length or 78
_QP_AS_IS = re.compile(rb"(?:[\t !-<>-~]*[!-<>-~])?")
"""A line quoted-printable leaves as it is: printable ASCII but ``=``, tabs and spaces,
not ending in white space (and not longer than ``_QP_MAX_LINE``)."""


@functools.lru_cache(maxsize=8192)
def _qp_line(line: bytes) -> bytes:
    """One line's quoted-printable encoding, its soft line breaks made CRLF. Most lines
    that are new (a ticket's title in a digest's row) need no encoding at all: they are
    recognised at C speed instead of going through the email package's encoder."""
    if len(line) <= _QP_MAX_LINE and _QP_AS_IS.fullmatch(line):
        return line
    encoded = quoprimime.body_encode(line.decode("latin-1"), _QP_MAX_LINE)
    return encoded.replace("\n", "\r\n").encode("ascii")


def _qp_part(text: str) -> bytes:
    """A text part's body as ``set_content(text, cte="quoted-printable")`` encodes it and
    the generator writes it: the encoder works a line at a time, and most lines (the
    template's) recur from email to email, so each line's encoding is remembered."""
    lines = text.encode("utf-8").splitlines()
    return b"\r\n".join(map(_qp_line, lines)) + b"\r\n" if lines else b"\r\n"


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
