"""Every reader's own language and time zone (issue 16): which language a recipient
reads, the fallbacks (never a dropped email), times in the reader's zone, overrides per
language, and, end to end, a German reader of a contract help desk and of a
django-helpdesk queue getting German mail while an English one gets English.

The expected German text comes from the shipped catalog (``Languages``), not from
strings copied here: what is checked is that the reader's catalog is the one used.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo

from contract_app import (
    add_event,
    add_project,
    add_ticket,
    add_user,
    create_schema,
    run_cli,
    smtp_env,
)
from itsm_notify.compose.i18n import Languages, available_languages, language_code, negotiate
from itsm_notify.compose.render import Renderer, in_app_text
from itsm_notify.config import load_settings
from itsm_notify.errors import ConfigError
from itsm_notify.events.audience import EmailRecipient, locale_of
from itsm_notify.events.model import EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import parse_payload
from itsm_notify.storage import schema
from smtp_server import ReceivedMessage, SmtpSink

SITE = "https://helpdesk.example.com"
ADA = User(1, "ada", "ada@example.com", "Ada", "Lovelace")
KLAUS = User(2, "klaus", "klaus@example.com", "Klaus", "Meier", locale="de_DE",
             time_zone="Europe/Berlin")
DUE = datetime(2026, 12, 6, 9, 25)  # UTC, as stored
TICKET = Ticket(id=7, number="TKT-7", title="VPN down", description="Since 9:00.",
                status="open", priority="high", requester_id=1, assignee_id=2, project_id=1,
                due_at=DUE, created_at=None)
GERMAN = Languages().get("de")


def settings(**overrides: Any) -> Any:
    return load_settings({"site_url": SITE, "default_from_email": "Help Desk <hd@example.com>",
                          **overrides}, environ={}, dotenv_path=None)


def context(event_type: str, payload: str = "{}", ticket: Ticket = TICKET,
            project: Project | None = None) -> EventContext:
    return EventContext(event=OutboxEvent(1, event_type, ticket.id, 1, payload),
                        payload=parse_payload(event_type, payload), ticket=ticket,
                        users={1: ADA, 2: KLAUS}, project=project or Project(1, "Network"),
                        manager_ids=())


def to(user: User) -> EmailRecipient:
    return EmailRecipient(user.email or "", user.display_name, user.first_name, user.id,
                          locale=user.locale, time_zone=user.time_zone)


# ------------------------------------------------------------------ which language


def test_german_french_and_spanish_ship_compiled() -> None:
    assert {"en", "de", "fr", "es"} <= set(available_languages())


@pytest.mark.parametrize(("tag", "code"), [
    ("de", "de"), ("de_DE", "de-DE"), ("de-at", "de-AT"), ("pt_BR.UTF-8", "pt-BR"),
    ("zh-Hant-TW", "zh-Hant-TW"), ("", None), ("not a locale", None), ("../../etc", None)])
def test_a_locale_reads_as_a_language_code(tag: str, code: str | None) -> None:
    assert language_code(tag) == code


def test_a_regional_locale_falls_back_to_its_language_then_the_default() -> None:
    available = ("en", "de", "pt")
    assert negotiate("pt-BR", available, "en") == "pt"
    assert negotiate("de_CH", available, "en") == "de"
    assert negotiate("PT", available, "en") == "pt"
    assert negotiate("pt-BR", ("en", "pt", "pt-BR"), "en") == "pt-BR"
    assert negotiate("ja", available, "en") is None  # the caller uses the default


def test_a_regional_catalog_wins_over_its_language(tmp_path: Path) -> None:
    for code, hello in (("pt", "Olá %(name)s,"), ("pt_BR", "Oi %(name)s,")):
        catalog = Catalog(locale=code, domain="itsm_notify")
        catalog.add("Hi %(name)s,", hello)
        folder = tmp_path / code / "LC_MESSAGES"
        folder.mkdir(parents=True)
        with open(folder / "itsm_notify.mo", "wb") as out:
            write_mo(out, catalog)
    languages = Languages("en", None, locale_dir=tmp_path)
    assert languages.get("pt-BR").gettext("Hi %(name)s,") == "Oi %(name)s,"
    assert languages.get("pt_PT").gettext("Hi %(name)s,") == "Olá %(name)s,"
    assert languages.get("pt_PT").code == "pt"


def test_an_unknown_locale_or_zone_is_the_default_with_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    languages = Languages("de", "Europe/Berlin")
    with caplog.at_level(logging.WARNING, "itsm_notify.i18n"):
        # the same unknown locale beside other zones, the same unknown zone beside other
        # locales: each is named once, however many readers hold it
        for other in ("UTC", "Europe/Paris", "America/New_York"):
            klingon = languages.get("tlh", other)
        for other in ("fr", "es", None):
            mars = languages.get(other, "Mars/Olympus_Mons")
    assert klingon.code == "de" and mars.zone == languages.default_zone
    assert sum("'tlh'" in r.getMessage() for r in caplog.records) == 1
    assert sum("Mars/Olympus_Mons" in r.getMessage() for r in caplog.records) == 1
    assert len(caplog.records) == 2


@pytest.mark.parametrize("value", ["../../etc/passwd", "de\x00", "x" * 10_000, " ", "UTC\n",
                                   "Etc/../../x", "/etc/localtime", "de/../fr", "\udcff",
                                   "Europe", "."])
def test_a_hostile_locale_or_zone_is_the_default(value: str) -> None:
    languages = Languages("en", "Europe/Berlin")
    language = languages.get(value, value)
    assert language.code in available_languages()
    assert language.time(DUE)  # writes a time, whatever the zone said
    assert language_code(value) in (None, "utc")


def test_many_distinct_values_are_remembered_within_bounds() -> None:
    languages = Languages("en")
    for n in range(3000):
        languages.get(f"x{n}", None)
    assert len(languages._loaded) <= 1024 and len(languages._warned) <= 1024
    # the catalogs are loaded once per language, whatever the spelling of the locale
    spellings = [languages.get(tag) for tag in ("de", "DE", "de_DE", "de-de", "de_CH.UTF-8")]
    assert len({id(language.translations) for language in spellings}) == 1


def test_the_default_locale_and_zone_take_djangos_names_too() -> None:
    s = load_settings(environ={"LANGUAGE_CODE": "fr", "TIME_ZONE": "Europe/Paris"},
                      dotenv_path=None)
    assert (s.default_locale, s.time_zone) == ("fr", "Europe/Paris")
    s = load_settings(environ={"LANGUAGE_CODE": "fr", "ITSM_DEFAULT_LOCALE": "es"},
                      dotenv_path=None)
    assert s.default_locale == "es"  # the tool's own name wins
    with pytest.raises(ConfigError, match="ITSM_DEFAULT_LOCALE must be a language code"):
        load_settings(environ={"ITSM_DEFAULT_LOCALE": "english please"}, dotenv_path=None)


# ------------------------------------------------------------------ one event, two readers


def test_each_recipient_reads_the_event_in_their_language_and_zone() -> None:
    renderer = Renderer(settings())
    ctx = context("ticket_created")
    english = renderer.render_event(ctx, to(ADA))
    german = renderer.render_event(ctx, to(KLAUS))
    # English stays exactly the contract's subject
    assert english.subject == "New Ticket: VPN down (TKT-7)"
    assert german.subject == GERMAN.gettext("New Ticket: {title} ({number})").format(
        title="VPN down", number="TKT-7")
    assert german.subject != english.subject
    assert GERMAN.gettext("Hi %(name)s,") % {"name": "Klaus"} in german.text
    assert GERMAN.gettext("View ticket") in german.html
    assert '<html lang="de"' in german.html and '<html lang="en"' in english.html
    # the due date: 09:25 UTC is 10:25 in Berlin in December, in German words
    assert "06.12.2026, 10:25 MEZ" in german.text
    assert "Dec 6, 2026, 9:25\u202fAM UTC" in english.text
    # the priority word in the reader's language
    assert GERMAN.gettext("High") in german.text and "High" in english.text


def test_the_fast_path_gives_each_language_what_direct_rendering_gives() -> None:
    renderer = Renderer(settings())
    ctx = context("status_changed", '{"old_status": "open", "new_status": "resolved"}')
    readers = [to(ADA), to(KLAUS), EmailRecipient("f@example.com", "Fleur", "Fleur", 3,
                                                  locale="fr"),
               EmailRecipient("e@example.com", "Elena", "Elena", 4, locale="es-MX"),
               EmailRecipient("k2@example.com", "Karl", "Karl", 5, locale="de")]
    shared = {}
    for reader in readers * 2:
        language = renderer.language_of(reader)
        if language not in shared:
            shared[language] = renderer.event_variables(ctx, language)
        fast = renderer.render_event(ctx, reader, shared[language],
                                     subject=renderer.subject(ctx, language))
        assert fast == renderer.render_event(ctx, reader)
    for code in ("en", "de", "fr", "es"):
        slots = renderer.templates_for(renderer.language(code)).slots
        assert not slots._broken and all(slots._plain.values())


def test_plural_forms_follow_the_count_in_every_language() -> None:
    renderer = Renderer(settings())
    for count in (1, 3):
        payload = json.dumps({"recipient": {"user_id": 2}, "ticket_ids": [7], "total": count})
        ctx = context("overdue", payload)
        german = renderer.render_event(ctx, to(KLAUS))
        singular = GERMAN.ngettext("%(num)d overdue ticket", "%(num)d overdue tickets",
                                   count) % {"num": count}
        assert singular in german.text
    assert GERMAN.ngettext("%(num)d overdue ticket", "%(num)d overdue tickets", 1) != \
        GERMAN.ngettext("%(num)d overdue ticket", "%(num)d overdue tickets", 3)
    english = renderer.subject(context("overdue", '{"recipient": {"user_id": 2}, '
                                                   '"ticket_ids": [7], "total": 3}'))
    assert english == "Overdue Tickets: 3 tickets past due"


def test_in_app_text_is_in_the_users_language() -> None:
    ctx = context("status_changed", '{"new_status": "resolved"}')
    renderer = Renderer(settings())
    title, body, _ = in_app_text(ctx, renderer.subject(ctx, GERMAN), GERMAN)
    assert title.startswith(GERMAN.gettext("Ticket Status Changed: {title} → {new_status}")
                            .split("{")[0])
    assert body == GERMAN.gettext("{someone} changed the status of {number} to {status}"
                                  ).format(someone="Ada Lovelace", number="TKT-7",
                                           status="resolved")


def test_a_reader_without_a_usable_locale_of_their_own_reads_the_teams() -> None:
    team = Project(1, "Berlin", locale="de")
    for own in (None, "   ", "../../etc"):
        reader = User(3, "sam", "sam@example.com", locale=language_code(own) if own else None)
        assert locale_of(context("ticket_created", project=team), reader) == "de"
    french_reader = User(3, "sam", "sam@example.com", locale="fr")
    assert locale_of(context("ticket_created", project=team), french_reader) == "fr"


def test_a_template_override_per_language_wins_for_that_language(tmp_path: Path) -> None:
    german = tmp_path / "emails" / "de"
    german.mkdir(parents=True)
    (german / "ticket_created.txt").write_text("Eigene Vorlage: {{ ticket.title }}\n")
    renderer = Renderer(settings(template_dir=str(tmp_path)))
    ctx = context("ticket_created")
    assert renderer.render_event(ctx, to(KLAUS)).text == "Eigene Vorlage: VPN down"
    assert renderer.render_event(ctx, to(ADA)).text.startswith("Hi Ada,")
    austrian = EmailRecipient("a@example.com", "Anna", "Anna", 9, locale="de-AT")
    assert renderer.render_event(ctx, austrian).text == "Eigene Vorlage: VPN down"


# ------------------------------------------------------------------ end to end


def by_address(sink: SmtpSink) -> dict[str, ReceivedMessage]:
    return {rcpt: message for message in sink.messages for rcpt in message.rcpt_tos}


def text_of(message: ReceivedMessage) -> str:
    part = message.message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_a_contract_help_desk_writes_to_each_user_in_their_language(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    ada = add_user(engine, "ada", first_name="Ada")
    klaus = add_user(engine, "klaus", first_name="Klaus")
    nobody = add_user(engine, "nobody", first_name="Nobody")
    with engine.begin() as conn:
        conn.execute(sa.update(schema.users).where(schema.users.c.id == klaus)
                     .values(locale="de-DE"))
        conn.execute(sa.update(schema.users).where(schema.users.c.id == nobody)
                     .values(locale="xx-unknown"))
    project = add_project(engine, "Network", notify_team=True, members=[klaus, nobody])
    ticket = add_ticket(engine, "TKT-1", "VPN down", ada, project_id=project,
                        due_at=DUE)
    add_event(engine, "ticket_created", ticket, None)
    env = smtp_env(database_url, smtp_sink, ITSM_TIME_ZONE="Europe/Berlin")
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.output + result.stderr
    got = by_address(smtp_sink)
    assert got["ada@example.com"].subject == "New Ticket: VPN down (TKT-1)"
    assert got["klaus@example.com"].subject == GERMAN.gettext(
        "New Ticket: {title} ({number})").format(title="VPN down", number="TKT-1")
    # an unknown locale: the default language, never a dropped email
    assert got["nobody@example.com"].subject == "New Ticket: VPN down (TKT-1)"
    # no zone in the contract's users table: ITSM_TIME_ZONE
    assert "06.12.2026, 10:25 MEZ" in text_of(got["klaus@example.com"])
    assert "Dec 6, 2026, 10:25\u202fAM +0100" in text_of(got["ada@example.com"])  # CLDR: no
    # "CET" in English (not commonly used there), the offset instead
    with engine.connect() as conn:
        titles = dict(conn.execute(sa.select(schema.app_notifications.c.user_id,
                                             schema.app_notifications.c.title)).all())
    assert titles[klaus] == got["klaus@example.com"].subject
    assert titles[nobody] == "New Ticket: VPN down (TKT-1)"


def test_a_german_django_helpdesk_queue_writes_german(helpdesk_site: Any,
                                                      smtp_sink: SmtpSink) -> None:
    env = smtp_env(helpdesk_site.url, smtp_sink, ITSM_SOURCE="django-helpdesk",
                   SITE_URL=SITE, DEFAULT_FROM_EMAIL="Help Desk <hd@example.com>",
                   TIME_ZONE="Europe/Berlin")
    helpdesk_site.switch_off_helpdesk_mail()
    assert run_cli(["db", "init"], env).exit_code == 0
    agent = helpdesk_site.user("agent", email="agent@example.com", staff=True)
    owner = helpdesk_site.user("owner", email="owner@example.com", staff=True,
                               first_name="Olga")
    berlin = helpdesk_site.queue("berlin", title="Berlin IT", locale="de")
    london = helpdesk_site.queue("london", title="London IT")
    helpdesk_site.open_ticket(berlin, title="Drucker kaputt", body="Seit heute.", by=agent,
                              submitter_email="kunde@example.com", assigned_to=owner,
                              priority=2)
    helpdesk_site.open_ticket(london, title="Printer broken", body="Since today.", by=agent,
                              submitter_email="customer@example.com", assigned_to=owner)
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.output + result.stderr
    got: dict[tuple[str, str], ReceivedMessage] = {}
    for message in smtp_sink.messages:
        for rcpt in message.rcpt_tos:
            got[(rcpt, "de" if "Drucker" in message.subject else "en")] = message
    new_ticket = GERMAN.gettext("New Ticket: {title} ({number})").split(":")[0]
    # the queue's locale: its submitter (no account) and its owner read German
    for reader in ("kunde@example.com", "owner@example.com"):
        german = got[(reader, "de")]
        assert new_ticket in german.subject
        assert GERMAN.gettext("Hi %(name)s,").split(" ")[0] in text_of(german)
    assert got[("owner@example.com", "en")].subject.startswith("[london-2] New Ticket: ")
    assert got[("customer@example.com", "en")].subject.startswith("[london-2] New Ticket: ")
