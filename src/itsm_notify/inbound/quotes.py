"""The new text of a reply: quoted text, reply headers and signatures cut off (and
kept). Pure.

Reply headers are recognised in English, German, French and Spanish, as Gmail, Apple
Mail, Thunderbird and Outlook (desktop, web, Mac) write them: "On … wrote:",
"Am … schrieb …:", "Le … a écrit :", "El … escribió:", Outlook's "From: / Sent: / To:
/ Subject:" block in those languages, and "-----Original Message-----" separators.
Signatures: the "-- " delimiter and the mobile clients' "Sent from my iPhone" lines.

The one rule above the others: never drop the only new text. When the answer is
written inline between quoted lines, or below the quote, the quotes around it stay
with it (only a quoted tail after the last answer is cut); when nothing but quotes
and headers would remain, the reader gets an empty ``new`` and everything in ``cut``,
so nothing is lost either way. Forward markers ("---------- Forwarded message")
are not cut: forwarded text is news to the help desk.

Libraries weighed: email-reply-parser is English only; mail-parser-reply knows the
languages but strips every line, cuts at "Thanks," or "Best," anywhere after the first
line (a sentence like "Thanks, that fixed it" loses the answer) and has no notion of
inline answers; talon pulls in scikit-learn and a trained model. None passed the
corpus in tests/inbound_corpus, so this is written here, with that corpus as its test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_QUOTED = re.compile(r"^[ \t]*>")
_ATTRIBUTION = re.compile(
    r"^[ \t]*(?:"
    r"On\b.{1,300}\bwrote\s*:"                          # en: Gmail, Apple, Thunderbird
    r"|Am\b.{1,300}\bschrieb\b.{0,300}:"                 # de
    r"|Le\b.{1,300}\ba[\s\u00a0\u202f]+(?:é|e)crit[\s\u00a0\u202f]*:"  # fr
    r"|El\b.{1,300}\bescribi(?:ó|o)\s*:"                 # es
    r")[ \t]*$", re.IGNORECASE)
_SHORT_ATTRIBUTION = re.compile(r"^[ \t]*\S.{0,200}\bwrote\s*:[ \t]*$", re.IGNORECASE)
"""``Alice Example wrote:`` on one line (some webmail clients)."""
_ANY_ATTRIBUTION = re.compile(f"{_ATTRIBUTION.pattern}|{_SHORT_ATTRIBUTION.pattern}",
                              re.IGNORECASE)
_SEPARATOR = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht|Original-Nachricht|"
    r"Message d'origine|Message original|Mensaje original)[ \t]*-{2,}[ \t]*$",
    re.IGNORECASE)
_FORWARD = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*(?:Forwarded message|Forwarded Message|Weitergeleitete Nachricht|"
    r"Message transf(?:é|e)r(?:é|e)|Mensaje reenviado)[ \t]*-*|Begin forwarded message:|"
    r"Anfang der weitergeleiteten Nachricht:|D(?:é|e)but du message r(?:é|e)exp(?:é|e)di(?:é|e)"
    r"[ \t\u00a0]*:|Inicio del mensaje reenviado:)[ \t]*$", re.IGNORECASE)
"""A forward marker: what follows was forwarded to the help desk, which is news to it."""
_RULE = re.compile(r"^[ \t]*_{10,}[ \t]*$")
_FROM_KEY = re.compile(r"^[ \t]*\*?(?:From|Von|De|Expéditeur)[ \t\u00a0]*:\*?[ \t]", re.IGNORECASE)
_OTHER_KEY = re.compile(
    r"^[ \t]*\*?(?:Sent|Date|To|Cc|Subject|Gesendet|Datum|An|Betreff|Envoyé|Date|À|A|"
    r"Objet|Enviado|Fecha|Para|Asunto|CC)[ \t\u00a0]*:\*?", re.IGNORECASE)
_SIGNATURE = re.compile(r"^-- ?$")
_MOBILE = re.compile(
    r"^[ \t]*(?:Sent from my\b|Sent from (?:Outlook|Mail|Yahoo)\b|Get Outlook for\b|"
    r"Von meinem\b.{0,40}\bgesendet|Gesendet von (?:meinem|Outlook|Mail)\b|"
    r"Holen Sie sich Outlook\b|Envoy(?:é|e) (?:de|depuis) mon\b|Envoy(?:é|e) (?:de|depuis) "
    r"Outlook\b|Obtenir Outlook pour\b|Enviado desde mi\b|Enviado desde Outlook\b|"
    r"Obtener Outlook para\b).{0,80}$", re.IGNORECASE)


@dataclass(frozen=True)
class ReplyText:
    new: str
    """What the sender wrote this time (may be empty: only quotes were sent)."""
    cut: str
    """What was cut from it: reply headers, quoted text, signature."""


def extract_reply(text: str) -> ReplyText:
    """Split a reply's text into what is new and what was quoted or signed."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    header = _reply_header(lines)
    if header is not None:
        start, end, kind = header
        top = _without_signature(lines[:start])
        if _has_text(top.new) and not (kind == "attribution" and _inline_answers(lines[end:])):
            return ReplyText(top.new, _join(top.cut, "\n".join(lines[start:])))
    return _answers_among_quotes(lines, range(header[0], header[1]) if header else range(0))


# ---------------------------------------------------------------- finding the header


def _reply_header(lines: list[str]) -> tuple[int, int, str] | None:
    """The first reply header outside quoted text: its first line, the line after it,
    and its kind."""
    for index, line in enumerate(lines):
        if _QUOTED.match(line) or not line.strip():
            continue
        if _FORWARD.match(line):
            return None
        if _SEPARATOR.match(line):
            return index, index + 1, "separator"
        if _FROM_KEY.match(line) and _outlook_block(lines, index):
            before = index - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            first = before if before >= 0 and _RULE.match(lines[before]) else index
            return first, index + 1, "outlook"
        # an attribution line that a client wrapped over up to three lines
        for span in (1, 2, 3):
            pieces = lines[index:index + span]
            if len(pieces) < span or not pieces[-1].strip() or _QUOTED.match(pieces[-1]):
                break
            joined = " ".join(piece.strip() for piece in pieces)
            pattern = _ATTRIBUTION if span > 1 else _ANY_ATTRIBUTION
            if len(joined) <= 400 and pattern.match(joined) and _quote_follows(lines,
                                                                                index + span):
                return index, index + span, "attribution"
    return None


def _quote_follows(lines: list[str], index: int) -> bool:
    """The first non-blank line from ``index`` on is quoted: "the script wrote:" followed
    by the script's output is the sender's text, not a reply header."""
    following = next((line for line in lines[index:] if line.strip()), "")
    return bool(_QUOTED.match(following))


def _outlook_block(lines: list[str], index: int) -> bool:
    """Two or more header keys (Sent/To/Subject ...) in the lines after a From: line."""
    keys = 0
    for line in lines[index + 1: index + 8]:
        if not line.strip():
            continue
        if _OTHER_KEY.match(line):
            keys += 1
        elif keys == 0 and not line.startswith((" ", "\t")):
            return False
    return keys >= 2


def _inline_answers(lines: list[str]) -> bool:
    """New lines below quoted ones after a reply header: an answer written inline."""
    seen_quote = False
    for line in lines:
        if _QUOTED.match(line):
            seen_quote = True
        elif seen_quote and line.strip() and not _MOBILE.match(line) \
                and not _SIGNATURE.match(line):
            return True
    return False


# ---------------------------------------------------------------- the fall-back


def _answers_among_quotes(lines: list[str], header: range) -> ReplyText:
    """Everything up to the last new (unquoted) line, quotes between answers kept; the
    quoted tail, and a signature after the last answer, cut. Only quotes and the reply
    header: nothing is new."""
    new_lines = [i for i, line in enumerate(lines)
                 if line.strip() and not _QUOTED.match(line) and i not in header]
    if not new_lines:
        return ReplyText("", "\n".join(lines).strip("\n"))
    last = new_lines[-1]
    body = _without_signature(lines[: last + 1], header)
    return ReplyText(body.new, _join(body.cut, "\n".join(lines[last + 1:])))


def _without_signature(lines: list[str], header: range = range(0)) -> ReplyText:
    """``lines`` as text, the signature after the last answer cut when the sender's own
    words (not quotes, not the reply ``header`` lines) remain above it. A "-- " line
    starts a signature that runs to the end; a "Sent from my iPhone" line is one only
    when nothing but blank lines follows it."""
    for index, line in enumerate(lines):
        rest = lines[index + 1:]
        if _MOBILE.match(line) and any(text.strip() for text in rest):
            continue
        if not (_SIGNATURE.match(line) or _MOBILE.match(line)):
            continue
        if any(_QUOTED.match(text) for text in rest):
            continue  # answers below it: a delimiter in the middle is no signature
        above = [text for i, text in enumerate(lines[:index])
                 if i not in header and not _MOBILE.match(text)]
        if _has_text("\n".join(above)):
            return ReplyText(_trim("\n".join(lines[:index])),
                             "\n".join(lines[index:]).strip("\n"))
        break
    return ReplyText(_trim("\n".join(lines)), "")


def _has_text(text: str) -> bool:
    """Words outside quoted lines: something the sender wrote this time."""
    return any(any(ch.isalnum() for ch in line) for line in text.split("\n")
               if not _QUOTED.match(line))


def _trim(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


def _join(*pieces: str) -> str:
    return "\n".join(piece.strip("\n") for piece in pieces if piece.strip())
