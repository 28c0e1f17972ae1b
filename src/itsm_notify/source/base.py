"""A source: the help desk's schema as the engine reads it, through a mapping.

``Source.load_contexts`` builds the context of a whole batch of events in a fixed number
of queries whatever the source (tickets, comments, teams and members, commenters,
ticket CCs, users, opt-outs: at most eight), each a SELECT of the mapping's expressions
over its table or view. The values are bounded and typed as they are read (a number
where text was expected is shown as text). A preset may also bring rules of its own
(the app's own: who django-helpdesk mails), where in-app notifications are written, and
how a link is made for whom.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, false, select, text
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import TextClause

from ..compose.i18n import language_code
from ..config import Settings
from ..errors import DatabaseUnavailable, EventError
from ..events.audience import EmailRecipient, Recipients
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
    TicketCC,
    User,
    bounded_text,
    optional_id,
)
from ..events.types import EVENT_TYPES, Need
from ..storage.database import among
from ..storage.schema import Timestamp, app_notifications, preferences
from .mapping import Entity, SourceMapping, fill

Rule = Callable[[EventContext, Settings], Recipients]
InAppWriter = Callable[[Connection, Sequence[Mapping[str, Any]]], None]


def naive_utc(moment: Any) -> datetime | None:
    """A timestamp as the tool compares them: naive UTC (an app's column may be aware)."""
    if not isinstance(moment, datetime):
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def addresses(value: Any) -> tuple[str, ...]:
    """A comma-separated address list as an app stores one (django-helpdesk's queue CCs)."""
    return tuple(a.strip() for a in bounded_text(value, 2000).split(",") if a.strip())


def accounts_by_address(users: Mapping[int, User]) -> dict[str, User]:
    """Active accounts by lower-case address; where several share one (apps rarely make
    addresses unique), the oldest account (lowest id) is the address's person."""
    found: dict[str, User] = {}
    for user_id in sorted(users):
        user = users[user_id]
        if user.is_active and user.email:
            found.setdefault(user.email.lower(), user)
    return found


def write_app_notifications(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """In-app notifications into the tool's ``app_notifications`` table."""
    from ..storage.deliveries import insert_many

    insert_many(conn, app_notifications, [dict(row) for row in rows])


@dataclass
class Source:
    """One help desk's schema (a mapping), its rules and its in-app table."""

    mapping: SourceMapping
    settings: Settings
    rules: Mapping[str, Rule] = field(default_factory=dict)
    """Rules of the app's own, by event type, in place of the contract's."""
    write_in_app: InAppWriter = write_app_notifications
    path: str = ""
    """Where the app's pages are mounted: ``{path}`` in the mapping's links."""
    _queries: dict[tuple[str, str, str], Executable] = field(default_factory=dict, repr=False)
    _admins: dict[int, User] | None = field(default=None, repr=False)
    """The ADMINS' accounts, once looked up (``admin_users``)."""

    @property
    def name(self) -> str:
        return self.mapping.name

    # ------------------------------------------------------------------ rules

    def resolve(self, ctx: EventContext) -> Recipients:
        """Who must hear of this event: the preset's rule for its type, else the
        contract's."""
        rule = self.rules.get(ctx.event.event_type) or EVENT_TYPES[ctx.event.event_type].rule
        return rule(ctx, self.settings)

    def link(self, ctx: EventContext, recipient: EmailRecipient) -> str:
        """The ticket's link for this recipient: the requester's (the app's own page for
        the one who asked, with its access key) or the staff's."""
        links = ctx.ticket.links
        is_requester = (recipient.user_id is not None and \
            recipient.user_id == ctx.ticket.requester_id) or \
            (bool(ctx.ticket.requester_email) and \
            recipient.key == (ctx.ticket.requester_email or "").strip().lower())
        return links["requester"] if is_requester else links["staff"]

    # ------------------------------------------------------------------ checking

    def check(self, engine: Engine) -> None:
        """Raise DatabaseUnavailable unless every mapped entity reads (a table or a view
        of that name, its expressions valid): one empty SELECT each."""
        with engine.connect() as conn:
            for entity in self.mapping.entities.values():
                try:
                    conn.execute(text(f"{entity.select()} WHERE 1 = 0")).all()
                except Exception as exc:
                    conn.rollback()
                    first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                    hint = ("run 'itsm-notify db init'" if self.name == "contract" else
                            "check ITSM_SOURCE and that DATABASE_URL is the help desk's "
                            "database (its own migrations made)")
                    raise DatabaseUnavailable(
                        f"The {self.name} source cannot read its {entity.name}s from "
                        f"{entity.source!r} ({first}): {hint}.") from None

    # ------------------------------------------------------------------ reading

    def _query(self, conn: Connection, entity: Entity, where: str) -> Executable:
        """``entity``'s SELECT with a condition, ``:ids`` a list (an array on
        PostgreSQL, an expanding IN list elsewhere); built once per dialect."""
        key = (entity.name, where, conn.dialect.name)
        query = self._queries.get(key)
        if query is None:
            postgres = conn.dialect.name == "postgresql"
            condition = where
            if postgres:
                for name in ("ids", "emails"):
                    condition = condition.replace(f" IN :{name}", f" = ANY(:{name})")
            clause = text(f"{entity.select()} WHERE {condition}")
            if not postgres:
                clause = clause.bindparams(*[bindparam(n, expanding=True) for n in
                                             ("ids", "emails") if f":{n}" in condition])
            query = self._queries[key] = clause.columns(
                **{name: Timestamp for name in entity.fields if name in ("due_at", "created_at")})
        return query

    def _rows(self, conn: Connection, entity: Entity, where: str, **params: Any) -> list[Any]:
        return list(conn.execute(self._query(conn, entity, where),
                                 {k: sorted(v) if isinstance(v, set) else v
                                  for k, v in params.items()}))

    def _user(self, row: Any) -> User:
        email = bounded_text(row.email, MAX_ADDRESS + 1).strip()
        entity = self.mapping.entities["user"]
        return User(id=int(row.id), username=bounded_text(row.username, MAX_NAME),
                    email=email if 0 < len(email) <= MAX_ADDRESS else None,
                    first_name=bounded_text(row.first_name, MAX_NAME),
                    last_name=bounded_text(row.last_name, MAX_NAME),
                    is_active=bool(row.is_active), is_manager=bool(row.is_manager),
                    locale=language_code(bounded_text(row.locale, MAX_LABEL)),
                    time_zone=bounded_text(row.time_zone, MAX_LABEL).strip() or None,
                    extra={name: getattr(row, name) for name in entity.extra})

    def _ticket(self, row: Any) -> Ticket:
        mapping = self.mapping
        entity = mapping.entities["ticket"]
        values = {name: getattr(row, name) for name in entity.fields}
        values["site_url"], values["path"] = self.settings.site_url, self.path
        number = bounded_text(row.number if row.number is not None else
                              fill(mapping.formats["number"], values), MAX_LABEL)
        values["number"] = number
        status, priority = bounded_text(row.status, MAX_LABEL), \
            bounded_text(row.priority, MAX_LABEL)
        staff = fill(mapping.formats["staff_link"], values)
        requester = fill(mapping.formats["requester_link"], values) \
            if mapping.formats["requester_link"] else staff
        return Ticket(
            id=int(row.id), number=number, title=bounded_text(row.title, MAX_TITLE),
            description=bounded_text(row.description, MAX_BODY), status=status,
            priority=priority, requester_id=optional_id(row.requester_id),
            assignee_id=optional_id(row.assignee_id), project_id=optional_id(row.team_id),
            due_at=naive_utc(row.due_at), created_at=naive_utc(row.created_at),
            requester_email=bounded_text(row.requester_email, MAX_ADDRESS).strip() or None,
            status_label=mapping.status_labels.get(status, ""),
            priority_label=mapping.priority_labels.get(priority, ""),
            tag=bounded_text(fill(mapping.formats["tag"], values), MAX_LABEL + 4),
            links={"staff": staff, "requester": requester,
                   "in_app": fill(mapping.formats["in_app_link"], values)},
            extra={name: values[name] for name in entity.extra})

    def tickets(self, conn: Connection, ids: Iterable[int]) -> dict[int, Ticket]:
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return {}
        entity = self.mapping.entities["ticket"]
        return {ticket.id: ticket for ticket in map(self._ticket, self._rows(
            conn, entity, f"{entity.fields['id']} IN :ids", ids=wanted))}

    def users(self, conn: Connection, ids: Iterable[int], *, managers: bool = False,
              emails: Iterable[str] = ()) -> dict[int, User]:
        """Users by id, the managers, and the users with one of ``emails`` (lower case).
        The ids are looked up on their own, by the key: the managers and the addresses
        have no index to use in an app's users table, and joined to the ids by OR they
        made every lookup read the whole table."""
        entity = self.mapping.entities["user"]
        wanted, addresses_ = {i for i in ids if i is not None}, {e.lower() for e in emails}
        found: dict[int, User] = {}
        if wanted:
            found.update((user.id, user) for user in map(self._user, self._rows(
                conn, entity, f"{entity.fields['id']} IN :ids", ids=wanted)))
        conditions = []
        if managers:
            conditions.append(f"({entity.fields['is_manager']})")
        if addresses_:
            conditions.append(f"LOWER({entity.fields['email']}) IN :emails")
        if conditions:
            params: dict[str, Any] = {"emails": addresses_} if addresses_ else {}
            found.update((user.id, user) for user in map(self._user, self._rows(
                conn, entity, " OR ".join(conditions), **params)))
        return found

    def admin_users(self, conn: Connection) -> dict[int, User]:
        """The accounts behind ADMINS addresses, looked up once per Source (one per run):
        every batch needs them, and finding users by address reads the whole users
        table (no index to use)."""
        if self._admins is None:
            emails = {a.email for a in self.settings.admins}
            self._admins = self.users(conn, (), emails=emails) if emails else {}
        return self._admins

    def admin_accounts(self, users: Mapping[int, User]) -> dict[str, User]:
        """The active accounts behind ADMINS addresses, by lower-case address."""
        admins = {a.email.lower() for a in self.settings.admins}
        return {email: u for email, u in accounts_by_address(users).items() if email in admins}

    def load_contexts(self, conn: Connection,
                      batch: Sequence[tuple[OutboxEvent, dict[str, Any]]]
                      ) -> dict[int, EventContext | EventError]:
        """Build each event's context, as its type needs it (``EventType.needs``); an
        event whose ticket or comment is missing gets an EventError instead, so the rest
        of the batch goes on. Every batch has ``ADMINS``' accounts (``admin_users``), so that
        no event's recipients depend on its neighbours."""
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
            user_ids.update(i for i in (event.actor_id, *spec.user_ids(payload))
                            if i is not None)
        entities = self.mapping.entities
        ticket_by_id = self.tickets(conn, ticket_ids)
        comment_by_id = self._comments(conn, comment_ids)
        project_by_id, team = self._teams(conn, ticket_by_id.values(),
                                          Need.TEAM in needs)
        commenters = self._commenters(conn, {ticket_by_id[e.ticket_id].id for e, _ in batch
                                             if Need.COMMENTERS in kinds[e.id].needs
                                             and e.ticket_id in ticket_by_id})
        ccs = self._ccs(conn, ticket_by_id if Need.TEAM in needs and "ticket_cc"
                        in entities else {})
        for t in ticket_by_id.values():
            user_ids.update(i for i in (t.requester_id, t.assignee_id) if i is not None)
        user_ids.update(c.author_id for c in comment_by_id.values() if c.author_id)
        for members in (*team.values(), *commenters.values()):
            user_ids.update(members)
        user_ids.update(c.user_id for cs in ccs.values() for c in cs if c.user_id)
        emails = {t.requester_email for t in ticket_by_id.values() if t.requester_email}
        emails.update(c.email for cs in ccs.values() for c in cs if c.email)
        user_by_id = {**self.admin_users(conn),
                      **self.users(conn, user_ids, managers=Need.MANAGERS in needs,
                                   emails=emails)}
        by_type = self._opted_out(conn, {e.event_type for e, _ in batch}, user_by_id)
        manager_ids = tuple(sorted(u.id for u in user_by_id.values()
                                   if u.is_manager and u.is_active))
        accounts = accounts_by_address(user_by_id)
        admin_accounts = self.admin_accounts(user_by_id)

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
            if ticket.status != listed[0].status:
                ticket = _relabel(ticket, self.mapping)
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
                ccs=tuple(ccs.get(ticket.id, ())), accounts=accounts,
                admin_accounts=admin_accounts, status_labels=self.mapping.status_labels,
                opted_out=frozenset(by_type.get(event.event_type, ())))
        return contexts

    def _comments(self, conn: Connection, ids: set[int]) -> dict[int, Comment]:
        entity = self.mapping.entities.get("comment")
        if entity is None or not ids:
            return {}
        comments = {}
        for row in self._rows(conn, entity, f"{entity.fields['id']} IN :ids", ids=ids):
            comments[int(row.id)] = Comment(
                id=int(row.id), ticket_id=int(row.ticket_id),
                author_id=optional_id(row.author_id), body=bounded_text(row.body, MAX_BODY),
                is_internal=bool(row.is_internal), created_at=naive_utc(row.created_at))
        return comments

    def _teams(self, conn: Connection, tickets: Iterable[Ticket], wanted: bool
               ) -> tuple[dict[int, Project], dict[int, list[int]]]:
        entity = self.mapping.entities.get("team")
        ids = {t.project_id for t in tickets if t.project_id is not None}
        projects: dict[int, Project] = {}
        if not (wanted and ids and entity):
            return projects, defaultdict(list)
        for row in self._rows(conn, entity, f"{entity.fields['id']} IN :ids", ids=ids):
            projects[int(row.id)] = Project(
                id=int(row.id), name=bounded_text(row.name, MAX_NAME),
                notify_team=bool(row.notify_team), cc_on_create=addresses(row.cc_on_create),
                cc_on_update=addresses(row.cc_on_update),
                notify_ticket_ccs=bool(row.notify_ticket_ccs),
                reply_to=bounded_text(row.reply_to, MAX_ADDRESS).strip() or None,
                locale=language_code(bounded_text(row.locale, MAX_LABEL)))
        return projects, self.team_members(conn, ids)

    def _commenters(self, conn: Connection, ticket_ids: set[int]) -> dict[int, list[int]]:
        """Who wrote a public comment on each ticket, in the order they first did."""
        entity = self.mapping.entities.get("comment")
        commenters: dict[int, list[int]] = defaultdict(list)
        if entity is None or not ticket_ids:
            return commenters
        key = ("commenters", "", conn.dialect.name)
        if key not in self._queries:
            f = entity.fields
            ids = "= ANY(:ids)" if conn.dialect.name == "postgresql" else "IN :ids"
            query = text(
                f"SELECT {f['ticket_id']} AS ticket_id, {f['author_id']} AS author_id, "
                f"MIN({f['id']}) AS first FROM {entity.source} WHERE {f['ticket_id']} {ids} "
                f"AND {f['author_id']} IS NOT NULL AND NOT ({f['is_internal']}) "
                f"GROUP BY {f['ticket_id']}, {f['author_id']} ORDER BY 1, 3")
            if conn.dialect.name != "postgresql":
                query = query.bindparams(bindparam("ids", expanding=True))
            self._queries[key] = query
        for row in conn.execute(self._queries[key], {"ids": sorted(ticket_ids)}):
            if (author := optional_id(row.author_id)) is not None:
                commenters[int(row.ticket_id)].append(author)
        return commenters

    def _ccs(self, conn: Connection, tickets: Mapping[int, Ticket]
             ) -> dict[int, list[TicketCC]]:
        entity = self.mapping.entities.get("ticket_cc")
        ccs: dict[int, list[TicketCC]] = defaultdict(list)
        if entity is None or not tickets:
            return ccs
        for row in self._rows(conn, entity, f"{entity.fields['ticket_id']} IN :ids",
                              ids=set(tickets)):
            email = bounded_text(row.email, MAX_ADDRESS).strip() or None
            ccs[int(row.ticket_id)].append(TicketCC(int(row.ticket_id),
                                                    optional_id(row.user_id), email))
        return ccs

    @staticmethod
    def _opted_out(conn: Connection, event_types: set[str], users: Mapping[int, User]
                   ) -> dict[str, set[tuple[int, str]]]:
        by_type: dict[str, set[tuple[int, str]]] = defaultdict(set)
        if users:
            for row in conn.execute(
                select(preferences.c.user_id, preferences.c.event_type, preferences.c.channel)
                .where(preferences.c.enabled == false(),
                       among(conn, preferences.c.event_type, sorted(event_types)),
                       among(conn, preferences.c.user_id, sorted(users)))
            ):
                by_type[row.event_type].add((row.user_id, row.channel))
        return by_type

    # ------------------------------------------------------------ due dates

    def due_query(self, now: datetime, closed: Sequence[Any], *, past: bool) -> TextClause:
        """Tickets not closed whose due date is past at ``now`` (``past``) or still to
        come, soonest due first: a range on the due date first, so that an index on it
        does the work."""
        entity = self.mapping.entities["ticket"]
        f = entity.fields
        names = [f"closed_{i}" for i in range(len(closed))]
        condition = f"{f['due_at']} IS NOT NULL AND {f['due_at']} {'<' if past else '>'} :now"
        if names:
            condition += f" AND {f['status']} NOT IN ({', '.join(':' + n for n in names)})"
        return text(f"{entity.select()} WHERE {condition} ORDER BY {f['due_at']}, {f['id']}") \
            .bindparams(now=now, **dict(zip(names, closed, strict=True)))

    def due_tickets(self, conn: Connection, now: datetime, *, past: bool) -> list[Ticket]:
        """Tickets not closed, past due (``past``) or not yet due, soonest due first (one
        query)."""
        query = self.due_query(now, self.mapping.closed_statuses, past=past) \
            .columns(due_at=Timestamp, created_at=Timestamp)
        return [self._ticket(row) for row in conn.execute(query)]

    def team_members(self, conn: Connection, team_ids: Iterable[int]) -> dict[int, list[int]]:
        """The member user ids of each team, in id order (one query; none without a
        membership entity)."""
        members = self.mapping.entities.get("membership")
        ids = set(team_ids)
        team: dict[int, list[int]] = defaultdict(list)
        if members is None or not ids:
            return team
        rows = self._rows(conn, members, f"{members.fields['team_id']} IN :ids", ids=ids)
        for row in sorted(rows, key=lambda r: (r.team_id, r.user_id)):
            if (user := optional_id(row.user_id)) is not None:
                team[int(row.team_id)].append(user)
        return team


def _relabel(ticket: Ticket, mapping: SourceMapping) -> Ticket:
    """The ticket with its labels for the status it had at the event."""
    from dataclasses import replace

    return replace(ticket, status_label=mapping.status_labels.get(ticket.status, ""))
