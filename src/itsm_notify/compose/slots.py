"""Render an event's email once and fill in each recipient: the CSS is inlined once per
event (and per shape of recipient, see below), not once per message.

css-inline has no compiled-stylesheet API: every ``inline()`` call parses the document
and the stylesheet again, and it costs more than the Jinja rendering itself. Yet the
emails of one event differ only in a few per-recipient values (the greeting, the
unsubscribe link). So the templates are rendered and inlined once with a *slot* (a
unique marker of letters and digits, which neither Jinja's escaping nor the inliner
alters) in place of each of those values, and each recipient's email is that result
with the slots filled in.

That is the same text as rendering the recipient's email directly when three things
hold, and otherwise the email is rendered directly:

* the templates only print a per-recipient value or test it (``{{ x }}``,
  ``{{ recipient.email }}``, ``{% if x %}``, ``x is none``); their syntax trees, with the
  templates they extend, include or import, are checked once;
* each slotted value is printable text without ``& < > " '``: Jinja's escaping and the
  HTML parser and serializer inside the inliner then leave it as it is, in text, in an
  attribute, anywhere (a value that is empty or None is not slotted: it is part of the
  cached shape);
* the first email of each template and shape is also rendered directly and compared; a
  difference sends that shape to direct rendering for good.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from jinja2 import Environment, nodes

from .translated import is_sentence_call

Render = Callable[[str, Mapping[str, Any]], tuple[str, str]]
Path = tuple[str, ...]  # ("greeting_name",) or ("recipient", "email")

_PRESENCE_TESTS = frozenset({"defined", "undefined", "none"})
_SLOTTABLE_EXCLUDED = frozenset("&<>\"'")  # what Jinja's escaping changes


@dataclass(frozen=True)
class _Filled:
    """A rendering cut at its slots: literal text and slot indexes, alternating."""

    pieces: tuple[str | int, ...]

    def fill(self, values: list[str]) -> str:
        return "".join(p if isinstance(p, str) else values[p] for p in self.pieces)


def _cut(rendered: str, opening: str) -> _Filled:
    """``rendered`` cut at its slots, ``{opening}{index}e`` (split: a regular expression
    over every page of every event cost three times as much)."""
    text, *rest = rendered.split(opening)
    pieces: list[str | int] = []
    for part in rest:
        end = part.find("e")
        if end > 0 and part[:end].isascii() and part[:end].isdigit():
            pieces += [text, int(part[:end])]
            text = part[end + 1:]
        else:  # not a slot after all: text
            text += opening + part
    pieces.append(text)
    return _Filled(tuple(pieces))


def _paths(personal: Mapping[str, Any]) -> Iterator[tuple[Path, Any]]:
    for name, value in personal.items():
        if isinstance(value, SimpleNamespace):
            for attr, inner in vars(value).items():
                yield (name, attr), inner
        else:
            yield (name,), value


def _uses_plainly(node: nodes.Node, values: frozenset[str], spaces: frozenset[str]) -> bool:
    """True when every use of the per-recipient ``values`` and namespaces (``spaces``)
    under ``node`` prints a value (``{{ x }}``, ``{{ space.attr }}``), puts it into a
    translated sentence printed as it is (``{{ _("Hi %(name)s,", name=x) }}``) or tests
    it (``{% if x %}``, ``not x``, ``x is none``)."""

    def used(child: nodes.Node) -> bool:
        return (isinstance(child, nodes.Name) and child.name in values) or (
            isinstance(child, nodes.Getattr) and isinstance(child.node, nodes.Name)
            and child.node.name in spaces)

    for child in node.iter_child_nodes():
        if isinstance(child, nodes.EvalContextModifier):
            return False  # {% autoescape %}: the escaping is no longer known
        if isinstance(child, nodes.Name) and child.name in spaces:
            return False  # a namespace used whole
        if isinstance(node, nodes.Output) and _is_sentence(child):
            # Its values go into the translation with ``%``, escaped and otherwise as
            # they are (render.install_translations): a slot comes out a slot. Not a
            # count (``num``), which is formatted as a number.
            assert isinstance(child, nodes.Call)
            if not all(_uses_plainly(arg, values, spaces) and not used(arg)
                       for arg in child.args):
                return False
            if not all((used(kw.value) and kw.key != "num")
                       or (not used(kw.value) and _uses_plainly(kw, values, spaces))
                       for kw in child.kwargs):
                return False
            continue
        if not used(child):
            if not _uses_plainly(child, values, spaces):
                return False
            continue
        if isinstance(node, nodes.Output | nodes.If | nodes.Not):
            continue
        if isinstance(node, nodes.Test) and node.name in _PRESENCE_TESTS:
            continue
        return False
    return True




def _is_sentence(node: nodes.Node) -> bool:
    """A call of the translation functions with plain arguments: ``_("...", name=x)``."""
    return is_sentence_call(node) and node.dyn_args is None and node.dyn_kwargs is None


class SlotRenderer:
    """Renders (text, HTML) pairs for many recipients of one event. ``render`` is the
    direct path (Jinja, then the CSS inliner); ``render(template, shared, personal)``
    gives what ``render(template, {**shared, **personal})`` would."""

    def __init__(self, env: Environment, render: Render) -> None:
        self.env = env
        self.direct = render
        self._opening = f"itsm{secrets.token_hex(6)}s"  # a slot: {opening}{index}e
        self._lock = threading.Lock()
        self._plain: dict[tuple[str, frozenset[str], frozenset[str]], bool] = {}
        self._checked: set[tuple[Any, ...]] = set()
        self._broken: set[tuple[Any, ...]] = set()
        self._shared: Mapping[str, Any] | None = None
        self._cache: dict[tuple[Any, ...], tuple[_Filled, _Filled]] = {}

    def render(self, template: str, shared: Mapping[str, Any],
               personal: Mapping[str, Any]) -> tuple[str, str]:
        paths = list(_paths(personal))
        key = self._shape(template, paths)
        if key is None or not self._templates_plain(template, personal):
            return self.direct(template, {**shared, **personal})
        with self._lock:
            if self._shared is not shared:  # a new event: forget the last one's renderings
                self._shared, self._cache = shared, {}
            if key not in self._cache:
                self._cache[key] = self._render_slotted(template, shared, paths)
            cut = self._cache[key]
            broken = key in self._broken
        if broken:
            return self.direct(template, {**shared, **personal})
        values = [value for _, value in paths]
        result = cut[0].fill(values), cut[1].fill(values)
        if key not in self._checked:
            expected = self.direct(template, {**shared, **personal})
            with self._lock:
                self._checked.add(key)
                if expected != result:
                    self._broken.add(key)
            return expected
        return result

    @staticmethod
    def _shape(template: str, paths: list[tuple[Path, Any]]) -> tuple[Any, ...] | None:
        """The cache key: which values are slotted, and the others as they are. None when
        a value cannot be slotted (not text, or text that escaping or parsing changes)."""
        shape: list[Any] = [template]
        for path, value in paths:
            if value is None or value == "":
                shape.append((path, value))
            elif isinstance(value, str) and value.isprintable() \
                    and not _SLOTTABLE_EXCLUDED.intersection(value):
                shape.append((path, True))
            else:
                return None
        return tuple(shape)

    def _render_slotted(self, template: str, shared: Mapping[str, Any],
                        paths: list[tuple[Path, Any]]) -> tuple[_Filled, _Filled]:
        slotted: dict[str, Any] = {}
        for index, (path, value) in enumerate(paths):
            filled = f"{self._opening}{index}e" if value else value
            if len(path) == 1:
                slotted[path[0]] = filled
            else:
                slotted.setdefault(path[0], SimpleNamespace())
                setattr(slotted[path[0]], path[1], filled)
        text, html = self.direct(template, {**shared, **slotted})
        return _cut(text, self._opening), _cut(html, self._opening)

    def _templates_plain(self, template: str, personal: Mapping[str, Any]) -> bool:
        """Whether ``template``'s pair (and what they extend, include or import) use the
        per-recipient values plainly; checked once per template."""
        spaces = frozenset(k for k, v in personal.items() if isinstance(v, SimpleNamespace))
        values = frozenset(personal) - spaces
        key = (template, values, spaces)
        if key not in self._plain:
            self._plain[key] = all(self._source_plain(f"{template}.{ext}", values, spaces, set())
                                   for ext in ("txt", "html"))
        return self._plain[key]

    def _source_plain(self, name: str, values: frozenset[str], spaces: frozenset[str],
                      seen: set[str]) -> bool:
        if name in seen:
            return True
        seen.add(name)
        assert self.env.loader is not None
        source = self.env.loader.get_source(self.env, name)[0]
        tree = self.env.parse(source)
        for ref in tree.find_all((nodes.Extends, nodes.Include, nodes.Import,
                                  nodes.FromImport)):
            target = getattr(ref, "template", None)
            if not (isinstance(target, nodes.Const) and isinstance(target.value, str)):
                return False
            if not self._source_plain(target.value, values, spaces, seen):
                return False
        return _uses_plainly(tree, values, spaces)
