"""How the app's data reads in an email: pure helpers shared by the event types'
template variables and the renderer (cut text, a priority's badge, a ticket's view)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import SimpleNamespace

from ..config import Settings
from ..events.model import Ticket, User
from .i18n import Language


def cut(text: str, limit: int) -> tuple[str, bool]:
    """Text cut to ``limit`` characters at a word boundary; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    space = head.rfind(" ")
    return (head[:space] if space > limit * 0.8 else head).rstrip() + " …", True


_LEVEL = re.compile(r"\b(low|medium|high|critical)\b", re.IGNORECASE)


def priority_level(stored: str, label: str = "") -> str:
    """The word that styles a priority's badge: low, medium, high or critical, found in
    the stored value or the app's label ("2. High"), else unknown."""
    found = _LEVEL.search(stored) or _LEVEL.search(label)
    return found.group(1).lower() if found else "unknown"


def name_of(users: Mapping[int, User], user_id: int | None, default: str = "") -> str:
    user = users.get(user_id) if user_id is not None else None
    return user.display_name if user is not None else default


def ticket_view(ticket: Ticket, users: Mapping[int, User], project_name: str | None,
                settings: Settings, language: Language) -> SimpleNamespace:
    """A ticket as the templates print it in ``language`` (its description cut to
    ``ITSM_MAX_TEXT_LENGTH``, with a flag to link to the rest)."""
    description, truncated = cut(ticket.description, settings.max_text_length)
    return SimpleNamespace(
        id=ticket.id, number=ticket.number, title=ticket.title,
        description=description, description_truncated=truncated,
        status=ticket.status_label or ticket.status,
        priority=language.priority(ticket.priority, ticket.priority_label),
        priority_level=priority_level(ticket.priority, ticket.priority_label),
        url=ticket.links.get("staff") or settings.ticket_url(ticket.id),
        requester_name=name_of(users, ticket.requester_id),
        assignee_name=name_of(users, ticket.assignee_id) or None,
        project_name=project_name, due_at_display=language.time(ticket.due_at))
