"""``django-spire`` (1.3): its help-desk tickets, its notification bell, and the rule of
seed 001 (docs/sources/django-spire.md records what spire itself does):

* a new help-desk ticket tells the developers (``ADMINS``, matched to accounts by
  address) by email and in-app, and the managers (holders of ``delete_helpdeskticket``
  through a group, spire's own rule) in-app only;
* email links are absolute, in-app links relative, both to spire's detail page;
* in-app notifications are written where spire's bell reads them (a notification of
  type ``app``, status ``sent``, and its app row).

spire has no title, assignee or due date: a ticket's title is the first line of its
description, its number ``#<id>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, text

from ...config import Settings
from ...events.audience import Audience, Recipients
from ...events.model import EventContext

IS_MANAGER = ("EXISTS (SELECT 1 FROM auth_user_groups ug"
              " JOIN auth_group_permissions gp ON gp.group_id = ug.group_id"
              " JOIN auth_permission p ON p.id = gp.permission_id"
              " WHERE ug.user_id = u.id AND p.codename = 'delete_helpdeskticket')")

MAPPING: dict[str, Any] = {
    "user": {"from": "auth_user u", "id": "u.id", "username": "u.username",
             "email": "NULLIF(u.email, '')", "first_name": "u.first_name",
             "last_name": "u.last_name", "is_active": "u.is_active", "is_manager": IS_MANAGER},
    "ticket": {"from": "django_spire_help_desk_ticket t", "id": "t.id",
               "title": "SUBSTR(t.description, 1, 100)", "description": "t.description",
               "status": "t.status", "priority": "t.priority",
               "requester_id": "t.created_by_id", "created_at": "t.created_datetime",
               "purpose": "t.purpose"},
    "formats": {
        "number": "#{id}",
        "staff_link": "{site_url}{path}/help_desk/page/detail/{id}/",
        "in_app_link": "{path}/help_desk/page/detail/{id}/",
    },
    "labels": {
        "status": {"read": "Ready", "prog": "In Progress", "done": "Done"},
        "priority": {"low": "Low", "med": "Medium", "high": "High", "urge": "Urgent"},
    },
    "closed_statuses": ["done"],
}
PATH = "/django_spire"
"""Where spire's own test project mounts ``django_spire.urls``; ITSM_SOURCE_PATH."""


def ticket_created(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    audience.admins()
    audience.users(ctx.managers, email=False)
    return audience.result()


RULES = {"ticket_created": ticket_created}

_CONTENT_TYPE = text("SELECT id FROM django_content_type "
                     "WHERE app_label = 'django_spire_help_desk' AND model = 'helpdeskticket'")
_NOTIFICATION = text(
    "INSERT INTO django_spire_notification (is_active, is_deleted, created_datetime, user_id,"
    " type, title, body, url, status, status_message, priority, publish_datetime,"
    " sent_datetime, content_type_id, object_id)"
    " VALUES (:yes, :no, :now, :user_id, 'app', :title, :body, :url, 'sent', '', 'low',"
    " :now, :now, :content_type_id, :ticket_id)")
_APP_NOTIFICATION = text(
    "INSERT INTO django_spire_notification_app (is_active, is_deleted, created_datetime,"
    " notification_id, template, context_data)"
    " VALUES (:yes, :no, :now, :notification_id,"
    " 'django_spire/notification/app/item/notification_item.html', :context_data)")


def write_in_app(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Each in-app notification as spire's bell shows it: a sent ``app`` notification
    about the ticket, and its app row (spire's defaults are Python-side: every column is
    given)."""
    if not rows:
        return
    content_type = conn.execute(_CONTENT_TYPE).scalar()
    for row in rows:
        values = {"yes": True, "no": False, "now": row["created_at"], "user_id": row["user_id"],
                  "title": row["title"][:124], "body": row["body"], "url": row["url"][:255],
                  "content_type_id": content_type, "ticket_id": row["ticket_id"]}
        result = conn.execute(_NOTIFICATION, values)
        notification = result.lastrowid if conn.dialect.name != "postgresql" else \
            conn.execute(text("SELECT lastval()")).scalar()
        conn.execute(_APP_NOTIFICATION, {"yes": True, "no": False, "now": row["created_at"],
                                         "notification_id": notification,
                                         "context_data": json.dumps({})})
