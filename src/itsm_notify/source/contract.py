"""The ``contract`` source: load the ticket context of a whole batch of events from the
contract's tables in a fixed number of queries.

Reading per event would cost several round trips each (ticket, comment, users, team,
commenters); a batch of 100 events would make 500 queries. Here a batch makes at most
seven, whatever its size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, false, func, or_, select, true

from ..events.model import (
    MAX_ADDRESS,
    MAX_BODY,
    MAX_LABEL,
    MAX_NAME,
    MAX_TITLE,
    Comment,
    EventContext,
    EventError,
    OutboxEvent,
    Project,
    Ticket,
    User,
    UserDirectory,
    bounded_text,
    optional_id,
)
from ..events.types import EVENT_TYPES
from ..storage.database import among
from ..storage.schema import comments, preferences, project_members, projects, tickets, users


def _user(row: Any) -> User:
    email = bounded_text(row.email, MAX_ADDRESS + 1).strip()
    return User(id=row.id, username=bounded_text(row.username, MAX_NAME),
                email=email if 0 < len(email) <= MAX_ADDRESS else None,
                first_name=bounded_text(row.first_name, MAX_NAME),
                last_name=bounded_text(row.last_name, MAX_NAME),
                is_active=bool(row.is_active), is_manager=bool(row.is_manager),
                locale=bounded_text(row.locale, MAX_LABEL) or None)


def _ticket(row: Any) -> Ticket:
    return Ticket(id=row.id, number=bounded_text(row.number, MAX_LABEL),
                  title=bounded_text(row.title, MAX_TITLE),
                  description=bounded_text(row.description, MAX_BODY),
                  status=bounded_text(row.status, MAX_LABEL),
                  priority=bounded_text(row.priority, MAX_LABEL),
                  requester_id=optional_id(row.requester_id),
                  assignee_id=optional_id(row.assignee_id),
                  project_id=optional_id(row.project_id),
                  due_at=row.due_at, created_at=row.created_at)


def _comment(row: Any) -> Comment:
    return Comment(id=row.id, ticket_id=row.ticket_id, author_id=optional_id(row.author_id),
                   body=bounded_text(row.body, MAX_BODY), is_internal=bool(row.is_internal),
                   created_at=row.created_at)


def load_contexts(
    engine: Engine, batch: Sequence[tuple[OutboxEvent, dict[str, Any]]],
    admin_emails: Sequence[str] = (),
) -> dict[int, EventContext | EventError]:
    """Build each event's context; an event whose ticket or comment is missing gets an
    EventError instead, so the rest of the batch goes on. Users whose address is one of
    ``admin_emails`` are loaded too, so ADMINS with an account get in-app rows."""
    if not batch:
        return {}
    ticket_ids = {event.ticket_id for event, _ in batch if event.ticket_id is not None}
    comment_ids = {payload[spec.comment_field] for event, payload in batch
                   if (spec := EVENT_TYPES[event.event_type]).comment_field}
    wants_managers = any(event.event_type == "ticket_created" for event, _ in batch)

    with engine.connect() as conn:
        ticket_by_id = {row.id: _ticket(row) for row in conn.execute(
            select(tickets).where(among(conn, tickets.c.id, sorted(ticket_ids))))
        } if ticket_ids else {}
        comment_by_id = {row.id: _comment(row) for row in conn.execute(
            select(comments).where(among(conn, comments.c.id, sorted(comment_ids))))
        } if comment_ids else {}

        project_ids = sorted({t.project_id for t in ticket_by_id.values()
                              if t.project_id is not None})
        project_by_id: dict[int, Project] = {}
        team: dict[int, list[int]] = defaultdict(list)
        if project_ids:
            for row in conn.execute(select(projects)
                                    .where(among(conn, projects.c.id, project_ids))):
                project_by_id[row.id] = Project(id=row.id, name=bounded_text(row.name, MAX_NAME),
                                                notify_team=bool(row.notify_team))
            for row in conn.execute(select(project_members.c.project_id,
                                           project_members.c.user_id)
                                    .where(among(conn, project_members.c.project_id, project_ids))
                                    .order_by(project_members.c.user_id)):
                team[row.project_id].append(row.user_id)

        commented_tickets = sorted({c.ticket_id for c in comment_by_id.values()})
        commenters: dict[int, list[int]] = defaultdict(list)
        if commented_tickets:
            for row in conn.execute(
                select(comments.c.ticket_id, comments.c.author_id)
                .where(among(conn, comments.c.ticket_id, commented_tickets),
                       comments.c.is_internal == false())
                .group_by(comments.c.ticket_id, comments.c.author_id)
                .order_by(comments.c.ticket_id, func.min(comments.c.id))
            ):
                commenters[row.ticket_id].append(row.author_id)

        user_ids: set[int] = set()
        for event, payload in batch:
            user_ids.update(i for i in (event.actor_id, payload.get("assignee_id")) if i)
        for t in ticket_by_id.values():
            user_ids.update(i for i in (t.requester_id, t.assignee_id) if i)
        for c in comment_by_id.values():
            if c.author_id:
                user_ids.add(c.author_id)
        for members in (*team.values(), *commenters.values()):
            user_ids.update(members)
        user_filter: ColumnElement[bool] = among(conn, users.c.id, sorted(user_ids))
        if wants_managers:
            user_filter = or_(user_filter, users.c.is_manager == true())
            if admin_emails:
                user_filter = or_(user_filter, func.lower(users.c.email).in_(
                    sorted({a.lower() for a in admin_emails})))
        user_by_id = UserDirectory((row.id, _user(row)) for row in conn.execute(
            select(users).where(user_filter)))
        manager_ids = tuple(sorted(u.id for u in user_by_id.values()
                                   if u.is_manager and u.is_active))

        event_types = sorted({event.event_type for event, _ in batch})
        by_type: dict[str, set[tuple[int, str]]] = defaultdict(set)
        if user_by_id:
            for row in conn.execute(
                select(preferences.c.user_id, preferences.c.event_type, preferences.c.channel)
                .where(preferences.c.enabled == false(),
                       among(conn, preferences.c.event_type, event_types),
                       among(conn, preferences.c.user_id, sorted(user_by_id)))
            ):
                by_type[row.event_type].add((row.user_id, row.channel))

    contexts: dict[int, EventContext | EventError] = {}
    for event, payload in batch:
        ticket = ticket_by_id.get(event.ticket_id) if event.ticket_id is not None else None
        if ticket is None:
            contexts[event.id] = EventError(
                f"ticket {event.ticket_id} does not exist (deleted, or a wrong ticket_id)")
            continue
        comment = None
        spec = EVENT_TYPES[event.event_type]
        if spec.comment_field:
            comment = comment_by_id.get(payload[spec.comment_field])
            if comment is None or comment.ticket_id != ticket.id:
                contexts[event.id] = EventError(
                    f"comment {payload[spec.comment_field]} does not exist on ticket "
                    f"{ticket.number}")
                continue
        contexts[event.id] = EventContext(
            event=event, payload=payload, ticket=ticket, users=user_by_id,
            project=project_by_id.get(ticket.project_id) if ticket.project_id else None,
            team_ids=tuple(team.get(ticket.project_id, ())) if ticket.project_id else (),
            manager_ids=manager_ids, comment=comment,
            public_commenter_ids=tuple(commenters.get(ticket.id, ())),
            opted_out=frozenset(by_type.get(event.event_type, ())),
        )
    return contexts
