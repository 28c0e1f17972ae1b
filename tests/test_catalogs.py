"""The translations (README: "Adding a language"): the template (.pot) holds every string
the templates and the code mark, every shipped catalog translates each of them with the
msgid's placeholders, and its compiled .mo is the .po as it stands.

Pure: Babel's extraction and catalog readers in-process, no database. The checks are
functions returning one line per problem, each tried on a broken catalog below, so a
test here can fail.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_keywords, parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po

from itsm_notify.compose.i18n import DOMAIN, LOCALE_DIR, Languages, available_languages

ROOT = Path(__file__).resolve().parents[1]
POT = LOCALE_DIR / f"{DOMAIN}.pot"
SHIPPED = ("de", "fr", "es")

EXTRACT = ("uv run pybabel extract -F babel.cfg -k N_ --no-location --sort-output "
           "--project itsm-notify --copyright-holder itsm-notify "
           "-o src/itsm_notify/locale/itsm_notify.pot .")
UPDATE = ("uv run pybabel update -i src/itsm_notify/locale/itsm_notify.pot "
          "-d src/itsm_notify/locale -D itsm_notify --ignore-obsolete")
COMPILE = "uv run pybabel compile -d src/itsm_notify/locale -D itsm_notify"
FIX = (f'README "Adding a language": `{UPDATE}`, translate the entries named, then '
       f"`{COMPILE}`")

Key = tuple[str | tuple[str, ...], str | None]
"""A message as gettext looks it up: its msgid (with its plural) and its context."""

_PERCENT = re.compile(r"%(?:%|\(\w+\)[#0 +-]*(?:\d+|\*)?(?:\.\d+)?[a-zA-Z]|.?)")


def key_of(message: Message) -> Key:
    msgid = message.id
    return (tuple(msgid) if isinstance(msgid, (list, tuple)) else msgid, message.context)


def shown(key: Key) -> str:
    msgid, context = key
    text = " / ".join(map(repr, msgid)) if isinstance(msgid, tuple) else repr(msgid)
    return f"{text} (context {context!r})" if context else text


def extracted() -> dict[Key, Message]:
    """What `pybabel extract` (EXTRACT) finds in the sources now, as a catalog."""
    with (ROOT / "babel.cfg").open(encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config, "babel.cfg")
    catalog = Catalog()
    for filename, lineno, message, comments, context in extract_from_dir(
            ROOT, method_map, options_map,
            keywords={**DEFAULT_KEYWORDS, **parse_keywords(["N_"])}):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments,
                    context=context)
    return {key_of(m): m for m in catalog if m.id}


def read_catalog(path: Path) -> Catalog:
    with path.open("rb") as file:
        return read_po(file, locale=path.parent.parent.name, domain=DOMAIN)


def placeholders(text: str) -> set[str]:
    """Both kinds of placeholder: ``%(num)d`` (templates, %-formatted by Jinja's new
    style gettext; a stray ``%`` counts, ``%%`` is a literal) and ``{title}``
    (``str.format`` in the code; ``{{`` is a literal)."""
    found = {token for token in _PERCENT.findall(text) if token != "%%"}
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text)
                  if field is not None]
    except ValueError:
        found.add("<unbalanced { }>")
    else:
        found.update("{" + field + "}" for field in fields)
    return found


def template_problems(template: Catalog, sources: dict[Key, Message]) -> list[str]:
    """How the .pot differs from what the sources mark."""
    in_template = {key_of(m) for m in template if m.id}
    return ([f"marked in the sources, missing from the .pot: {shown(k)}"
             for k in sorted(sources.keys() - in_template, key=str)]
            + [f"in the .pot, no longer in the sources: {shown(k)}"
               for k in sorted(in_template - sources.keys(), key=str)])


def catalog_problems(catalog: Catalog, sources: dict[Key, Message]) -> list[str]:
    """Every way a catalog falls short of translating ``sources``, one line each."""
    language = str(catalog.locale)
    problems: list[str] = []
    expected = get_plural(catalog.locale).plural_forms
    if catalog.plural_forms != expected:
        problems.append(f"[{language}] Plural-Forms is {catalog.plural_forms!r}, Babel's "
                        f"for {language} is {expected!r}")
    by_key = {key_of(m): m for m in catalog if m.id}
    for key in sorted(sources, key=str):
        message = by_key.get(key)
        where = f"[{language}] {shown(key)}"
        if message is None:
            problems.append(f"{where}: missing")
            continue
        if message.fuzzy:
            problems.append(f"{where}: fuzzy (check the translation, drop the flag)")
        sources_text = list(message.id) if isinstance(message.id, (list, tuple)) \
            else [message.id]
        forms = list(message.string) if isinstance(message.string, (list, tuple)) \
            else [message.string]
        if message.pluralizable and len(forms) != catalog.num_plurals:
            problems.append(f"{where}: {len(forms)} plural forms, {language} has "
                            f"{catalog.num_plurals}")
        for index, form in enumerate(forms):
            label = f"msgstr[{index}]" if message.pluralizable else "msgstr"
            if not form:
                problems.append(f"{where}: {label} untranslated")
                continue
            wanted = placeholders(sources_text[min(index, len(sources_text) - 1)])
            if placeholders(form) != wanted:
                problems.append(f"{where}: {label} has placeholders "
                                f"{sorted(placeholders(form))}, the msgid "
                                f"{sorted(wanted)}")
    problems += [f"[{language}] {shown(key)}: not in the sources any more"
                 for key in sorted(by_key.keys() - sources.keys(), key=str)]
    problems += [f"[{language}] {shown(key_of(m))}: obsolete (#~) entry"
                 for m in catalog.obsolete.values()]
    return problems


def compiled_problems(catalog: Catalog, compiled: Catalog) -> list[str]:
    """How a .mo differs from its .po: what `pybabel compile` would change."""
    language = str(catalog.locale)
    problems: list[str] = []
    if compiled.plural_forms != catalog.plural_forms:
        problems.append(f"[{language}] the .mo's Plural-Forms is {compiled.plural_forms!r}, "
                        f"the .po's {catalog.plural_forms!r}")
    wanted = {key_of(m): m.string for m in catalog if m.id and m.string and not m.fuzzy}
    found = {key_of(m): m.string for m in compiled if m.id}
    for key in sorted(wanted.keys() | found.keys(), key=str):
        if _plain(wanted.get(key)) != _plain(found.get(key)):
            problems.append(f"[{language}] {shown(key)}: the .mo has "
                            f"{_translation(found.get(key))}, the .po "
                            f"{_translation(wanted.get(key))}")
    return problems


def _plain(value: object) -> object:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _translation(value: object) -> str:
    return "no translation" if value is None else repr(value)


def report(problems: Iterable[str], fix: str) -> str:
    lines = list(problems)
    shown_lines = lines[:40] + ([f"... and {len(lines) - 40} more"] if len(lines) > 40 else [])
    return "\n".join([*shown_lines, f"Fix: {fix}"])


def catalog_paths() -> list[Path]:
    return sorted(LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def language_of(path: Path) -> str:
    return path.parent.parent.name


@pytest.fixture(scope="module")
def sources() -> dict[Key, Message]:
    found = extracted()
    assert found, "the extraction found no message: is babel.cfg's method map right?"
    return found


# ------------------------------------------------------------------ the shipped catalogs


def test_the_template_is_up_to_date_with_the_sources(sources: dict[Key, Message]) -> None:
    with POT.open("rb") as file:
        template = read_po(file)
    problems = template_problems(template, sources)
    assert not problems, report(problems, f"re-extract the template: `{EXTRACT}`, then "
                                          f"{FIX}")


@pytest.mark.parametrize("path", catalog_paths(), ids=language_of)
def test_each_catalog_translates_every_message(path: Path,
                                               sources: dict[Key, Message]) -> None:
    problems = catalog_problems(read_catalog(path), sources)
    assert not problems, report(problems, FIX)


@pytest.mark.parametrize("path", catalog_paths(), ids=language_of)
def test_each_catalog_passes_babels_checks(path: Path) -> None:
    catalog = read_catalog(path)
    problems = [f"[{language_of(path)}] {shown(key_of(message))}: {error}"
                for message, errors in catalog.check() for error in errors]
    assert not problems, report(problems, FIX)


@pytest.mark.parametrize("path", catalog_paths(), ids=language_of)
def test_each_compiled_catalog_is_its_po(path: Path) -> None:
    mo = path.with_suffix(".mo")
    assert mo.is_file(), f"[{language_of(path)}] {mo.name} is missing. Fix: `{COMPILE}`"
    with mo.open("rb") as file:
        compiled = read_mo(file)
    problems = compiled_problems(read_catalog(path), compiled)
    assert not problems, report(problems, f"`{COMPILE}`")


def test_german_french_and_spanish_are_shipped() -> None:
    assert set(SHIPPED) <= set(available_languages(LOCALE_DIR)), \
        f"expected compiled catalogs for {SHIPPED} in {LOCALE_DIR}"
    assert {language_of(path) for path in catalog_paths()} >= set(SHIPPED)


@pytest.mark.parametrize(("code", "greeting", "one", "many"), [
    ("de", "Hallo %(name)s,", "%(num)d überfälliges Ticket", "%(num)d überfällige Tickets"),
    ("fr", "Bonjour %(name)s,", "%(num)d ticket en retard", "%(num)d tickets en retard"),
    ("es", "Hola, %(name)s:", "%(num)d ticket vencido", "%(num)d tickets vencidos"),
])
def test_a_reader_gets_the_catalog_and_its_plural_rule(code: str, greeting: str, one: str,
                                                       many: str) -> None:
    """As the renderer loads them: by locale (``de_AT`` → ``de``), plurals by the
    language's own rule (French: 0 and 1 are singular)."""
    language = Languages(locale_dir=LOCALE_DIR).get(f"{code}_AT" if code == "de" else code)
    assert language.code == code
    assert language.gettext("Hi %(name)s,") == greeting
    plural = ("%(num)d overdue ticket", "%(num)d overdue tickets")
    assert language.ngettext(*plural, 1) == one
    assert language.ngettext(*plural, 2) == many
    assert language.ngettext(*plural, 0) == (one if code == "fr" else many)


# ------------------------------------------------------------------ the checks can fail


def _catalog(locale: str, entries: Iterable[tuple[object, object]]) -> Catalog:
    catalog = Catalog(locale=locale, domain=DOMAIN)
    for msgid, msgstr in entries:
        catalog.add(msgid, msgstr)
    return catalog


def _messages(catalog: Catalog) -> dict[Key, Message]:
    return {key_of(m): m for m in catalog if m.id}


SOURCES = _messages(_catalog("en", [
    ("Hi %(name)s,", ""),
    (("%(num)d ticket", "%(num)d tickets"), ("", "")),
    ("New Ticket: {title} ({number})", ""),
]))


def test_a_complete_catalog_has_no_problem() -> None:
    good = _catalog("fr", [
        ("Hi %(name)s,", "Bonjour %(name)s,"),
        (("%(num)d ticket", "%(num)d tickets"),
         ("%(num)d ticket", "%(num)d tickets", "%(num)d tickets")),
        ("New Ticket: {title} ({number})", "Nouveau ticket : {title} ({number})"),
    ])
    assert catalog_problems(good, SOURCES) == []


def test_each_shortfall_of_a_catalog_is_named() -> None:
    bad = _catalog("de", [
        (("%(num)d ticket", "%(num)d tickets"), ("%(num)d Ticket", "")),
        ("New Ticket: {title} ({number})", "Neues Ticket: {titel} ({number})"),
        ("Gone", "Weg"),
    ])
    bad["New Ticket: {title} ({number})"].flags.add("fuzzy")
    bad.obsolete["Hi %(name)s,"] = Message("Hi %(name)s,", "Hallo %(name)s,")
    problems = "\n".join(catalog_problems(bad, SOURCES))
    assert "[de] 'Hi %(name)s,': missing" in problems
    assert "'%(num)d ticket' / '%(num)d tickets': msgstr[1] untranslated" in problems
    assert "'New Ticket: {title} ({number})': fuzzy" in problems
    assert "has placeholders ['{number}', '{titel}'], the msgid ['{number}', '{title}']" \
        in problems
    assert "'Gone': not in the sources any more" in problems
    assert "'Hi %(name)s,': obsolete (#~) entry" in problems


@pytest.mark.parametrize(("msgid", "msgstr"), [
    ("%(num)d overdue", "%(num)s überfällig"),     # %(num)d stays %(num)d
    ("Sent %(time)s.", "Gesendet 100% am %(time)s."),  # a stray % breaks Jinja's format
    ("{kind}: {updates}", "{kind}: {updates"),
    ("Hi %(name)s,", "Hallo,"),
])
def test_a_changed_placeholder_is_a_problem(msgid: str, msgstr: str) -> None:
    sources = _messages(_catalog("en", [(msgid, "")]))
    assert any("placeholders" in line
               for line in catalog_problems(_catalog("de", [(msgid, msgstr)]), sources))


def test_plural_forms_follow_babels_rule_for_the_language() -> None:
    """Babel's rule for French has three forms (one, many, other): two are too few."""
    two_forms = _catalog("fr", [(("%(num)d ticket", "%(num)d tickets"),
                                 ("%(num)d ticket", "%(num)d tickets"))])
    problems = catalog_problems(two_forms, _messages(two_forms))
    assert any("2 plural forms, fr has 3" in line for line in problems)


def test_a_template_behind_its_sources_is_named() -> None:
    template = _catalog("en", [("Hi %(name)s,", ""), ("Old", "")])
    problems = template_problems(template, SOURCES)
    assert "marked in the sources, missing from the .pot: 'New Ticket: {title} ({number})'" \
        in problems
    assert "in the .pot, no longer in the sources: 'Old'" in problems


def test_a_stale_compiled_catalog_is_named() -> None:
    po = _catalog("de", [("Hi %(name)s,", "Hallo %(name)s,"),
                         (("%(num)d ticket", "%(num)d tickets"),
                          ("%(num)d Ticket", "%(num)d Tickets"))])
    buffer = BytesIO()
    write_mo(buffer, po)
    buffer.seek(0)
    compiled = read_mo(buffer)
    assert compiled_problems(po, compiled) == []
    po["Hi %(name)s,"].string = "Guten Tag %(name)s,"
    po.add("Due", "Fällig")
    problems = "\n".join(compiled_problems(po, compiled))
    assert "'Hi %(name)s,': the .mo has 'Hallo %(name)s,', the .po 'Guten Tag %(name)s,'" \
        in problems
    assert "'Due': the .mo has no translation, the .po 'Fällig'" in problems
