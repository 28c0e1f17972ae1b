"""Each reader's language and time zone: which catalog a message is written from, and how
its times and durations read. Pure: no database, no sockets.

The catalogs are gettext ``.po`` files under ``itsm_notify/locale/<code>/LC_MESSAGES``,
managed with Babel (README: "Adding a language"), shipped compiled (``.mo``) in the
wheel. English is the source language: its text is the templates' and the code's own.
A locale nobody ships, or a time zone nobody knows, falls back to the default with a
log line, never to a dropped email.
"""

from __future__ import annotations

import functools
import gettext
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError

if TYPE_CHECKING:
    from babel import Locale
# Babel itself is imported where a message is written: an idle cron run, which only
# checks the settings (language_code), needs none of it.

log = logging.getLogger("itsm_notify.i18n")

DOMAIN = "itsm_notify"
LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"
SOURCE_LANGUAGE = "en"
"""The language the templates and the code are written in: it needs no catalog."""

_TAG = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|\d{3}))?$")


def N_(message: str) -> str:
    """Marks a string for extraction, translated where it is shown."""
    return message


PRIORITY_WORDS = {"low": N_("Low"), "medium": N_("Medium"), "high": N_("High"),
                  "critical": N_("Critical")}
"""The contract's priorities as shown, when the source has no label of its own."""
_PRIORITY_LABELS = frozenset(PRIORITY_WORDS.values())


def language_code(tag: str | None) -> str | None:
    """A locale as a BCP 47 code (``pt_BR.UTF-8`` → ``pt-BR``, ``DE`` → ``de``); None
    when it is not one."""
    if not tag:
        return None
    text = tag.strip().split(".")[0].split("@")[0]
    match = _TAG.match(text)
    if match is None:
        return None
    language, script, region = match.groups()
    parts = [language.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def _catalog_name(code: str) -> str:
    return code.replace("-", "_")


@functools.cache
def available_languages(locale_dir: Path = LOCALE_DIR) -> tuple[str, ...]:
    """The languages a message can be written in: English, and every compiled catalog."""
    found = sorted(path.parent.parent.name.replace("_", "-")
                   for path in locale_dir.glob(f"*/LC_MESSAGES/{DOMAIN}.mo"))
    return (SOURCE_LANGUAGE, *(code for code in found if code != SOURCE_LANGUAGE))


def catalog_language(wanted: str) -> str:
    """The available language ``wanted`` names (``pt-BR`` is ``pt`` when only ``pt`` has
    a catalog), for a language asked for by name (``--language``), where falling back
    to the default would hide a typo: ConfigError naming the available ones."""
    available = available_languages()
    found = negotiate(wanted, available, SOURCE_LANGUAGE)
    if found is None:
        raise ConfigError(f"There is no catalog for the language {wanted!r}: use one of "
                          f"{', '.join(available)}.")
    return found


def negotiate(wanted: str | None, available: tuple[str, ...], default: str) -> str | None:
    """The available language for ``wanted``: itself, else its language without the
    region (``pt-BR`` → ``pt``); None when neither is available (the caller then uses
    ``default``)."""
    code = language_code(wanted)
    if code is None:
        return None
    by_lower = {known.lower(): known for known in available}
    parts = code.split("-")
    for size in range(len(parts), 0, -1):
        found = by_lower.get("-".join(parts[:size]).lower())
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class Language:
    """A language and a time zone: how one reader reads a message."""

    code: str
    zone: tzinfo
    translations: gettext.NullTranslations = field(repr=False, compare=False)
    locale: Locale = field(repr=False, compare=False)

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, count: int) -> str:
        return self.translations.ngettext(singular, plural, count)

    @functools.cached_property
    def _time_pattern(self) -> str:
        """The locale's medium date with its short time, and the zone's abbreviation."""
        from babel.dates import get_date_format, get_datetime_format, get_time_format

        both = str(get_datetime_format("medium", self.locale))
        return both.format(get_time_format("short", self.locale).pattern,
                           get_date_format("medium", self.locale).pattern) + " z"

    def time(self, moment: datetime | None) -> str | None:
        """A moment (naive: UTC, as the tool stores them) in the reader's zone and
        words: "Dec 6, 2026, 9:25 AM UTC", "06.12.2026, 10:25 MEZ"."""
        if moment is None:
            return None
        from babel.dates import format_datetime

        aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return format_datetime(aware, self._time_pattern, tzinfo=self.zone, locale=self.locale)

    def duration(self, seconds: int) -> str:
        """A span of at least a minute in its largest whole unit (days, hours or
        minutes: never rounded up), in the reader's words: "3 days", "3 Tage"."""
        from babel.units import format_unit

        unit, size = next(((unit, size) for unit, size in (("day", 86400), ("hour", 3600))
                           if seconds >= size), ("minute", 60))
        return format_unit(seconds // size, f"duration-{unit}", length="long",
                           locale=self.locale)

    def overdue_for(self, due_at: datetime, now: datetime) -> str:
        """How long past due: "3 days overdue"."""
        seconds = int((now - due_at).total_seconds())
        if seconds < 60:
            return self.gettext("just overdue")
        return self.gettext("%(duration)s overdue") % {"duration": self.duration(seconds)}

    def due_in(self, due_at: datetime, now: datetime) -> str:
        """How long until due: "due in 3 hours"."""
        seconds = int((due_at - now).total_seconds())
        if seconds <= 0:
            return self.gettext("due now")
        if seconds < 60:
            return self.gettext("due in less than a minute")
        return self.gettext("due in %(duration)s") % {"duration": self.duration(seconds)}

    def priority(self, stored: str, label: str = "") -> str:
        """A priority as shown: the source's label (translated when it is one of the
        contract's words, as django-spire's "High" is), else the contract's word for it
        in this language, else the stored value."""
        if label:
            return self.gettext(label) if label in _PRIORITY_LABELS else label
        word = PRIORITY_WORDS.get(stored.strip().lower())
        return self.gettext(word) if word else stored


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    if name.strip().upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


_REMEMBERED = 1024
"""Distinct (locale, zone) values, and unknown values warned about, kept per process."""


class Languages:
    """Every reader's ``Language``, loaded once per (language, zone) in a process.

    ``default_locale`` is ITSM_DEFAULT_LOCALE (Django's LANGUAGE_CODE), for ADMINS,
    address-only recipients and anyone whose locale is unknown; ``default_zone`` is
    ITSM_TIME_ZONE (Django's TIME_ZONE), else UTC. ``also``: languages that have
    templates of their own but no catalog (an override folder ``emails/<code>/``):
    their readers get those templates, and English for any text the templates take
    from the code (subjects, in-app text)."""

    def __init__(self, default_locale: str = SOURCE_LANGUAGE, default_zone: str | None = None,
                 locale_dir: Path = LOCALE_DIR, *, also: tuple[str, ...] = ()) -> None:
        self.locale_dir = locale_dir
        catalogs = available_languages(locale_dir)
        self.available = (*catalogs, *(code for code in also if code not in catalogs))
        found = negotiate(default_locale, self.available, SOURCE_LANGUAGE)
        if found is None:
            log.warning("the default locale %r has no catalog; writing in English",
                        default_locale)
        self.default = found or SOURCE_LANGUAGE
        self.default_zone = _zone(default_zone) or UTC
        # by the values as the app stores them; bounded (an app's table may hold any
        # number of distinct values), the catalogs loaded once per language
        self._loaded: dict[tuple[str | None, str | None], Language] = {}
        self._warned: set[str] = set()
        self._catalogs: dict[str, gettext.NullTranslations] = {}

    def get(self, locale: str | None = None, zone: str | None = None) -> Language:
        """The language for a reader's locale (``pt-BR`` → ``pt`` → the default) and
        time zone (unknown → the default zone); unknown values are logged once."""
        found = self._loaded.get((locale, zone))
        if found is None:
            if len(self._loaded) >= _REMEMBERED:
                self._loaded.clear()
            found = self._loaded[(locale, zone)] = self._load(locale, zone)
        return found

    def _load(self, locale: str | None, zone: str | None) -> Language:
        code = negotiate(locale, self.available, self.default) if locale else None
        if code is None:
            code = self.default
            if locale:
                self._warn(f"locale {locale!r}", f"no catalog for locale {locale!r}; writing "
                           f"in {self.default!r} (ITSM_DEFAULT_LOCALE)")
        tz = _zone(zone)
        if tz is None:
            tz = self.default_zone
            if zone:
                self._warn(f"zone {zone!r}", f"unknown time zone {zone!r}; showing times in "
                           f"{self.default_zone} (ITSM_TIME_ZONE)")
        return Language(code, tz, self._translations(code), _babel_locale(code))

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            if len(self._warned) >= _REMEMBERED:
                self._warned.clear()
            self._warned.add(key)
            log.warning(message)

    def _translations(self, code: str) -> gettext.NullTranslations:
        found = self._catalogs.get(code)
        if found is None:
            if code == SOURCE_LANGUAGE:
                found = gettext.NullTranslations()
            else:
                from babel.support import Translations

                found = Translations.load(str(self.locale_dir), [_catalog_name(code)],
                                          DOMAIN)
            self._catalogs[code] = found
        return found


@functools.cache
def _babel_locale(code: str) -> Locale:
    """Babel's data for a language (its formats), else its language's, else English's
    (a language an override folder adds that CLDR does not know)."""
    from babel import Locale, UnknownLocaleError

    for name in (_catalog_name(code), code.split("-")[0]):
        try:
            return Locale.parse(name)
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse(SOURCE_LANGUAGE)


def template_languages(override_dir: str | None) -> tuple[str, ...]:
    """The languages an override folder has templates for: ``emails/<code>/``."""
    if not override_dir:
        return ()
    emails = Path(override_dir) / "emails"
    if not emails.is_dir():
        return ()
    return tuple(sorted(code for path in emails.iterdir()
                        if path.is_dir() and (code := language_code(path.name)) is not None))
