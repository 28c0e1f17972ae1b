"""Draft SQL for the ``django-helpdesk`` and ``django-spire`` presets, run by the tests.

One entity = a FROM clause and one SQL expression per field, as issue 14 asks of a
source mapping. The strings are portable across SQLite (>= 3.35), PostgreSQL and
MariaDB: no ``||`` (on MariaDB it is OR unless ``PIPES_AS_CONCAT``) and no ``CONCAT``
(SQLite has it only from 3.44), so values that must be joined — a ticket number like
``it-7``, the ``[it-7]`` tracking tag, a link — are selected in parts and joined in
Python. Booleans come back as ``True``/``False`` from PostgreSQL and ``1``/``0`` from
the others: read them with ``bool()``. ``tests/test_django_*_harness.py`` run every
string below against the schemas the apps' own migrations build, on all three
databases; ``docs/sources/*.md`` explain each choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Entity:
    """A source entity: rows ``FROM from_``, one SQL expression per field."""

    from_: str
    fields: Mapping[str, str]

    def select(self, where: str = "") -> str:
        columns = ", ".join(f"{expression} AS {name}" for name, expression in self.fields.items())
        return f"SELECT {columns} FROM {self.from_}" + (f" WHERE {where}" if where else "")


# ----------------------------------------------------------------- django-helpdesk 2.6.1

HELPDESK = {
    "user": Entity(
        from_="auth_user u LEFT JOIN helpdesk_usersettings s ON s.user_id = u.id",
        fields={
            "id": "u.id",
            "username": "u.username",
            "email": "NULLIF(u.email, '')",  # Django stores a blank address as ''
            "first_name": "u.first_name",
            "last_name": "u.last_name",
            "is_active": "u.is_active",
            # helpdesk staff (decorators.is_helpdesk_staff, default setting)
            "is_staff": "u.is_staff",
            # the user's own switches; a user without a settings row gets the defaults
            "email_on_ticket_change": "COALESCE(s.email_on_ticket_change, TRUE)",
            "email_on_ticket_assign": "COALESCE(s.email_on_ticket_assign, TRUE)",
        },
    ),
    "ticket": Entity(
        from_="helpdesk_ticket t JOIN helpdesk_queue q ON q.id = t.queue_id",
        fields={
            "id": "t.id",
            "queue_slug": "q.slug",  # number = f"{queue_slug}-{id}", tag = f"[{number}]"
            "title": "t.title",
            "description": "COALESCE(t.description, '')",
            "status": "t.status",
            "priority": "t.priority",
            "requester_email": "NULLIF(t.submitter_email, '')",
            "secret_key": "t.secret_key",  # the submitter's link: &key=
            "assignee_id": "t.assigned_to_id",
            "queue_id": "t.queue_id",
            "due_at": "t.due_date",
            "created_at": "t.created",
            "on_hold": "t.on_hold",
            "merged_to_id": "t.merged_to_id",
        },
    ),
    "comment": Entity(
        from_="helpdesk_followup f",
        fields={
            "id": "f.id",
            "ticket_id": "f.ticket_id",
            "author_id": "f.user_id",  # NULL: e-mail intake, or a non-staff author
            "title": "f.title",
            "body": "COALESCE(f.comment, '')",
            "is_internal": "NOT f.public",
            "new_status": "f.new_status",
            "message_id": "f.message_id",  # set when get_email wrote the follow-up
            "created_at": "f.date",
        },
    ),
    "queue": Entity(
        from_="helpdesk_queue q",
        fields={
            "id": "q.id",
            "name": "q.title",
            "slug": "q.slug",
            "email_address": "q.email_address",  # helpdesk sends From "title <address>"
            "locale": "q.locale",
            "new_ticket_cc": "q.new_ticket_cc",  # comma-separated: split in Python
            "updated_ticket_cc": "q.updated_ticket_cc",  # comma-separated: split in Python
            "notify_ticket_ccs": "q.enable_notifications_on_email_events",
        },
    ),
    "ticket_cc": Entity(
        from_="helpdesk_ticketcc c LEFT JOIN auth_user u ON u.id = c.user_id",
        fields={
            "ticket_id": "c.ticket_id",
            "user_id": "c.user_id",
            # TicketCC.email_address: the user's address when there is a user
            "email": "NULLIF(CASE WHEN c.user_id IS NULL THEN c.email ELSE u.email END, '')",
        },
    ),
    # Queue members, when HELPDESK_ENABLE_PER_QUEUE_STAFF_PERMISSION is on: holders of
    # the queue's permission helpdesk.queue_access_<slug> (Queue.permission_name), held
    # directly or through a group. django-helpdesk itself never mails them.
    "membership": Entity(
        from_=(
            "helpdesk_queue q JOIN auth_permission p"
            " ON p.codename = SUBSTR(q.permission_name, 10)"  # after 'helpdesk.'
            " JOIN django_content_type ct ON ct.id = p.content_type_id"
            " AND ct.app_label = 'helpdesk'"
            " JOIN auth_user u ON u.is_active = TRUE AND (u.is_superuser = TRUE"
            " OR EXISTS (SELECT 1 FROM auth_user_user_permissions up"
            " WHERE up.user_id = u.id AND up.permission_id = p.id)"
            " OR EXISTS (SELECT 1 FROM auth_user_groups ug JOIN auth_group_permissions gp"
            " ON gp.group_id = ug.group_id WHERE ug.user_id = u.id"
            " AND gp.permission_id = p.id))"
        ),
        fields={"queue_id": "q.id", "user_id": "u.id"},
    ),
}

#: stored value -> label, django-helpdesk's defaults (helpdesk/settings.py); a site may
#: replace both with HELPDESK_TICKET_STATUS_CHOICES / HELPDESK_TICKET_PRIORITY_CHOICES
HELPDESK_STATUS_LABELS = {1: "Open", 2: "Reopened", 3: "Resolved", 4: "Closed", 5: "Duplicate"}
HELPDESK_PRIORITY_LABELS = {1: "1. Critical", 2: "2. High", 3: "3. Normal", 4: "4. Low",
                            5: "5. Very Low"}
#: not in HELPDESK_TICKET_OPEN_STATUSES (default (1, 2)): never overdue
HELPDESK_CLOSED_STATUSES = frozenset({3, 4, 5})


# ------------------------------------------------------------------- django-spire 1.3.0

#: spire's rule for "managers" (help_desk/services/notification_service.py):
#: User.objects.filter(groups__permissions__codename='delete_helpdeskticket') — through
#: a group only, any app label, inactive users included
SPIRE_IS_MANAGER = (
    "EXISTS (SELECT 1 FROM auth_user_groups ug"
    " JOIN auth_group_permissions gp ON gp.group_id = ug.group_id"
    " JOIN auth_permission p ON p.id = gp.permission_id"
    " WHERE ug.user_id = u.id AND p.codename = 'delete_helpdeskticket')"
)
#: Django's own user.has_perm('django_spire_help_desk.delete_helpdeskticket'):
#: active, and superuser or the permission directly or through a group
DJANGO_HAS_DELETE_HELPDESKTICKET = (
    "(u.is_active = TRUE AND (u.is_superuser = TRUE OR EXISTS (SELECT 1 FROM auth_permission p"
    " JOIN django_content_type ct ON ct.id = p.content_type_id"
    " WHERE p.codename = 'delete_helpdeskticket' AND ct.app_label = 'django_spire_help_desk'"
    " AND (EXISTS (SELECT 1 FROM auth_user_user_permissions up"
    " WHERE up.user_id = u.id AND up.permission_id = p.id)"
    " OR EXISTS (SELECT 1 FROM auth_user_groups ug JOIN auth_group_permissions gp"
    " ON gp.group_id = ug.group_id WHERE ug.user_id = u.id AND gp.permission_id = p.id)))))"
)

SPIRE = {
    "user": Entity(
        from_="auth_user u",
        fields={
            "id": "u.id",
            "username": "u.username",
            "email": "NULLIF(u.email, '')",
            "first_name": "u.first_name",
            "last_name": "u.last_name",
            "is_active": "u.is_active",
            "is_manager": SPIRE_IS_MANAGER,
            # developers: email IN settings.ADMINS addresses, matched in Python (spire
            # compares with the database's own '=': case-insensitive on MariaDB only)
        },
    ),
    "ticket": Entity(
        from_="django_spire_help_desk_ticket t",
        fields={
            "id": "t.id",  # number/title = f"Ticket #{id}" (str(ticket)); no title column
            "description": "t.description",
            "status": "t.status",
            "priority": "t.priority",
            "purpose": "t.purpose",
            "requester_id": "t.created_by_id",
            "created_at": "t.created_datetime",
            "is_deleted": "t.is_deleted",
        },
    ),
}

SPIRE_TICKET_CONTENT_TYPE = (
    "SELECT id FROM django_content_type"
    " WHERE app_label = 'django_spire_help_desk' AND model = 'helpdeskticket'"
)

#: an in-app notification the bell shows: a Notification row (type app, status sent) and
#: its AppNotification row; every NOT NULL column is given, as spire's defaults are
#: Python-side only. Parameters: now, user_id, title (<= 124), body, url (<= 255, relative),
#: content_type_id, ticket_id; then notification_id for the second statement.
SPIRE_INSERT_NOTIFICATION = (
    "INSERT INTO django_spire_notification (is_active, is_deleted, created_datetime, user_id,"
    " type, title, body, url, status, status_message, priority, publish_datetime,"
    " sent_datetime, content_type_id, object_id)"
    " VALUES (TRUE, FALSE, :now, :user_id, 'app', :title, :body, :url, 'sent', '', 'low',"
    " :now, :now, :content_type_id, :ticket_id)"
)
SPIRE_INSERT_APP_NOTIFICATION = (
    "INSERT INTO django_spire_notification_app (is_active, is_deleted, created_datetime,"
    " notification_id, template, context_data)"
    " VALUES (TRUE, FALSE, :now, :notification_id,"
    " 'django_spire/notification/app/item/notification_item.html', :context_data)"
)

SPIRE_STATUS_LABELS = {"read": "Ready", "prog": "In Progress", "done": "Done"}
SPIRE_PRIORITY_LABELS = {"low": "Low", "med": "Medium", "high": "High", "urge": "Urgent"}
SPIRE_PURPOSE_LABELS = {"app": "App", "comp": "Company"}
SPIRE_CLOSED_STATUSES = frozenset({"done"})
