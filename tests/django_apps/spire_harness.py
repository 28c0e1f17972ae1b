"""django-spire 1.3.0, run for real, reporting what it does as JSON.

django-spire needs Python >= 3.12 and Django 6, so this script runs in its own
virtualenv (``tests/django_apps/spire.py`` makes it and runs this file), never in the
test process. Usage::

    python spire_harness.py DATABASE_URL scenario [--spire-notifications on|off]
                                                  [--admins pairs|strings] [--itsm-notify]
    python spire_harness.py DATABASE_URL bell USER_ID
    python spire_harness.py DATABASE_URL accounts
    python spire_harness.py DATABASE_URL tickets

``DATABASE_URL`` is a SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``,
``mysql+pymysql://…``). Both commands first build spire's schema with its own
migrations (a check when it is already there).

``scenario`` makes the people of seed 001 — developers (accounts whose address is in
``ADMINS``), managers (holding ``delete_helpdeskticket`` through a group, directly, or
as superuser) — and one help-desk ticket through spire's own service
(``HelpDeskTicket().services.save_model_obj(user, **fields)``), then saves it once more
as spire's own form would on an edit. It prints the ids, the ticket row, the URLs spire
builds, and every ``Notification`` spire's ``HelpDeskTicketNotificationService`` wrote,
unless ``--spire-notifications off`` (spire's service replaced by a no-op, as a site
that lets itsm-notify do the notifying would). ``--admins strings`` writes ``ADMINS``
the way Django 6 asks (addresses, not the deprecated ``(name, address)`` pairs).
``--itsm-notify`` installs itsm-notify's Django app (``itsm_notify.django``), as a site
that lets itsm-notify notify would: its outbox is made by ``migrate``, its receiver
writes the events, spire's own notifications are off; the outbox rows are printed.

``bell`` prints what spire's notification bell shows ``USER_ID``: the querysets of
``django_spire.notification.app.views`` (``active().is_sent()``, not yet viewed).

``accounts`` makes the people of ``scenario`` and no ticket (for a test that files
tickets some other way, by mail); ``tickets`` prints the help-desk tickets as spire's
own ORM reads them (``HelpDeskTicket.objects.active()``, what its list page shows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from databases import django_database

SITE_DOMAIN = "spire.example.com"
DEVELOPER_ADDRESS = "dev@example.com"
#: seed 001's settings: developers are the accounts whose address is in ADMINS, written
#: as (name, address) pairs (seed 001) or as Django 6 wants them, addresses only
ADMINS: dict[str, list[Any]] = {
    "pairs": [("Dev One", DEVELOPER_ADDRESS), ("Nobody", "no-account@example.com")],
    "strings": [DEVELOPER_ADDRESS, "no-account@example.com"],
}
DELETE_PERMISSION = "delete_helpdeskticket"


def setup_django(url: str, admins: list[Any], *, itsm_notify: bool = False) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": django_database(url)},
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sites",
            "django_spire.core",
            "django_spire.file",
            "django_spire.history",
            "django_spire.history.activity",
            "django_spire.history.viewed",
            "django_spire.notification",
            "django_spire.notification.app",
            "django_spire.notification.email",
            "django_spire.help_desk",
            *(["itsm_notify.django"] if itsm_notify else []),
        ],
        ADMINS=admins,
        DEBUG=False,
        DEVELOPMENT_EMAIL="development@example.com",
        DEFAULT_FROM_EMAIL="spire@example.com",
        BASE_FOLDER_NAME="itsm-notify-tests",  # django_spire.file refuses to start without
        SITE_ID=1,
        SECRET_KEY="itsm-notify tests: not a secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        ROOT_URLCONF="spire_urls",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True}],
    )
    django.setup()


def build_schema() -> float:
    """spire's own migrations; the seconds they took."""
    from django.contrib.sites.models import Site
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    seconds = time.perf_counter() - started
    Site.objects.update_or_create(pk=1, defaults={"domain": SITE_DOMAIN, "name": SITE_DOMAIN})
    Site.objects.clear_cache()
    return seconds


def make_user(username: str, email: str, **flags: Any) -> Any:
    from django.contrib.auth.models import User

    user = User(username=username, email=email, **flags)
    user.set_unusable_password()
    user.save()
    return user


def make_people() -> dict[str, Any]:
    """Everyone seed 001 speaks of, and the near misses that show the exact rule."""
    from django.contrib.auth.models import Group, Permission

    delete_ticket = Permission.objects.get(codename=DELETE_PERMISSION,
                                           content_type__app_label="django_spire_help_desk")
    managers = Group.objects.create(name="Help desk managers")
    managers.permissions.add(delete_ticket)
    also_managers = Group.objects.create(name="Help desk leads")
    also_managers.permissions.add(delete_ticket)

    people = {
        "requester": make_user("requester", "requester@example.com"),
        "developer": make_user("developer", DEVELOPER_ADDRESS, first_name="Dev"),
        "developer_uppercase": make_user("developer2", DEVELOPER_ADDRESS.upper()),
        "developer_inactive": make_user("developer3", DEVELOPER_ADDRESS, is_active=False),
        "group_manager": make_user("manager", "manager@example.com"),
        "two_group_manager": make_user("lead", "lead@example.com"),
        "direct_permission_manager": make_user("direct", "direct@example.com"),
        "superuser": make_user("root", "root@example.com", is_superuser=True, is_staff=True),
    }
    people["group_manager"].groups.add(managers)
    people["two_group_manager"].groups.add(managers, also_managers)
    people["developer"].groups.add(managers)  # a developer who is also a manager
    people["direct_permission_manager"].user_permissions.add(delete_ticket)
    return people


def switch_off_spire_notifications() -> None:
    """Replace spire's new-ticket notifications with a no-op, for a site where
    itsm-notify does the notifying (spire 1.3.0 has no setting for it)."""
    from django_spire.help_desk.services.notification_service import (
        HelpDeskTicketNotificationService,
    )

    def no_notifications(self: Any) -> None:
        return None

    HelpDeskTicketNotificationService.create_new_ticket_notifications = no_notifications


def notification_rows(ticket_id: int) -> list[dict[str, Any]]:
    from django_spire.notification.models import Notification

    rows = []
    for note in (Notification.objects.filter(object_id=ticket_id)
                 .select_related("email", "app", "content_type").order_by("id")):
        email = getattr(note, "email", None)
        rows.append({
            "id": note.id, "user_id": note.user_id, "type": note.type, "title": note.title,
            "body": note.body, "url": note.url, "status": note.status,
            "priority": note.priority,
            "content_type": f"{note.content_type.app_label}.{note.content_type.model}",
            "to_email_address": email.to_email_address if email else None,
            "has_app_row": hasattr(note, "app"),
        })
    return rows


def outbox_rows() -> list[dict[str, Any]]:
    """itsm-notify's outbox, when its app is installed."""
    from django.apps import apps

    if not apps.is_installed("itsm_notify.django"):
        return []
    from itsm_notify.django.models import OutboxEvent

    return [{key: str(value) if value is not None else None for key, value in row.items()}
            for row in OutboxEvent.objects.order_by("id").values(
                "id", "event_type", "ticket_id", "actor_id", "payload", "state")]


def scenario(spire_notifications: bool) -> dict[str, Any]:
    from django.contrib.contenttypes.models import ContentType
    from django.urls import reverse
    from django_spire.help_desk.choices import (
        HelpDeskTicketPriorityChoices,
        HelpDeskTicketPurposeChoices,
    )
    from django_spire.help_desk.models import HelpDeskTicket

    people = make_people()
    if not spire_notifications:
        switch_off_spire_notifications()

    ticket = HelpDeskTicket()
    saved = ticket.services.save_model_obj(
        people["requester"],
        purpose=HelpDeskTicketPurposeChoices.APP,
        priority=HelpDeskTicketPriorityChoices.HIGH,
        description="Login page throws a 500 error for SSO users.",
    )
    after_create = notification_rows(ticket.pk)
    # an edit through spire's own form calls the same service again
    saved.services.save_model_obj(people["requester"], description="Still failing.")
    after_edit = notification_rows(ticket.pk)

    row = HelpDeskTicket.objects.filter(pk=ticket.pk).values().get()
    return {
        "ticket_id": ticket.pk,
        "ticket_row": {key: str(value) for key, value in row.items()},
        "detail_path": reverse("django_spire:help_desk:page:detail", kwargs={"pk": ticket.pk}),
        "content_type_id": ContentType.objects.get_for_model(HelpDeskTicket).pk,
        "people": {role: user.pk for role, user in people.items()},
        "notifications_after_create": after_create,
        "notifications_after_edit": after_edit,
        "has_create_service": hasattr(HelpDeskTicket.services, "create"),
        "outbox": outbox_rows(),
    }


def bell(user_id: int) -> dict[str, Any]:
    """What spire's bell views show the user (json_views / template_views, 1.3.0)."""
    from django.contrib.auth.models import User
    from django_spire.notification.app.models import AppNotification

    user = User.objects.get(pk=user_id)
    shown = (AppNotification.objects.active().is_sent()
             .annotate_is_viewed_by_user(user).select_related("notification")
             .distinct().ordered_by_priority_and_sent_datetime())
    return {
        "has_new_notifications": AppNotification.objects.active().is_sent()
        .exclude_viewed_by_user(user).exists(),
        "notifications": [item.as_dict() for item in shown],
    }


def tickets() -> dict[str, Any]:
    """The tickets spire's list page shows, read through its own model."""
    from django_spire.help_desk.models import HelpDeskTicket

    return {"tickets": [{
        "id": ticket.pk, "str": str(ticket), "created_by": ticket.created_by.username,
        "purpose": ticket.get_purpose_display(), "priority": ticket.get_priority_display(),
        "status": ticket.get_status_display(), "description": ticket.description,
        "created_datetime": ticket.created_datetime.isoformat(),
    } for ticket in HelpDeskTicket.objects.active().select_related("created_by").order_by("id")]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("scenario")
    run.add_argument("--spire-notifications", choices=("on", "off"), default="on")
    run.add_argument("--admins", choices=sorted(ADMINS), default="pairs")
    run.add_argument("--itsm-notify", action="store_true")
    show = commands.add_parser("bell")
    show.add_argument("user_id", type=int)
    commands.add_parser("accounts")
    commands.add_parser("tickets")
    args = parser.parse_args(argv)

    setup_django(args.database_url, ADMINS[getattr(args, "admins", "pairs")],
                 itsm_notify=getattr(args, "itsm_notify", False))
    from importlib.metadata import version

    facts: dict[str, Any] = {
        "django": version("django"),
        "django_spire": version("django-spire"),
        "migrate_seconds": build_schema(),
    }
    if args.command == "scenario":
        facts.update(scenario(args.spire_notifications == "on"))
    elif args.command == "bell":
        facts.update(bell(args.user_id))
    elif args.command == "accounts":
        facts["people"] = {role: user.pk for role, user in make_people().items()}
    else:
        facts.update(tickets())
    json.dump(facts, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
