"""The event types (contract §2): each one's payload check, recipient rule, subject and
templates.

Adding an event type is one entry in ``EVENT_TYPES`` below."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from .audience import Audience, Recipients
from .model import MAX_ID, MAX_LABEL, EventContext, EventError, bounded_text


def _team(ctx: EventContext) -> tuple[int, ...]:
    return ctx.team_ids if ctx.project is not None and ctx.project.notify_team else ()


def ticket_created(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    audience.user(ctx.ticket.requester_id)
    audience.user(ctx.ticket.assignee_id)
    audience.users(_team(ctx))
    audience.admins()
    audience.users(ctx.manager_ids, email=False)
    return audience.result()


def ticket_assigned(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    audience.user(assignee_id(ctx))
    return audience.result()


def status_changed(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    if ctx.payload["new_status"] not in settings.internal_statuses:
        audience.user(ctx.ticket.requester_id)
    audience.user(ctx.ticket.assignee_id)
    audience.users(_team(ctx))
    return audience.result()


def comment_added(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    comment = ctx.comment
    assert comment is not None  # the loader fails the event when the comment is missing
    if comment.is_internal:
        # Internal comments are never emailed; in-app, staff only.
        audience.user(ctx.ticket.assignee_id, email=False)
        audience.users(ctx.team_ids, email=False)
        return audience.result()
    audience.user(ctx.ticket.requester_id)
    audience.user(ctx.ticket.assignee_id)
    audience.users(ctx.public_commenter_ids)
    return audience.result()


# ------------------------------------------------------------------ payload checks


def _optional_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"payload field {key!r} must be a whole number, got "
                         f"{bounded_text(repr(value), 80)}")
    if not 0 < value <= MAX_ID:
        raise EventError(f"payload field {key!r} is not an id (a whole number from 1 to "
                         f"2**63-1), got {bounded_text(repr(value), 80)}")
    return value


def _required_int(payload: dict[str, Any], key: str) -> int:
    value = _optional_int(payload, key)
    if value is None:
        raise EventError(f"payload needs {key!r} (a whole number)")
    return value


def no_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {}


def _assignment(payload: dict[str, Any]) -> dict[str, Any]:
    return {"assignee_id": _optional_int(payload, "assignee_id")}


def _status_change(payload: dict[str, Any]) -> dict[str, Any]:
    new_status, old_status = payload.get("new_status"), payload.get("old_status")
    if not isinstance(new_status, str) or not new_status.strip():
        raise EventError("payload needs 'new_status' (the status as stored)")
    if old_status is not None and not isinstance(old_status, str):
        raise EventError("payload field 'old_status' must be text, got "
                         f"{bounded_text(repr(old_status), 80)}")
    return {"new_status": bounded_text(new_status, MAX_LABEL),
            "old_status": None if old_status is None else bounded_text(old_status, MAX_LABEL)}


def _comment(payload: dict[str, Any]) -> dict[str, Any]:
    return {"comment_id": _required_int(payload, "comment_id")}


@dataclass(frozen=True)
class EventType:
    """Everything that makes one kind of event: how to read its payload, who is told,
    the email subject (formatted with ``title``, ``number`` and the payload's fields)
    and the template pair ``templates/emails/<template>.html|.txt``."""

    rule: Callable[[EventContext, Settings], Recipients]
    subject: str
    template: str
    parse_payload: Callable[[dict[str, Any]], dict[str, Any]] = no_payload
    comment_field: str | None = None
    """The payload field naming a comment the context must load."""


EVENT_TYPES: dict[str, EventType] = {
    "ticket_created": EventType(
        rule=ticket_created, subject="New Ticket: {title} ({number})",
        template="ticket_created"),
    "ticket_assigned": EventType(
        rule=ticket_assigned, subject="Ticket Assigned: {title} ({number})",
        template="ticket_assigned", parse_payload=_assignment),
    "status_changed": EventType(
        rule=status_changed, subject="Ticket Status Changed: {title} → {new_status}",
        template="status_changed", parse_payload=_status_change),
    "comment_added": EventType(
        rule=comment_added, subject="New Comment on Ticket: {title} ({number})",
        template="comment_added", parse_payload=_comment, comment_field="comment_id"),
}


def event_type(name: str) -> EventType:
    try:
        return EVENT_TYPES[name]
    except KeyError:
        known = ", ".join(EVENT_TYPES)
        raise EventError(f"unknown event type {bounded_text(repr(name), 80)} "
                         f"(known: {known})") from None


MAX_PAYLOAD = 100_000
"""Characters of JSON an event's payload may hold."""


def parse_payload(name: str, raw: object) -> dict[str, Any]:
    """Check an event's type and JSON payload; raise EventError naming the problem."""
    spec = event_type(name)
    text = raw if isinstance(raw, str) or raw is None else bounded_text(raw, MAX_PAYLOAD + 1)
    if text is None or not text.strip():
        data: Any = {}
    elif len(text) > MAX_PAYLOAD:
        raise EventError(f"payload is longer than {MAX_PAYLOAD} characters; an event's "
                         "payload holds a few ids and values")
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EventError(f"payload is not valid JSON ({exc})") from None
        except RecursionError:
            raise EventError("payload is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise EventError(f"payload must be a JSON object, got {type(data).__name__}")
    return spec.parse_payload(data)


def resolve(ctx: EventContext, settings: Settings) -> Recipients:
    """Who must hear of this event, on which channel."""
    return event_type(ctx.event.event_type).rule(ctx, settings)


def assignee_id(ctx: EventContext) -> int | None:
    """The new assignee of a ticket_assigned event: the payload's, else the ticket's."""
    from_payload = ctx.payload.get("assignee_id")
    return from_payload if from_payload is not None else ctx.ticket.assignee_id
