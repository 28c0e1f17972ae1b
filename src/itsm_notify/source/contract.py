"""The ``contract`` source: load the ticket context of a whole batch of events from the
contract's tables in a fixed number of queries.

Reading per event would cost several round trips each (ticket, comment, users, team,
commenters); a batch of 100 events would make 500 queries. Here a batch makes at most
seven, whatever its size."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    false,
    func,
    insert,
    or_,
    select,
    true,
    update,
)

from ..errors import EventError
from ..events.model import (
    MAX_ADDRESS,
    MAX_BODY,
    MAX_LABEL,
    MAX_NAME,
    MAX_TITLE,
    Comment,
    EventContext,
    OutboxEvent,
    Project,
    Ticket,
    User,
    bounded_text,
    optional_id,
)
from ..events.types import EVENT_TYPES, Need
from ..storage.database import among, utcnow
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
    """Build each event's context, as its type needs it (``EventType.needs``); an event
    whose ticket or comment is missing gets an EventError instead, so the rest of the
    batch goes on. ``ADMINS``' accounts (active users with an admin address) are loaded
    for every batch, so that no event's recipients depend on its neighbours."""
    if not batch:
        return {}
    kinds = {event.id: EVENT_TYPES[event.event_type] for event, _ in batch}
    needs = {need for spec in kinds.values() for need in spec.needs}
    ticket_ids: set[int] = set()
    comment_ids: set[int] = set()
    user_ids: set[int] = set()
    for event, payload in batch:
        spec = kinds[event.id]
        if event.ticket_id is not None:
            ticket_ids.add(event.ticket_id)
        ticket_ids.update(spec.ticket_ids(payload))
        if Need.COMMENT in spec.needs:
            comment_ids.add(payload["comment_id"])
        user_ids.update(i for i in (event.actor_id, *spec.user_ids(payload)) if i is not None)
    admins = sorted({a.lower() for a in admin_emails})

    with engine.connect() as conn:
        ticket_by_id = {row.id: _ticket(row) for row in conn.execute(
            select(tickets).where(among(conn, tickets.c.id, sorted(ticket_ids))))
        } if ticket_ids else {}
        comment_by_id = {row.id: _comment(row) for row in conn.execute(
            select(comments).where(among(conn, comments.c.id, sorted(comment_ids))))
        } if comment_ids else {}

        project_by_id: dict[int, Project] = {}
        team: dict[int, list[int]] = defaultdict(list)
        project_ids = sorted({t.project_id for t in ticket_by_id.values()
                              if t.project_id is not None})
        if project_ids and Need.TEAM in needs:
            for row in conn.execute(select(projects)
                                    .where(among(conn, projects.c.id, project_ids))):
                project_by_id[row.id] = Project(id=row.id, name=bounded_text(row.name, MAX_NAME),
                                                notify_team=bool(row.notify_team))
            for row in conn.execute(select(project_members.c.project_id,
                                           project_members.c.user_id)
                                    .where(among(conn, project_members.c.project_id, project_ids))
                                    .order_by(project_members.c.user_id)):
                team[row.project_id].append(row.user_id)

        commenters: dict[int, list[int]] = defaultdict(list)
        commented_tickets = sorted({ticket_by_id[e.ticket_id].id for e, _ in batch
                                    if Need.COMMENTERS in kinds[e.id].needs
                                    and e.ticket_id in ticket_by_id})
        if commented_tickets:
            for row in conn.execute(
                select(comments.c.ticket_id, comments.c.author_id)
                .where(among(conn, comments.c.ticket_id, commented_tickets),
                       comments.c.is_internal == false(), comments.c.author_id.is_not(None))
                .group_by(comments.c.ticket_id, comments.c.author_id)
                .order_by(comments.c.ticket_id, func.min(comments.c.id))
            ):
                if (author := optional_id(row.author_id)) is not None:
                    commenters[row.ticket_id].append(author)

        for t in ticket_by_id.values():
            user_ids.update(i for i in (t.requester_id, t.assignee_id) if i is not None)
        user_ids.update(c.author_id for c in comment_by_id.values() if c.author_id is not None)
        for members in (*team.values(), *commenters.values()):
            user_ids.update(members)
        user_filter: ColumnElement[bool] = among(conn, users.c.id, sorted(user_ids))
        if Need.MANAGERS in needs:
            user_filter = or_(user_filter, users.c.is_manager == true())
        if admins:
            user_filter = or_(user_filter, func.lower(users.c.email).in_(admins))
        user_by_id = {row.id: _user(row) for row in conn.execute(select(users)
                                                                 .where(user_filter))}
        manager_ids = tuple(sorted(u.id for u in user_by_id.values()
                                   if u.is_manager and u.is_active))
        admin_accounts = {email: u for u in user_by_id.values() if u.is_active and u.email
                          and (email := u.email.lower()) in admins}

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
        spec = kinds[event.id]
        listed = [ticket_by_id[i] for i in (event.ticket_id, *spec.ticket_ids(payload))
                  if i is not None and i in ticket_by_id]
        if not listed:
            contexts[event.id] = EventError(
                f"ticket {event.ticket_id} does not exist (deleted, or a wrong ticket_id)")
            continue
        ticket = spec.facts(listed[0], payload)
        comment = None
        if Need.COMMENT in spec.needs:
            comment = comment_by_id.get(payload["comment_id"])
            if comment is None or comment.ticket_id != ticket.id:
                contexts[event.id] = EventError(
                    f"comment {payload['comment_id']} does not exist on ticket "
                    f"{ticket.number}")
                continue
        project = project_by_id.get(ticket.project_id) if ticket.project_id else None
        contexts[event.id] = EventContext(
            event=event, payload=payload, ticket=ticket, users=user_by_id,
            tickets=tuple(dict.fromkeys([ticket, *listed[1:]])), project=project,
            team_ids=tuple(team.get(project.id, ())) if project else (),
            manager_ids=manager_ids if Need.MANAGERS in spec.needs else None,
            comment=comment, public_commenter_ids=tuple(commenters.get(ticket.id, ())),
            admin_accounts=admin_accounts,
            opted_out=frozenset(by_type.get(event.event_type, ())))
    return contexts


# ---------------------------------------------------------------- writes (inbound mail)
#
# What inbound mail writes into the contract's tables, each inside the caller's
# transaction (the handler records the message, writes these and the outbox event in
# one). Kept small and named: the same operations for django-helpdesk and django-spire
# go behind a source interface.

TICKET_NUMBER_PREFIX = "TKT-"


@dataclass(frozen=True)
class Participants:
    """Who may write on a ticket by email."""

    requester_id: int | None
    assignee_id: int | None
    team_ids: frozenset[int]
    """The members of the ticket's project (whether or not it notifies its team)."""
    public_commenter_ids: frozenset[int]

    def allows(self, user_id: int) -> bool:
        return user_id in (self.requester_id, self.assignee_id) or \
            user_id in self.team_ids or user_id in self.public_commenter_ids


def _new_id(result: Any) -> int:
    return int(result.inserted_primary_key[0])


def find_user_by_address(conn: Connection, address: str) -> User | None:
    """The active user with this email address, compared case-insensitively; when
    several have it, the oldest account."""
    row = conn.execute(select(users).where(func.lower(users.c.email) == address.strip().lower(),
                                           users.c.is_active == true())
                       .order_by(users.c.id).limit(1)).first()
    return _user(row) if row is not None else None


def find_user_by_username(conn: Connection, username: str) -> User | None:
    """The active user with this username, or None."""
    row = conn.execute(select(users).where(users.c.username == username,
                                           users.c.is_active == true())).first()
    return _user(row) if row is not None else None


def create_user_for_address(conn: Connection, address: str, name: str = "") -> int:
    """A new active user for someone who wrote in. The username is the address's local
    part made of letters, digits and ``._-`` (as Django's usernames allow), then 2, 3 ...
    appended until no user has it; the first and last name come from the display name."""
    base = re.sub(r"[^A-Za-z0-9._-]", "", address.rpartition("@")[0])[:140] or "user"
    # compared in lower case: MariaDB's default collation would take "Alice" for "alice"
    taken = {name.lower() for name in conn.execute(select(users.c.username).where(
        users.c.username.like(f"{base}%"))).scalars()}
    username = next(candidate for n in range(1, len(taken) + 2)
                    if (candidate := base if n == 1 else f"{base}{n}").lower() not in taken)
    first, _, last = " ".join(name.split()).partition(" ")
    result = conn.execute(insert(users).values(
        username=username, email=address.strip(), first_name=first[:150],
        last_name=last[:150], is_active=True, is_manager=False))
    return _new_id(result)


def find_ticket_by_number(conn: Connection, number: str) -> int | None:
    """The id of the ticket numbered ``number`` (as in a subject's ``(TKT-001)``)."""
    return conn.execute(select(tickets.c.id).where(tickets.c.number == number)).scalar()


def ticket_exists(conn: Connection, ticket_id: int) -> bool:
    return conn.execute(select(tickets.c.id).where(tickets.c.id == ticket_id)).first() \
        is not None


def ticket_participants(conn: Connection, ticket_id: int) -> Participants | None:
    """The ticket's requester, assignee, project members and public commenters; None
    when there is no such ticket."""
    ticket = conn.execute(select(tickets.c.requester_id, tickets.c.assignee_id,
                                 tickets.c.project_id)
                          .where(tickets.c.id == ticket_id)).first()
    if ticket is None:
        return None
    team: set[int] = set()
    if ticket.project_id is not None:
        team = set(conn.execute(select(project_members.c.user_id).where(
            project_members.c.project_id == ticket.project_id)).scalars())
    commenters = set(conn.execute(select(comments.c.author_id).distinct().where(
        comments.c.ticket_id == ticket_id, comments.c.is_internal == false(),
        comments.c.author_id.is_not(None))).scalars())
    return Participants(optional_id(ticket.requester_id), optional_id(ticket.assignee_id),
                        frozenset(team), frozenset(commenters))


def add_public_comment(conn: Connection, ticket_id: int, author_id: int | None,
                       body: str) -> int:
    """A public comment on the ticket (``author_id`` None: written by the tool); its id."""
    result = conn.execute(insert(comments).values(
        ticket_id=ticket_id, author_id=author_id, body=body, is_internal=False,
        created_at=utcnow()))
    return _new_id(result)


def create_ticket(conn: Connection, *, title: str, description: str,
                  requester_id: int) -> tuple[int, str]:
    """A new open ticket; its (id, number).

    ``tickets.number`` is unique text the application chooses; here it is ``TKT-`` and
    the id, zero-padded to three digits (``TKT-007``), like the contract's examples, so
    the subjects of its emails end with a tag a reply is matched by. The row is
    inserted under a placeholder number (unique, and never seen outside this
    transaction) to learn its id. When the application already gave that number to
    another ticket, a digit is appended (``TKT-0071``, ``TKT-0072`` ...) until it is free.
    """
    result = conn.execute(insert(tickets).values(
        number=f"inbound-{uuid.uuid4().hex}", title=title, description=description,
        status="open", priority="medium", requester_id=requester_id, created_at=utcnow()))
    ticket_id = _new_id(result)
    base = f"{TICKET_NUMBER_PREFIX}{ticket_id:03d}"
    taken = set(conn.execute(select(tickets.c.number).where(
        tickets.c.number.like(f"{base}%"))).scalars())
    number = next(candidate for n in range(len(taken) + 1)
                  if (candidate := base if n == 0 else f"{base}{n}") not in taken)
    conn.execute(update(tickets).where(tickets.c.id == ticket_id).values(number=number))
    return ticket_id, number
