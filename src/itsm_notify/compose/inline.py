"""CSS inlined once per page structure, not once per message.

css-inline parses the whole page and its stylesheet on every call, and that cost more
than rendering the templates (it has no API to reuse a parsed stylesheet). Yet the pages
of one template differ mostly in the values they print (a title, a name, a link), and
which element a CSS rule styles does not depend on those values. So the page is rendered
with a *marker* (letters and digits, which neither escaping nor the inliner alters) in
place of every value it prints, giving its *structure*; the structure is inlined once
and remembered, and each page is that inlined structure with its values put back,
escaped the way the inliner writes text (``& < >``) or an attribute value (``& "``).

That equals inlining the page itself when:

* a value is text or an attribute value other than ``class``, ``id`` and ``style`` (and
  any attribute at all when the stylesheet has attribute selectors): a structure that
  puts a marker anywhere else (a comment, a ``<style>``, a tag's name) is not remembered;
* the value's characters come through the HTML parser unchanged: a value holding a
  carriage return or a NUL makes its page inlined directly;
* blank values stay in the structure (where whitespace-only text goes in a table is
  not where other text goes), and so does markup (``|safe``, a macro's output);
* the first page of each structure is also inlined directly and compared: a difference
  sends that structure to direct inlining for good.

Templates keep this in mind where a value decides a class, as the priority badge does:
its class is one of five known words, printed ``|safe`` so that it stays structure.
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from jinja2 import Template
from markupsafe import Markup, escape

from .mime import EncodedPage, Hole


class _Inliner(Protocol):
    def inline(self, html: str) -> str:
        ...


@dataclass
class _Recording:
    """The values one page printed, in order; ``plain`` is False once one of them would
    not come through the HTML parser unchanged."""

    values: list[str] = field(default_factory=list)
    plain: bool = True


_recording: ContextVar[_Recording | None] = ContextVar("itsm_notify_inline", default=None)
_UNSTYLED_ONLY = frozenset({"class", "id", "style"})
_MARKUP = re.compile(  # as css-inline writes a page: attribute values in double quotes
    r"""(?P<opaque><!--.*?-->"""
    r"""|<(style|script|xmp|iframe|noembed|noframes|noscript|plaintext)\b[^>]*>.*?</\2\s*>)"""
    r"""|<[A-Za-z/!?](?:[^>"]|"[^"]*")*>""", re.IGNORECASE | re.DOTALL)
_ATTRIBUTE = re.compile(r"""([^\s"'=<>/]+)="([^"]*)["]""")
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style>", re.IGNORECASE | re.DOTALL)


def escape_text(value: str) -> str:
    """A text node as css-inline writes it."""
    return (value.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def escape_attribute(value: str) -> str:
    """An attribute value as css-inline writes it (always in double quotes)."""
    return value.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace('"', "&quot;")


@dataclass(frozen=True)
class _Inlined:
    """An inlined structure cut at its markers: literal text, and (value index, escape)."""

    pieces: tuple[str | Hole, ...]

    def fill(self, values: list[str]) -> FilledPage:
        page = FilledPage("".join(p if isinstance(p, str) else p[1](values[p[0]])
                                  for p in self.pieces))
        page.inlined, page.values = self, values
        return page

    @functools.cached_property
    def encoded(self) -> EncodedPage:
        return EncodedPage(self.pieces)


class FilledPage(str):
    """A page filled in from an inlined structure: the page's text, and the way to its
    quoted-printable body from the structure's (``mime.EncodedPage``)."""

    inlined: _Inlined
    values: list[str]

    def quoted_printable(self) -> bytes | None:
        return self.inlined.encoded.encode(self.values)


class StructureInliner:
    """Renders HTML templates with their CSS inlined, inlining each page structure once.

    Its ``finalize`` must be the Jinja environment's ``finalize`` hook: while ``render``
    runs, it turns each printed value into a marker; at any other time it changes nothing.
    """

    def __init__(self, inliner: _Inliner, *, remembered: int = 256) -> None:
        self.inliner = inliner
        self._marker = f"itsk{secrets.token_hex(6)}v"
        self._slot = re.compile(rf"{self._marker}(\d+)e")
        self._remembered = remembered
        self._structures: OrderedDict[str, _Inlined | None] = OrderedDict()
        self._lock = threading.Lock()

    def finalize(self, value: Any) -> Any:
        """Called for every value a template prints: kept lean."""
        recording = _recording.get()
        if recording is None:
            return value
        if type(value) is str:
            text = value
        elif isinstance(value, Markup) or hasattr(value, "__html__"):
            return value
        else:
            text = str(value)
        if not text or text.isspace():
            return value
        if "\r" in text or "\x00" in text:  # the HTML parser rewrites these
            recording.plain = False
        recording.values.append(text)
        return f"{self._marker}{len(recording.values) - 1}e"

    def render(self, template: Template, variables: Mapping[str, Any]) -> str:
        """``inline(template.render(variables))``, inlining only structures not seen yet."""
        recording = _Recording()
        token = _recording.set(recording)
        try:
            structure = template.render(variables)
        finally:
            _recording.reset(token)
        values = recording.values
        if not recording.plain:
            return self.inliner.inline(self._page(structure, values))
        with self._lock:
            known = structure in self._structures
            inlined = self._structures.get(structure)
            if known:
                self._structures.move_to_end(structure)
        if not known:
            inlined = self._learn(structure, values)
        if inlined is None:
            return self.inliner.inline(self._page(structure, values))
        return inlined.fill(values)

    def _page(self, structure: str, values: list[str]) -> str:
        """The page Jinja would have rendered: each value escaped in its marker's place."""
        return self._slot.sub(lambda m: str(escape(values[int(m.group(1))])), structure)

    def _learn(self, structure: str, values: list[str]) -> _Inlined | None:
        inlined = self._cut(self.inliner.inline(structure))
        if inlined is not None and \
                inlined.fill(values) != self.inliner.inline(self._page(structure, values)):
            inlined = None
        with self._lock:
            self._structures[structure] = inlined
            while len(self._structures) > self._remembered:
                self._structures.popitem(last=False)
        return inlined

    def _cut(self, html: str) -> _Inlined | None:
        """The inlined structure cut at its markers, each with the escaping its place
        needs; None when a marker sits where a value could change the styling or the
        way the page parses. One pass over the page's markup."""
        attribute_selectors = any("[" in css for css in _STYLE_BLOCK.findall(html))
        pieces: list[str | Hole] = []
        start = 0  # the end of the last piece taken

        def take(marker: re.Match[str], escaper: Callable[[str], str]) -> None:
            nonlocal start
            pieces.extend((html[start:marker.start()], (int(marker.group(1)), escaper)))
            start = marker.end()

        position = 0
        for markup in _MARKUP.finditer(html):
            for marker in self._slot.finditer(html, position, markup.start()):  # text
                take(marker, escape_text)
            position = markup.end()
            inside = list(self._slot.finditer(html, markup.start(), markup.end()))
            if not inside:
                continue
            if markup.group("opaque") is not None or attribute_selectors:
                return None  # in a comment or a raw-text element, or a selector may see it
            attributes = list(_ATTRIBUTE.finditer(html, markup.start(), markup.end()))
            for marker in inside:
                attribute = next((a for a in attributes
                                  if a.start(2) <= marker.start() < a.end(2)), None)
                if attribute is None or attribute.group(1).lower() in _UNSTYLED_ONLY:
                    return None
                take(marker, escape_attribute)
        for marker in self._slot.finditer(html, position):
            take(marker, escape_text)
        pieces.append(html[start:])
        return _Inlined(tuple(pieces))
