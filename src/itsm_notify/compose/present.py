"""How the app's data reads in an email: pure helpers shared by the event types'
template variables and the renderer (cut text, times, durations, a ticket's view)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import SimpleNamespace

from ..config import Settings
from ..events.model import Ticket, User


def cut(text: str, limit: int) -> tuple[str, bool]:
    """Text cut to ``limit`` characters at a word boundary; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    space = head.rfind(" ")
    return (head[:space] if space > limit * 0.8 else head).rstrip() + " …", True


def display_time(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else None


def overdue_for(due_at: datetime, now: datetime) -> str:
    """How long past due, in the largest whole unit: "3 days overdue", "1 hour overdue"."""
    seconds = max(0, int((now - due_at).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            amount = seconds // size
            return f"{amount} {unit}{'s' if amount != 1 else ''} overdue"
    return "just overdue"


def due_in(due_at: datetime, now: datetime) -> str:
    """How long until due, in the largest whole unit: "due in 3 hours", "due in 1 day"."""
    seconds = int((due_at - now).total_seconds())
    if seconds <= 0:
        return "due now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            amount = seconds // size
            return f"due in {amount} {unit}{'s' if amount != 1 else ''}"
    return "due in less than a minute"


def name_of(users: Mapping[int, User], user_id: int | None, default: str = "") -> str:
    user = users.get(user_id) if user_id is not None else None
    return user.display_name if user is not None else default


def ticket_view(ticket: Ticket, users: Mapping[int, User], project_name: str | None,
                settings: Settings) -> SimpleNamespace:
    """A ticket as the templates print it (its description cut to
    ``ITSM_MAX_TEXT_LENGTH``, with a flag to link to the rest)."""
    description, truncated = cut(ticket.description, settings.max_text_length)
    return SimpleNamespace(
        id=ticket.id, number=ticket.number, title=ticket.title,
        description=description, description_truncated=truncated,
        status=ticket.status_label or ticket.status,
        priority=ticket.priority_label or ticket.priority,
        url=ticket.links.get("staff") or settings.ticket_url(ticket.id),
        requester_name=name_of(users, ticket.requester_id),
        assignee_name=name_of(users, ticket.assignee_id) or None,
        project_name=project_name, due_at_display=display_time(ticket.due_at))
