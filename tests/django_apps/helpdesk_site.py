"""django-helpdesk 2.6.1, run for real inside the test process, on any of the three databases.

A test gets a :class:`HelpdeskSite`: the app's schema built by its own migrations in
the test's database, and helpers that act only through the app's own code — its
ticket forms (``TicketForm``, ``PublicTicketForm``), its ``update_ticket`` (the
function behind the staff "respond" form, the "take" link and the REST API), its
``subscribe_to_ticket_updates`` for ticket CCs, and its ``get_email`` management
command reading a local mail directory. The rows are therefore exactly the rows the
real app writes, and the signals it sends are the ones it sends in production.

**One Django per process.** ``settings.configure()`` and ``django.setup()`` can run
only once, so :func:`configure` sets Django up on the first call with a single
database alias, ``default``, and :meth:`HelpdeskSite.open` re-points that alias at
the test's database: it closes the old connection, installs the new settings and
drops the old engine's connection object, the way Django's own test runner switches
``default`` to its test database. Because the app only ever sees ``default``, its
transactions, raw cursors and signal receivers all work on the test's database, as in
production. (Several aliases with a database router were rejected for that reason:
``transaction.atomic()`` and ``connection`` without ``using`` would still mean
``default``, so "the outbox row commits with the ticket" could not be tested.)

Settings read once by django-helpdesk at import (``HELPDESK_*``) and the apps a test
session needs must therefore be given to the first :func:`configure` call; a later call
that asks for more fails loudly. The tool's own Django app (``itsm_notify.django``: the
outbox model, the django-helpdesk receivers, the unsubscribe page) is always installed,
so every test of the session sees the site as a site with itsm-notify installed would.

django-helpdesk's own notification mail goes to Django's in-memory outbox
(:meth:`HelpdeskSite.helpdesk_mail`), never to the network, so tests can observe
whom the app itself would mail; :meth:`HelpdeskSite.switch_off_helpdesk_mail` turns
it off the way a site that lets itsm-notify send the mail would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from .databases import django_database

#: the domain django-helpdesk builds its links from (``helpdesk.lib.build_base_url``)
SITE_DOMAIN = "helpdesk.example.com"
#: where the test URLconf mounts ``helpdesk.urls`` (django-helpdesk's install docs)
URL_PREFIX = "/helpdesk/"

_BASE_APPS = (
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.sites",  # helpdesk.lib.build_base_url reads the current Site
    "django.contrib.humanize",
    "helpdesk",
    # the tool's own app: its outbox model and migration, the django-helpdesk receivers
    # (connected whenever helpdesk is installed) and the unsubscribe page
    "itsm_notify.django",
)


def _settings(extra_apps: Sequence[str], overrides: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        # no database until HelpdeskSite.open(): Django's dummy backend refuses any use
        "DATABASES": {},
        "INSTALLED_APPS": [*_BASE_APPS, *extra_apps],
        "SITE_ID": 1,
        "SECRET_KEY": "itsm-notify tests: not a secret",
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
        "ROOT_URLCONF": "django_apps.helpdesk_urls",
        # enough of a site for django.test.Client to open helpdesk's pages
        "MIDDLEWARE": [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        "STATIC_URL": "/static/",
        "ALLOWED_HOSTS": ["testserver", SITE_DOMAIN],
        "TEMPLATES": [{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,  # helpdesk's mails include helpdesk/<locale>/email_*.html
            "OPTIONS": {"context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]},
        }],
        # django-helpdesk's own mail is kept in django.core.mail.outbox, never sent
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "DEFAULT_FROM_EMAIL": "helpdesk@example.com",
        # without pinax-teams (the documented way to run django-helpdesk without it)
        "HELPDESK_TEAMS_MODE_ENABLED": False,
    }
    values.update(overrides)
    return values


def configure(extra_apps: Sequence[str] = (), **overrides: Any) -> None:
    """Set Django up for django-helpdesk, once per process.

    ``extra_apps`` are added to ``INSTALLED_APPS``; ``overrides`` replace or add
    settings (``HELPDESK_*``, ``ROOT_URLCONF``...). A second call is a no-op when it
    asks for nothing new, and a ``RuntimeError`` naming the difference otherwise.
    """
    import django
    from django.conf import settings

    if settings.configured:
        missing = [app for app in extra_apps if app not in settings.INSTALLED_APPS]
        changed = [name for name, value in overrides.items()
                   if getattr(settings, name, object()) != value]
        if missing or changed:
            raise RuntimeError(
                f"Django is already set up in this process without {missing + changed}; "
                "give every app and setting the test session needs to the first "
                "configure() call")
        return
    settings.configure(**_settings(extra_apps, overrides))
    django.setup()


def _point_default_at(url: str) -> None:
    """Make Django's ``default`` alias the database at ``url`` (see the module docstring)."""
    from django.conf import settings
    from django.contrib.contenttypes.models import ContentType
    from django.contrib.sites.models import SITE_CACHE
    from django.db import DEFAULT_DB_ALIAS, connections

    connections.close_all()
    entry = connections.configure_settings({DEFAULT_DB_ALIAS: django_database(url)})
    connections.settings[DEFAULT_DB_ALIAS] = entry[DEFAULT_DB_ALIAS]
    settings.DATABASES[DEFAULT_DB_ALIAS] = entry[DEFAULT_DB_ALIAS]
    with contextlib.suppress(AttributeError):  # no wrapper was made for the old engine
        del connections[DEFAULT_DB_ALIAS]
    # caches keyed by alias or site id, not by database: they would leak ids across
    ContentType.objects.clear_cache()
    SITE_CACHE.clear()


#: tables whose rows the migrations (or their post_migrate signals) seeded: kept on reset
_SEEDED_TABLES = frozenset({"django_content_type", "auth_permission", "django_site",
                            "helpdesk_emailtemplate"})
#: e-mail templates removed by switch_off_helpdesk_mail(), per database URL, to restore
_removed_templates: dict[str, list[dict[str, Any]]] = {}


def _all_tables() -> list[tuple[str, bool]]:
    """Every table and view in the database, as ``(name, is_view)``."""
    from django.db import connection

    with connection.cursor() as cursor:
        return [(info.name, info.type == "v")
                for info in connection.introspection.get_table_list(cursor)]


def _foreign_tables() -> list[tuple[str, bool]]:
    """The tables and views no installed Django app owns (``django_migrations`` aside);
    every table when Django has not migrated this database (another test made it: the
    tool's own outbox, say, which the itsm_notify app's migration would make again)."""
    from django.db import connection

    tables = _all_tables()
    if "django_migrations" not in {name for name, _ in tables}:
        return tables
    owned = {*connection.introspection.django_table_names(), "django_migrations"}
    return [(name, is_view) for name, is_view in tables if name not in owned]


def _drop_tables(tables: list[tuple[str, bool]]) -> None:
    """Drop ``tables`` (views first), whatever references them."""
    from django.db import connection

    if not tables:
        return
    quote = connection.ops.quote_name
    cascade = " CASCADE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        elif connection.vendor == "sqlite":
            cursor.execute("PRAGMA foreign_keys = OFF")
        try:
            for name, is_view in sorted(tables, key=lambda table: not table[1]):
                kind = "VIEW" if is_view else "TABLE"
                cursor.execute(f"DROP {kind} IF EXISTS {quote(name)}{cascade}")
        finally:
            if connection.vendor == "mysql":
                cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
            elif connection.vendor == "sqlite":
                cursor.execute("PRAGMA foreign_keys = ON")


def _reset_rows(url: str) -> bool:
    """Empty the apps' tables, keeping what the migrations seeded; False when the seeded
    e-mail templates are missing and cannot be restored (the database needs a rebuild)."""
    from django.contrib.auth.models import Permission
    from django.core.management.color import no_style
    from django.db import connection
    from helpdesk.models import EmailTemplate

    tables = [name for name in connection.introspection.django_table_names(
        only_existing=True, include_views=False) if name not in _SEEDED_TABLES]
    connection.ops.execute_sql_flush(
        connection.ops.sql_flush(no_style(), tables, reset_sequences=True))
    # Queue.save() makes a queue_access_<slug> permission for every queue it creates
    Permission.objects.filter(codename__startswith="queue_access_").delete()
    removed = _removed_templates.pop(url, None)
    if removed:  # ignore_conflicts: the database may have been built again meanwhile
        # (another test dropped every table), its templates seeded anew by the migration
        EmailTemplate.objects.bulk_create((EmailTemplate(**row) for row in removed),
                                          ignore_conflicts=True)
    return EmailTemplate.objects.exists()


@dataclass
class IntakeResult:
    """What django-helpdesk's ``get_email`` did with one message."""

    #: the ticket the message was filed on (a new one, or the one it joined); None if none
    ticket: Any
    #: the follow-up it wrote (its ``message_id`` is the message's Message-ID)
    followup: Any
    #: False when the file was left in the mail directory (ignored or not processed)
    consumed: bool
    #: the queue logger's lines, for a readable failure
    log: list[str] = field(default_factory=list)


@dataclass
class SignalRecord:
    """One ``new_ticket_done`` / ``update_ticket_done`` as django-helpdesk sent it."""

    signal: str
    sender: str
    ticket: Any
    followup: Any


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


class HelpdeskSite:
    """django-helpdesk on one database; build it with :meth:`open`."""

    def __init__(self, url: str, migrate_seconds: float) -> None:
        self.url = url
        #: wall-clock time of ``migrate`` (the schema build), for the record
        self.migrate_seconds = migrate_seconds

    @classmethod
    def open(cls, url: str, *, site_domain: str = SITE_DOMAIN) -> HelpdeskSite:
        """django-helpdesk on the database at ``url``, as if freshly installed there.

        Points Django at ``url``, drops every table and view no installed app owns
        (what earlier tests left, the tool's tables included), runs the apps' own
        migrations (a full build on an empty database, a check when current), then
        empties the apps' tables except the rows the migrations seeded (content types,
        permissions, the site, the e-mail templates). A database is thus built once
        per session and reset in well under a second for every further test.
        """
        configure()
        from django.contrib.sites.models import Site
        from django.core import mail
        from django.core.management import call_command

        _point_default_at(url)
        _drop_tables(_foreign_tables())
        started = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        migrate_seconds = time.perf_counter() - started
        if not _reset_rows(url):  # the e-mail templates are gone: build it all again
            _drop_tables(_all_tables())
            call_command("migrate", verbosity=0, interactive=False)
            migrate_seconds = time.perf_counter() - started
        Site.objects.update_or_create(pk=1, defaults={"domain": site_domain,
                                                      "name": site_domain})
        Site.objects.clear_cache()
        mail.outbox = []
        return cls(url, migrate_seconds)

    def close(self) -> None:
        """Close Django's connections, so that others may drop the tables."""
        from django.db import connections

        connections.close_all()

    # ----------------------------------------------------------------- people

    def user(self, username: str, *, email: str | None = None, staff: bool = False,
             superuser: bool = False, active: bool = True,
             first_name: str = "", last_name: str = "",
             email_on_ticket_change: bool | None = None,
             email_on_ticket_assign: bool | None = None) -> Any:
        """A Django user (``auth_user``); django-helpdesk's ``post_save`` receiver
        gives it a ``helpdesk_usersettings`` row, whose two mail switches can be set."""
        from django.contrib.auth import get_user_model

        user_model = get_user_model()
        user = user_model(username=username, email=email or "", is_staff=staff or superuser,
                          is_superuser=superuser, is_active=active,
                          first_name=first_name, last_name=last_name)
        user.set_unusable_password()
        user.save()
        user_settings = user.usersettings_helpdesk
        if email_on_ticket_change is not None:
            user_settings.email_on_ticket_change = email_on_ticket_change
        if email_on_ticket_assign is not None:
            user_settings.email_on_ticket_assign = email_on_ticket_assign
        user_settings.save()
        return user

    def queue(self, slug: str, *, title: str | None = None, email_address: str | None = None,
              new_ticket_cc: str | None = None, updated_ticket_cc: str | None = None,
              locale: str | None = None, notify_ticket_ccs: bool = False,
              intake_dir: Path | None = None, default_owner: Any = None) -> Any:
        """A queue (``helpdesk_queue``); its ``save`` also creates the queue's
        ``queue_access_<slug>`` permission.

        ``notify_ticket_ccs`` is the field ``enable_notifications_on_email_events``:
        django-helpdesk mails a ticket's CCs only when it is set. ``intake_dir`` makes
        the queue read mail from that local directory (``get_email``), every time it
        runs (check interval 0) and with its log kept for :meth:`receive_email`.
        """
        from helpdesk.models import Queue

        intake: dict[str, Any] = {}
        if intake_dir is not None:
            intake_dir.mkdir(parents=True, exist_ok=True)
            intake = {"allow_email_submission": True, "email_box_type": "local",
                      "email_box_local_dir": str(intake_dir), "email_box_interval": 0,
                      "logging_type": "debug"}
        return Queue.objects.create(
            slug=slug, title=title or slug.upper(), email_address=email_address,
            new_ticket_cc=new_ticket_cc, updated_ticket_cc=updated_ticket_cc, locale=locale,
            enable_notifications_on_email_events=notify_ticket_ccs,
            allow_public_submission=True, default_owner=default_owner, **intake)

    # ---------------------------------------------------------------- tickets

    def open_ticket(self, queue: Any, *, title: str, body: str, by: Any,
                    submitter_email: str | None = None, assigned_to: Any = None,
                    priority: int = 3, due_date: datetime | None = None) -> Any:
        """A ticket opened by staff through ``TicketForm`` (the staff "new ticket" page)."""
        from helpdesk.forms import TicketForm

        data = {"queue": str(queue.pk), "title": title, "body": body,
                "priority": str(priority), "submitter_email": submitter_email or "",
                "assigned_to": str(assigned_to.pk) if assigned_to is not None else "",
                "due_date": due_date.strftime("%Y-%m-%d") if due_date else ""}
        form = TicketForm(data=data, queue_choices=[(queue.pk, queue.title)])
        return self._save(form, by)

    def open_public_ticket(self, queue: Any, *, title: str, body: str, submitter_email: str,
                           priority: int = 3, by: Any = None) -> Any:
        """A ticket opened through ``PublicTicketForm`` (the public submission page);
        ``by`` is the logged-in user, if any."""
        from helpdesk.forms import PublicTicketForm

        data = {"queue": str(queue.pk), "title": title, "body": body,
                "priority": str(priority), "submitter_email": submitter_email}
        return self._save(PublicTicketForm(data=data), by)

    @staticmethod
    def _save(form: Any, by: Any) -> Any:
        if not form.is_valid():
            raise ValueError(f"django-helpdesk refused the ticket: {form.errors.as_json()}")
        return form.save(user=by)

    def update(self, ticket: Any, by: Any, *, comment: str = "", public: bool = False,
               new_status: int | None = None, owner: int = -1, priority: int = -1,
               title: str | None = None) -> Any:
        """django-helpdesk's ``update_ticket``: the follow-up (``helpdesk_followup``) it
        wrote. ``owner`` is a user id, 0 to unassign, -1 to leave the owner alone.

        The follow-up's ``user`` is ``by`` only when ``by`` counts as helpdesk staff
        (``is_staff`` by default); anyone else's follow-up has no author.
        """
        from helpdesk.update_ticket import update_ticket

        return update_ticket(by, ticket, title=title, comment=comment, public=public,
                             owner=owner, priority=priority, new_status=new_status)

    def comment(self, ticket: Any, by: Any, text: str, *, public: bool = True) -> Any:
        """A follow-up with a comment; ``public=False`` is a private (staff-only) note."""
        return self.update(ticket, by, comment=text, public=public)

    def change_status(self, ticket: Any, by: Any, new_status: int, *, comment: str = "",
                      public: bool = True) -> Any:
        """A status change (``new_status`` as stored: 1 open ... 5 duplicate by default)."""
        return self.update(ticket, by, comment=comment, public=public, new_status=new_status)

    def assign(self, ticket: Any, by: Any, owner: Any) -> Any:
        """A new owner (``owner`` a user, or None to unassign), as the staff form does it."""
        return self.update(ticket, by, owner=owner.pk if owner is not None else 0)

    def add_cc(self, ticket: Any, *, user: Any = None, email: str | None = None) -> Any:
        """A ticket CC (``helpdesk_ticketcc``): a user, or an address without an account."""
        from helpdesk.update_ticket import subscribe_to_ticket_updates

        return subscribe_to_ticket_updates(ticket, user_id=user.pk if user else None,
                                           email=email)

    # ------------------------------------------------------------ mail intake

    def receive_email(self, queue: Any, message: bytes | EmailMessage) -> IntakeResult:
        """Drop ``message`` into ``queue``'s mail directory and run django-helpdesk's own
        ``get_email`` command, as its cron job would; report the ticket it landed on.

        The ticket is found through the follow-up ``get_email`` wrote, which records
        the message's Message-ID (so the message must have one).
        """
        from django.core.management import call_command
        from helpdesk.models import FollowUp

        raw = message.as_bytes() if isinstance(message, EmailMessage) else message
        message_id = BytesParser(policy=default_policy).parsebytes(raw)["Message-ID"]
        if not message_id:
            raise ValueError("give the message a Message-ID: the follow-up records it")
        if not queue.email_box_local_dir:
            raise ValueError(f"queue {queue.slug!r} has no mail directory: "
                             "make it with queue(..., intake_dir=...)")
        path = Path(queue.email_box_local_dir) / f"{time.time_ns()}.eml"
        path.write_bytes(raw)
        handler = _ListHandler()
        queue_logger = logging.getLogger(f"django.helpdesk.queue.{queue.slug}")
        queue_logger.addHandler(handler)
        try:
            call_command("get_email", quiet=True)
        finally:
            queue_logger.removeHandler(handler)
        followup = (FollowUp.objects.filter(message_id=message_id.strip())
                    .select_related("ticket").order_by("-id").first())
        return IntakeResult(ticket=followup.ticket if followup else None, followup=followup,
                            consumed=not path.exists(), log=handler.lines)

    # ------------------------------------------------------- its own outputs

    def helpdesk_mail(self, *, clear: bool = True) -> list[Any]:
        """The mail django-helpdesk itself sent since the last call (Django's outbox)."""
        from django.core import mail

        sent = list(getattr(mail, "outbox", []))
        if clear:
            mail.outbox = []
        return sent

    def switch_off_helpdesk_mail(self) -> int:
        """Stop django-helpdesk's own notification mail; the number of templates removed.

        django-helpdesk sends every notification through ``send_templated_mail``, which
        sends nothing (it logs a warning) when the ``helpdesk_emailtemplate`` row for
        the template and locale is missing (``helpdesk/templated_email.py``). Deleting
        the rows is the one switch that needs no code change in the site; ``loaddata
        emailtemplate`` brings them back there. Here the next :meth:`open` restores them.
        """
        from helpdesk.models import EmailTemplate

        rows = list(EmailTemplate.objects.values())
        _removed_templates.setdefault(self.url, []).extend(rows)  # the next open() restores
        EmailTemplate.objects.all().delete()
        return len(rows)

    @contextmanager
    def signals(self) -> Iterator[list[SignalRecord]]:
        """Record every ``new_ticket_done`` / ``update_ticket_done`` sent inside the block."""
        from helpdesk.signals import new_ticket_done, update_ticket_done

        records: list[SignalRecord] = []

        def on_new(sender: str, ticket: Any, **_: Any) -> None:
            records.append(SignalRecord("new_ticket_done", sender, ticket, None))

        def on_update(sender: str, followup: Any, **_: Any) -> None:
            records.append(SignalRecord("update_ticket_done", sender, followup.ticket,
                                        followup))

        new_ticket_done.connect(on_new, weak=False)
        update_ticket_done.connect(on_update, weak=False)
        try:
            yield records
        finally:
            new_ticket_done.disconnect(on_new)
            update_ticket_done.disconnect(on_update)
