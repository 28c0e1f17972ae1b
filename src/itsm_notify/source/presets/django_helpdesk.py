"""``django-helpdesk`` (2.6): its tables, its labels, its links and its own rules.

What the app itself does is recorded in docs/sources/django-helpdesk.md (each claim
checked by running it); the rules below tell the people django-helpdesk would mail:

* the submitter, by address (or the account with that address), of a new ticket, of
  every public follow-up, and of a ticket resolved or closed;
* the owner, as that user's own switches say (``email_on_ticket_assign`` for a new or
  reassigned ticket, ``email_on_ticket_change`` for follow-ups and changes);
* the queue's ``new_ticket_cc`` (new tickets) and ``updated_ticket_cc`` (every change);
* the ticket's CCs, when the queue's ``enable_notifications_on_email_events`` says so.

A private follow-up goes to nobody outside staff: the owner, and CCs who are staff.
Subjects start with the ``[queue-id]`` tag, so that a reply read by django-helpdesk's own
``get_email`` joins its ticket; the submitter's link is the app's public page with the
ticket's secret key (URL-encoded, which the app itself forgets for ``a+b@`` addresses).
"""

from __future__ import annotations

from typing import Any

from ...config import Settings
from ...events.audience import Audience, Recipients
from ...events.model import EventContext

MAPPING: dict[str, Any] = {
    "user": {
        "from": "auth_user u LEFT JOIN helpdesk_usersettings s ON s.user_id = u.id",
        "id": "u.id", "username": "u.username", "email": "NULLIF(u.email, '')",
        "first_name": "u.first_name", "last_name": "u.last_name",
        "is_active": "u.is_active",
        "is_staff": "u.is_staff",
        "email_on_ticket_change": "COALESCE(s.email_on_ticket_change, TRUE)",
        "email_on_ticket_assign": "COALESCE(s.email_on_ticket_assign, TRUE)",
    },
    "ticket": {
        "from": "helpdesk_ticket t JOIN helpdesk_queue q ON q.id = t.queue_id",
        "id": "t.id", "title": "t.title", "description": "COALESCE(t.description, '')",
        "status": "t.status", "priority": "t.priority",
        "requester_email": "NULLIF(t.submitter_email, '')", "access_key": "t.secret_key",
        "assignee_id": "t.assigned_to_id", "team_id": "t.queue_id", "due_at": "t.due_date",
        "created_at": "t.created", "queue_slug": "q.slug",
    },
    "comment": {
        "from": "helpdesk_followup f", "id": "f.id", "ticket_id": "f.ticket_id",
        "author_id": "f.user_id", "body": "COALESCE(f.comment, '')",
        "is_internal": "NOT f.public", "created_at": "f.date",
    },
    "team": {
        "from": "helpdesk_queue q", "id": "q.id", "name": "q.title",
        "cc_on_create": "q.new_ticket_cc", "cc_on_update": "q.updated_ticket_cc",
        "notify_ticket_ccs": "q.enable_notifications_on_email_events",
        "reply_to": "NULLIF(q.email_address, '')",
        "locale": "NULLIF(q.locale, '')",  # "all correspondence in this queue" (its help)
    },
    "ticket_cc": {
        "from": "helpdesk_ticketcc c LEFT JOIN auth_user u ON u.id = c.user_id",
        "ticket_id": "c.ticket_id", "user_id": "c.user_id",
        "email": "NULLIF(CASE WHEN c.user_id IS NULL THEN c.email ELSE u.email END, '')",
    },
    "formats": {
        "number": "{queue_slug}-{id}",
        "tag": "[{number}] ",
        "staff_link": "{site_url}{path}/tickets/{id}/",
        "requester_link": ("{site_url}{path}/view/?ticket={number:url}"
                           "&email={requester_email:url}&key={access_key:url}"),
        "in_app_link": "{path}/tickets/{id}/",
    },
    "labels": {
        "status": {"1": "Open", "2": "Reopened", "3": "Resolved", "4": "Closed",
                   "5": "Duplicate"},
        "priority": {"1": "1. Critical", "2": "2. High", "3": "3. Normal", "4": "4. Low",
                     "5": "5. Very Low"},
    },
    "closed_statuses": [3, 4, 5],
}
PATH = "/helpdesk"
"""Where sites mount ``helpdesk.urls`` (its install guide's prefix); ITSM_SOURCE_PATH."""
TOLD_SUBMITTER = frozenset({"3", "4"})
"""Statuses the submitter is told of without a comment: Resolved, Closed."""


def _owner(ctx: EventContext, audience: Audience, *switches: str) -> None:
    """The owner, when one of their own ``switches`` is on."""
    owner = ctx.users.get(ctx.ticket.assignee_id) if ctx.ticket.assignee_id else None
    if owner is not None and any(owner.extra.get(s, True) for s in switches):
        audience.person(owner)


def ticket_created(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    audience.requester()
    _owner(ctx, audience, "email_on_ticket_assign")
    audience.team_ccs(on_create=True)
    audience.ticket_ccs()
    return audience.result()


def ticket_assigned(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    _owner(ctx, audience, "email_on_ticket_assign", "email_on_ticket_change")
    audience.team_ccs()
    audience.ticket_ccs()
    return audience.result()


def status_changed(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    if ctx.payload["new_status"] in TOLD_SUBMITTER:
        audience.requester()
    _owner(ctx, audience, "email_on_ticket_change")
    audience.team_ccs()
    audience.ticket_ccs()
    return audience.result()


def comment_added(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    assert ctx.comment is not None
    if ctx.comment.is_internal:  # nobody outside staff
        _owner(ctx, audience, "email_on_ticket_change")
        audience.ticket_ccs(staff_only=True)
        return audience.result()
    audience.requester()
    _owner(ctx, audience, "email_on_ticket_change")
    audience.team_ccs()
    audience.ticket_ccs()
    return audience.result()


RULES = {"ticket_created": ticket_created, "ticket_assigned": ticket_assigned,
         "status_changed": status_changed, "comment_added": comment_added}
