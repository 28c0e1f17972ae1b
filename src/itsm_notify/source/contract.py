"""What inbound mail writes into the ``contract`` source's tables (users, tickets,
comments), each inside the caller's transaction: the handler records the message,
writes these and the outbox event in one (``ContractWriter``, the contract's
``SourceWriter``). Reading goes through the generic source (source/base.py) like every
other source's."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    false,
    func,
    insert,
    select,
    true,
    update,
)

from ..events.model import (
    MAX_ADDRESS,
    MAX_LABEL,
    MAX_NAME,
    User,
    bounded_text,
    optional_id,
)
from ..inbound.classify import TICKET_NUMBER_TAG, TicketKey
from ..storage.database import utcnow
from ..storage.schema import comments, project_members, tickets, users
from .writes import NewEvent, Opening, Person, Refused, Reply, Written


def _user(row: Any) -> User:
    email = bounded_text(row.email, MAX_ADDRESS + 1).strip()
    return User(id=row.id, username=bounded_text(row.username, MAX_NAME),
                email=email if 0 < len(email) <= MAX_ADDRESS else None,
                first_name=bounded_text(row.first_name, MAX_NAME),
                last_name=bounded_text(row.last_name, MAX_NAME),
                is_active=bool(row.is_active), is_manager=bool(row.is_manager),
                locale=bounded_text(row.locale, MAX_LABEL) or None)


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


def _person(user: User | None, address: str) -> Person | None:
    return Person(address.strip(), user.id, user.username) if user is not None else None


class ContractWriter:
    """The contract's writes (the functions above): a reply is a public comment by a
    user on the ticket (requester, assignee, project member or public commenter); new
    mail a ticket numbered ``TKT-<id>``; a stranger becomes a new user."""

    name = "contract"
    subject_patterns: tuple[re.Pattern[str], ...] = (TICKET_NUMBER_TAG,)

    @property
    def comments(self) -> ContractWriter:
        return self

    def account(self, conn: Connection, address: str) -> Person | None:
        return _person(find_user_by_address(conn, address), address)

    def account_named(self, conn: Connection, username: str) -> Person | None:
        user = find_user_by_username(conn, username)
        return _person(user, user.email or "") if user is not None else None

    def reply_author(self, conn: Connection, address: str) -> Person | None:
        return self.account(conn, address)

    def stranger(self, conn: Connection, address: str, name: str) -> Person | Refused:
        user_id = create_user_for_address(conn, address, name)
        return Person(address.strip(), user_id)

    def ticket_exists(self, conn: Connection, ticket_id: int) -> bool:
        return ticket_exists(conn, ticket_id)

    def find_tagged_ticket(self, conn: Connection, key: TicketKey) -> int | None:
        return find_ticket_by_number(conn, key.value)

    def may_write(self, conn: Connection, ticket_id: int, author: Person) -> bool:
        participants = ticket_participants(conn, ticket_id)
        return participants is not None and author.user_id is not None and \
            participants.allows(author.user_id)

    def add_reply(self, conn: Connection, reply: Reply) -> Written:
        comment_id = add_public_comment(conn, reply.ticket_id, reply.author.user_id,
                                        reply.body)
        return Written(reply.ticket_id, comment_id, (NewEvent(
            "comment_added", {"comment_id": comment_id}, reply.author.user_id),))

    def open_ticket(self, conn: Connection, opening: Opening) -> Written | Refused:
        requester_id = opening.requester.user_id
        assert requester_id is not None  # every contract requester is a user
        ticket_id, number = create_ticket(conn, title=opening.title,
                                          description=opening.body,
                                          requester_id=requester_id)
        return Written(ticket_id, ticket_id, (NewEvent("ticket_created", {}, requester_id),),
                       number=number)
