"""What a chat message says about an event: the bridge from an event's context (the
same one the email rules read) to the neutral ``ChatMessage``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from .chat import ChatMessage

if TYPE_CHECKING:
    from ..events.model import EventContext

SUMMARY_LIMIT = 500
"""Characters of a description or comment a chat message carries."""


def _cut(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_LIMIT else flat[: SUMMARY_LIMIT - 1] + "…"


def chat_message(ctx: EventContext, settings: Settings) -> ChatMessage | None:
    """The chat message of an event, or None when chat must not hear of it: an internal
    comment goes to no chat (as to no email; chat channels are read by more people than
    a ticket's staff). Statuses and priorities as the help desk labels them, the link
    the staff's (chat is where staff are)."""
    kind, ticket = ctx.event.event_type, ctx.ticket
    if ctx.comment is not None and ctx.comment.is_internal:
        return None
    actor = ctx.actor.display_name if ctx.actor else "System"
    status, summary = ticket.status_label or ticket.status, ""
    if kind == "ticket_created":
        summary = _cut(ticket.description)
    elif kind == "ticket_assigned":
        assignee_id = ctx.payload.get("assignee_id", ticket.assignee_id)
        assignee = ctx.users.get(assignee_id) if assignee_id is not None else None
        summary = f"Assigned to {assignee.display_name}" if assignee else "Unassigned"
    elif kind == "status_changed":
        status = ctx.status_label(ctx.payload.get("new_status")) or status
        summary = f"{ctx.status_label(ctx.payload.get('old_status')) or '?'} → {status}"
    elif kind == "comment_added" and ctx.comment is not None:
        summary = _cut(ctx.comment.body)
    return ChatMessage(event_type=kind, ticket_number=ticket.number, title=ticket.title,
                       priority=ticket.priority_label or ticket.priority, status=status,
                       actor_name=actor, summary=summary,
                       link=ticket.links.get("staff") or settings.ticket_url(ticket.id),
                       site_name=settings.site_name)
