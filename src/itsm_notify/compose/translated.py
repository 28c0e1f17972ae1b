"""The templates' words in one reader's language: Jinja's i18n extension, new style
(``{{ _("Hi %(name)s,", name=x) }}``, ``{{ ngettext(...) }}``), over a ``Language``.

Two things differ from the extension as it ships, both for the renderer's fast paths:

* each text value put into a sentence goes through the environment's ``finalize``, as a
  printed value does, so that while a page's structure is recorded (inline.py) a
  sentence holds a marker, not the value: the structure of a sentence about one ticket
  is the structure of the same sentence about another;
* with ``compile_words`` (the fast path), the words are translated when a template is
  compiled, not each time it renders: a sentence without values becomes template text,
  as the English templates' text was before they were translated (Jinja joins it with
  the text around it), and a sentence with values has its translation looked up once,
  its values still put in at each rendering. A plural (``ngettext``) is still chosen at
  rendering. With ``compile_words=False`` every sentence is translated as it renders,
  as the extension does; tests/test_fast_paths.py holds the two byte for byte equal in
  every language.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from typing import Any, TypeGuard

from jinja2 import Environment, nodes, pass_context
from jinja2.runtime import Context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from .i18n import Language

TRANSLATED = frozenset({"_", "gettext", "ngettext", "_filled"})
"""The functions a template's sentences are written with (``_filled``: a sentence
translated when the template was compiled)."""


class TranslatedEnvironment(Environment):
    """A Jinja environment whose templates are written in ``language``."""

    def __init__(self, language: Language, *, compile_words: bool = True,
                 **options: Any) -> None:
        super().__init__(extensions=["jinja2.ext.i18n"], **options)
        self.language = language
        self.compile_words = compile_words
        finalize: Callable[[Any], Any] = options.get("finalize") or _as_it_is
        self.install_gettext_callables(  # type: ignore[attr-defined]  # the extension's
            language.gettext, language.ngettext, newstyle=True)
        self.globals.update(_sentences(language, finalize))
        self.globals.update({_IN_EXPRESSIONS[name]: function for name, function
                             in _sentences(language, _as_it_is).items()})

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one dict, where Jinja makes a ChainMap over the
        environment's (so that globals added later reach templates loaded before). Every
        rendering copies them into its context and every ``{% import %}`` compares them,
        which over a ChainMap runs in Python: a tenth of rendering a page. This
        environment's globals are complete once ``__init__`` returns and never change."""
        return {**self.globals, **(d or {})}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's syntax tree, its words translated when ``compile_words``, and
        its sentences that an expression goes on with told apart (``_InExpressions``).
        (``_parse`` is where Jinja turns source into the tree that ``parse`` returns and
        ``compile`` compiles: the one place both go through.)"""
        tree = super()._parse(source, name, filename)
        if self.compile_words:
            tree = _WordsTranslated(self.language).visit(tree)
        return _InExpressions().visit(tree)


def _as_it_is(value: Any) -> Any:
    return value


def _sentences(language: Language, finalize: Callable[[Any], Any]
               ) -> dict[str, Callable[..., str]]:
    """The functions sentences are written with, each text value put in through
    ``finalize``."""

    def fill(text: str, autoescape: bool, variables: dict[str, Any]) -> str:
        if not variables and "%" not in text:
            return Markup(text) if autoescape else text
        values = {key: finalize(value) if isinstance(value, str) else value
                  for key, value in variables.items()}
        return Markup(text) % values if autoescape else text % values

    @pass_context
    def gettext(context: Context, message: str, **variables: Any) -> str:
        return fill(language.gettext(message), context.eval_ctx.autoescape, variables)

    @pass_context
    def filled(context: Context, translated: str, **variables: Any) -> str:
        return fill(translated, context.eval_ctx.autoescape, variables)

    @pass_context
    def ngettext(context: Context, singular: str, plural: str, num: int,
                 **variables: Any) -> str:
        variables.setdefault("num", num)
        return fill(language.ngettext(singular, plural, num), context.eval_ctx.autoescape,
                    variables)

    return {"_": gettext, "gettext": gettext, "ngettext": ngettext, "_filled": filled}


_IN_EXPRESSIONS = {name: f"_{name.strip('_')}_in_expression" for name in TRANSLATED}
"""The twin of each sentence function for a sentence an expression goes on with: its
values put in as they are."""


class _InExpressions(NodeTransformer):
    """A sentence printed as it is puts its values in through ``finalize``, so that the
    page's structure holds markers (inline.py); one whose result an expression goes on
    with (``{{ _("%(t)s", t=x)|upper }}``, an argument, a ``{% set %}``) calls its twin,
    which puts them in as they are: the expression would change a marker, which then
    could not be filled in (the page is then its own structure, inlined as it is)."""

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        # Calls are renamed in place (no node is replaced).
        for child in node.nodes:
            if is_sentence_call(child):  # printed as it is: its arguments may not be
                self.generic_visit(child)
            else:
                self.visit(child)
        return node

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        self.generic_visit(node)
        if is_sentence_call(node):
            assert isinstance(node.node, nodes.Name)
            node.node = nodes.Name(_IN_EXPRESSIONS[node.node.name], "load",
                                   lineno=node.node.lineno)
        return node


def is_sentence_call(node: nodes.Node) -> TypeGuard[nodes.Call]:
    """A call of a function sentences are written with (``TRANSLATED``)."""
    return isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) \
        and node.node.name in TRANSLATED


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%|%")


class _WordsTranslated(NodeTransformer):
    """``_("View ticket")`` → its translation as template text; ``{{ _("Hi %(name)s,",
    name=x) }}`` printed as it is → ``Hallo {{ x }},``: the translation's text around the
    values, each printed as any value is (escaped, through ``finalize``), which is what
    the sentence's ``%`` made of it, without a call at rendering. A sentence used in an
    expression (``_(...)|upper``), or whose values are not each put in once with
    ``%(name)s``, becomes ``_filled("Hallo %(name)s,", name=x)``. Anything else (a message
    that is not a plain string, ``*args``) is left to be translated at rendering."""

    def __init__(self, language: Language) -> None:
        self.language = language

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        printed: list[nodes.Expr] = []
        for child in node.nodes:
            printed += _spliced(child) or [child]
        node.nodes = printed
        return node

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        self.generic_visit(node)
        if not (isinstance(node.node, nodes.Name) and node.node.name in ("_", "gettext")
                and len(node.args) == 1 and isinstance(node.args[0], nodes.Const)
                and isinstance(node.args[0].value, str)
                and node.dyn_args is None and node.dyn_kwargs is None):
            return node
        translated = self.language.gettext(node.args[0].value)
        if not node.kwargs:
            try:
                text = translated % {}  # what the sentence renders as: "%%" is "%"
            except (TypeError, ValueError, KeyError):
                return node  # a stray "%": left to fail (or not) as it would at rendering
            return nodes.TemplateData(text, lineno=node.lineno)
        return nodes.Call(nodes.Name("_filled", "load", lineno=node.lineno),
                          [nodes.Const(translated, lineno=node.lineno)], node.kwargs,
                          None, None, lineno=node.lineno)


def _spliced(node: nodes.Node) -> list[nodes.Expr] | None:
    """A printed ``_filled("Hallo %(name)s,", name=x)`` as ``["Hallo ", x, ","]``; None
    when it is not one, or its values are not each put in exactly once as ``%(name)s``
    (any other conversion, a value used twice or not at all: left to ``%``)."""
    if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name)
            and node.node.name == "_filled" and isinstance(node.args[0], nodes.Const)):
        return None
    values = {kw.key: kw.value for kw in node.kwargs}
    text: str = node.args[0].value
    pieces: list[nodes.Expr] = []
    used: list[str] = []
    start = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.group() == "%":
            return None
        literal = text[start:match.start()] + ("%" if match.group() == "%%" else "")
        start = match.end()
        if literal:
            pieces.append(nodes.TemplateData(literal, lineno=node.lineno))
        if match.group(1) is not None:
            if match.group(1) not in values:
                return None
            used.append(match.group(1))
            pieces.append(values[match.group(1)])
    if sorted(used) != sorted(values) or len(set(used)) != len(used):
        return None
    if text[start:]:
        pieces.append(nodes.TemplateData(text[start:], lineno=node.lineno))
    return pieces
