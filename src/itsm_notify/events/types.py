"""The event types (contract §2): each one owns everything about itself.

An ``EventType`` says how to read its payload (and which facts of the moment it carries),
what its context needs loaded, who is told (a pure rule), its subject, its templates
and template variables, and its in-app text. The engine knows nothing about any one
type: adding an event type is one entry in ``EVENT_TYPES`` below (and its templates).

The tool's own events go through the same path: ``overdue`` digests are outbox events
written by ``overdue-scan``, ``due_soon`` warnings by ``due-soon-scan`` and ``summary``
emails by ``send-summaries``, each for one recipient.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

from ..compose.i18n import N_, Language
from ..compose.present import cut, name_of, priority_level, ticket_view
from ..config import Settings
from ..errors import EventError
from .addresses import address_problem
from .audience import Audience, Recipients
from .model import MAX_ID, MAX_LABEL, EventContext, Ticket, bounded_text


class Need(StrEnum):
    """What an event type's context needs loaded beyond its ticket, the actor and the
    ticket's people (requester, assignee) and ``ADMINS``' accounts, which every batch
    has."""

    COMMENT = "comment"
    """The comment the payload's ``comment_id`` names."""
    TEAM = "team"
    """The ticket's project, its members and its CCs."""
    COMMENTERS = "commenters"
    """Everyone who wrote a public comment on the ticket."""
    MANAGERS = "managers"
    """Users who hold the manager permission."""


# ------------------------------------------------------------------ payload checks


def _id(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"payload field {key!r} must be a whole number, got "
                         f"{bounded_text(repr(value), 80)}")
    if not 0 < value <= MAX_ID:
        raise EventError(f"payload field {key!r} is not an id (a whole number from 1 to "
                         f"2**63-1), got {bounded_text(repr(value), 80)}")
    return value


def _optional_id(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    return None if value is None else _id(value, key)


def _required_id(payload: dict[str, Any], key: str) -> int:
    if payload.get(key) is None:
        raise EventError(f"payload needs {key!r} (a whole number)")
    return _id(payload[key], key)


def _label(payload: dict[str, Any], key: str) -> str | None:
    """A status or priority as the app stores it: text, or a number (django-helpdesk
    stores integers), kept as text."""
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError(f"payload field {key!r} must be text or a whole number (the value "
                         f"as stored), got {bounded_text(repr(value), 80)}")
    return bounded_text(value, MAX_LABEL)


def no_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {}


def _creation(payload: dict[str, Any]) -> dict[str, Any]:
    """``ticket_created`` may carry the ticket's status, priority and assignee at creation
    (so that a ticket assigned a minute later is told as it was: unassigned)."""
    facts: dict[str, Any] = {key: _label(payload, key) for key in ("status", "priority")
                             if payload.get(key) is not None}
    if "assignee_id" in payload:
        facts["assignee_id"] = _optional_id(payload, "assignee_id")
    return facts


def _assignment(payload: dict[str, Any]) -> dict[str, Any]:
    """``assignee_id``: the new assignee; null means unassigned; absent means the
    ticket's assignee as loaded."""
    return {key: _optional_id(payload, key) for key in ("assignee_id", "previous_assignee_id")
            if key in payload}


def _status_change(payload: dict[str, Any]) -> dict[str, Any]:
    new_status = _label(payload, "new_status")
    if new_status is None or not new_status.strip():
        raise EventError("payload needs 'new_status' (the status as stored)")
    return {"new_status": new_status, "old_status": _label(payload, "old_status")}


def _comment(payload: dict[str, Any]) -> dict[str, Any]:
    return {"comment_id": _required_id(payload, "comment_id")}


MAX_LISTED = 100
"""Tickets listed in one digest; the rest are counted ("and 40 more")."""


def _digest(payload: dict[str, Any]) -> dict[str, Any]:
    """An ``overdue`` digest, written by overdue-scan: its one recipient (a user, or an
    address with no account), the tickets it lists, how many there are in all."""
    recipient = payload.get("recipient")
    if not isinstance(recipient, dict):
        raise EventError("payload needs 'recipient' ({'user_id': N} or {'address': ...})")
    ticket_ids = payload.get("ticket_ids")
    if not isinstance(ticket_ids, list) or not 0 < len(ticket_ids) <= MAX_LISTED:
        raise EventError(f"payload needs 'ticket_ids' (1 to {MAX_LISTED} ids)")
    target: dict[str, Any]
    if recipient.get("user_id") is not None:
        target = {"user_id": _id(recipient["user_id"], "recipient.user_id")}
    elif isinstance(recipient.get("address"), str) and recipient["address"].strip():
        target = {"address": bounded_text(recipient["address"], 320),
                  "name": bounded_text(recipient.get("name") or "", 150)}
    else:
        raise EventError("payload's 'recipient' names neither a user_id nor an address")
    ids = [_id(value, "ticket_ids") for value in ticket_ids]
    total = payload.get("total", len(ids))
    if isinstance(total, bool) or not isinstance(total, int) or total < len(ids):
        raise EventError("payload's 'total' must count at least the listed tickets")
    return {"recipient": target, "ticket_ids": ids, "total": total}


def _due_soon_digest(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``due_soon`` warning, written by due-soon-scan: a digest whose tickets each come
    with the threshold they crossed (``thresholds``, in the order of ``ticket_ids``)."""
    digest = _digest(payload)
    thresholds = payload.get("thresholds")
    if not isinstance(thresholds, list) or len(thresholds) != len(digest["ticket_ids"]) \
            or not all(isinstance(text, str) for text in thresholds):
        raise EventError("payload needs 'thresholds' (the threshold each listed ticket "
                         "crossed, in the order of 'ticket_ids')")
    return {**digest, "thresholds": [bounded_text(text, MAX_LABEL) for text in thresholds]}


SUMMARY_KINDS = {"hourly": N_("Hourly summary"), "daily": N_("Daily summary"),
                 "flush": N_("Summary")}
"""What made a summary (its window's frequency, or a switch back to immediate), and the
start of its subject."""
SUMMARY_TEXT = 500
"""Characters of an item's text in a summary's payload (its in-app text, at most 400)."""


def _summary(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``summary``, written by send-summaries: its one user, what made it, and the
    events it lists (``items``: each its ticket, type, time and text, as collected when
    the event was held), with how many it covers in all."""
    recipient = payload.get("recipient")
    if not isinstance(recipient, dict) or recipient.get("user_id") is None:
        raise EventError("payload needs 'recipient' ({'user_id': N})")
    kind = payload.get("kind")
    if not isinstance(kind, str) or kind not in SUMMARY_KINDS:
        raise EventError(f"payload's 'kind' must be one of {', '.join(SUMMARY_KINDS)}")
    items = payload.get("items")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_LISTED:
        raise EventError(f"payload needs 'items' (1 to {MAX_LISTED} of them)")
    parsed = [_summary_item(item) for item in items]
    total = payload.get("total", len(parsed))
    if isinstance(total, bool) or not isinstance(total, int) or total < len(parsed):
        raise EventError("payload's 'total' must count at least the listed items")
    return {"recipient": {"user_id": _id(recipient["user_id"], "recipient.user_id")},
            "kind": kind, "items": parsed, "total": total}


def _summary_item(item: object) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise EventError("each of the payload's 'items' must be an object")
    try:
        at = datetime.fromisoformat(str(item.get("at")))
    except ValueError:
        raise EventError("an item's 'at' must be an ISO date and time") from None
    return {"ticket_id": _id(item.get("ticket_id"), "items.ticket_id"),
            "event_type": bounded_text(item.get("event_type"), MAX_LABEL),
            "at": at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at,
            "text": bounded_text(item.get("text"), SUMMARY_TEXT)}


# ------------------------------------------------------------------ rules


def _team(ctx: EventContext) -> tuple[int, ...]:
    return ctx.team_ids if ctx.project is not None and ctx.project.notify_team else ()


def ticket_created(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    audience.requester()
    audience.user(ctx.ticket.assignee_id)
    audience.users(_team(ctx))
    audience.team_ccs(on_create=True)
    audience.ticket_ccs()
    audience.admins()
    audience.users(ctx.managers, email=False)
    return audience.result()


def ticket_assigned(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    audience.user(ctx.ticket.assignee_id)
    return audience.result()


def status_changed(ctx: EventContext, settings: Settings) -> Recipients:
    audience = Audience(ctx, settings)
    if ctx.payload["new_status"] not in settings.internal_statuses:
        audience.requester()
        audience.ticket_ccs()
    audience.user(ctx.ticket.assignee_id)
    audience.users(_team(ctx))
    audience.team_ccs()
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
    audience.requester()
    audience.user(ctx.ticket.assignee_id)
    audience.users(ctx.public_commenter_ids)
    audience.team_ccs()
    audience.ticket_ccs()
    return audience.result()


def overdue_digest(ctx: EventContext, settings: Settings) -> Recipients:
    """The one recipient a digest's payload names (a user, or an address with no
    account), by email only: the rule of ``overdue``, ``due_soon`` and ``summary``."""
    audience = Audience(ctx, settings)
    recipient = ctx.payload["recipient"]
    if "user_id" in recipient:
        audience.user(recipient["user_id"], in_app=False)
    else:
        audience.address(recipient["address"], recipient["name"], in_app=False)
    return audience.result()


# ------------------------------------------------------------------ facts of the moment


def _created_facts(ticket: Ticket, payload: dict[str, Any]) -> Ticket:
    return replace(ticket, **payload)


def _assigned_facts(ticket: Ticket, payload: dict[str, Any]) -> Ticket:
    if "assignee_id" in payload:
        return replace(ticket, assignee_id=payload["assignee_id"])
    return ticket


def _status_facts(ticket: Ticket, payload: dict[str, Any]) -> Ticket:
    return replace(ticket, status=payload["new_status"])


def _as_loaded(ticket: Ticket, payload: dict[str, Any]) -> Ticket:
    return ticket


# ------------------------------------------------------------------ presentation


def _someone(ctx: EventContext, language: Language) -> str:
    actor = ctx.actor
    return actor.display_name if actor else language.gettext("Someone")


def _ticket_subject(template: str) -> Callable[[EventContext, Language], str]:
    """A ticket event's subject: ``template`` (marked with N_) in the reader's language,
    its ``{title}``, ``{number}`` and the payload's text fields filled in."""
    def subject(ctx: EventContext, language: Language) -> str:
        fields = {k: v for k, v in ctx.payload.items() if isinstance(v, str)}
        if "new_status" in fields:  # as the app shows it (the stored value in the contract)
            fields["new_status"] = ctx.status_label(fields["new_status"]) or ""
        return language.gettext(template).format(title=ctx.ticket.title,
                                                 number=ctx.ticket.number, **fields)
    return subject


def _digest_subject(ctx: EventContext, language: Language) -> str:
    if len(ctx.tickets) == 1 and ctx.payload["total"] == 1:
        return language.gettext("Overdue Ticket: {title} ({number})").format(
            title=ctx.ticket.title, number=ctx.ticket.number)
    total = ctx.payload["total"]
    return language.ngettext("Overdue Tickets: {count} ticket past due",
                             "Overdue Tickets: {count} tickets past due", total
                             ).format(count=total)


def _due_soon_subject(ctx: EventContext, language: Language) -> str:
    if len(ctx.tickets) == 1 and ctx.payload["total"] == 1:
        return language.gettext("Due Soon: {title} ({number})").format(
            title=ctx.ticket.title, number=ctx.ticket.number)
    total = ctx.payload["total"]
    return language.ngettext("Due Soon: {count} ticket", "Due Soon: {count} tickets",
                             total).format(count=total)


def _summary_subject(ctx: EventContext, language: Language) -> str:
    """"Daily summary: 5 updates on 3 tickets" (the tickets counted when every update is
    listed)."""
    items, total = ctx.payload["items"], ctx.payload["total"]
    kind = language.gettext(SUMMARY_KINDS[ctx.payload["kind"]])
    updates = language.ngettext("{count} update", "{count} updates", total).format(count=total)
    if total != len(items):
        return language.gettext("{kind}: {updates}").format(kind=kind, updates=updates)
    count = len({item["ticket_id"] for item in items})
    tickets = language.ngettext("{count} ticket", "{count} tickets", count).format(count=count)
    return language.gettext("{kind}: {updates} on {tickets}").format(
        kind=kind, updates=updates, tickets=tickets)


def no_variables(ctx: EventContext, settings: Settings, language: Language
                 ) -> dict[str, Any]:
    return {}


def ticket_variables(ctx: EventContext, settings: Settings, language: Language
                     ) -> dict[str, Any]:
    """The variables every ticket event's templates share: the ticket and the actor."""
    return {"ticket": ticket_view(ctx.ticket, ctx.users,
                                  ctx.project.name if ctx.project else None, settings,
                                  language),
            "actor_name": ctx.actor.display_name if ctx.actor else None}


def _assigned_variables(ctx: EventContext, settings: Settings, language: Language
                        ) -> dict[str, Any]:
    return {**ticket_variables(ctx, settings, language),
            "assignee_name": name_of(ctx.users, ctx.ticket.assignee_id)}


def _status_variables(ctx: EventContext, settings: Settings, language: Language
                      ) -> dict[str, Any]:
    return {**ticket_variables(ctx, settings, language),
            "old_status": ctx.status_label(ctx.payload.get("old_status")),
            "new_status": ctx.status_label(ctx.payload["new_status"])}


def _comment_variables(ctx: EventContext, settings: Settings, language: Language
                       ) -> dict[str, Any]:
    comment = ctx.comment
    assert comment is not None
    body, truncated = cut(comment.body, settings.max_text_length)
    return {**ticket_variables(ctx, settings, language), "comment": SimpleNamespace(
        body=body, body_truncated=truncated,
        author_name=name_of(ctx.users, comment.author_id, language.gettext("Someone")),
        created_at_display=language.time(comment.created_at) or "",
        is_internal=comment.is_internal)}


def _listed(ticket: Ticket, settings: Settings, language: Language, when: str, due: str
            ) -> SimpleNamespace:
    """A ticket as a digest lists it: ``when`` (how overdue, or due in how long) above
    ``due`` (its due date)."""
    return SimpleNamespace(
        number=ticket.number, title=ticket.title,
        priority=language.priority(ticket.priority, ticket.priority_label),
        priority_level=priority_level(ticket.priority, ticket.priority_label),
        status=ticket.status_label or ticket.status,
        url=ticket.links.get("staff") or settings.ticket_url(ticket.id), when=when, due=due)


def _digest_variables(ctx: EventContext, settings: Settings, language: Language
                      ) -> dict[str, Any]:
    as_of = ctx.event.created_at or datetime.now()
    return {"count": ctx.payload["total"], "tickets": [_listed(
        t, settings, language,
        when=language.overdue_for(t.due_at, as_of) if t.due_at else "",
        due=language.gettext("due %(date)s") % {"date": language.time(t.due_at)}
        if t.due_at else "") for t in ctx.tickets]}


def _due_soon_variables(ctx: EventContext, settings: Settings, language: Language
                        ) -> dict[str, Any]:
    as_of = ctx.event.created_at or datetime.now()
    return {"count": ctx.payload["total"], "tickets": [_listed(
        t, settings, language, when=language.due_in(t.due_at, as_of) if t.due_at else "",
        due=language.time(t.due_at) or "") for t in ctx.tickets]}


def _summary_variables(ctx: EventContext, settings: Settings, language: Language
                       ) -> dict[str, Any]:
    """The updates grouped by ticket, the ticket with the newest update first, and each
    ticket's updates newest first."""
    tickets = {t.id: t for t in ctx.tickets}
    groups: dict[int, list[SimpleNamespace]] = {}
    for item in sorted(ctx.payload["items"], key=lambda item: item["at"], reverse=True):
        groups.setdefault(item["ticket_id"], []).append(SimpleNamespace(
            text=item["text"], event_type=item["event_type"],
            at_display=language.time(item["at"]) or ""))
    return {"count": ctx.payload["total"], "listed": len(ctx.payload["items"]),
            "kind": ctx.payload["kind"], "groups": [_summary_group(
                tickets.get(ticket_id), ticket_id, updates, settings)
                for ticket_id, updates in groups.items()]}


def _summary_group(ticket: Ticket | None, ticket_id: int, updates: list[SimpleNamespace],
                   settings: Settings) -> SimpleNamespace:
    """One ticket's part of a summary; a ticket deleted meanwhile shows by its id."""
    return SimpleNamespace(
        number=ticket.number if ticket else f"#{ticket_id}",
        title=ticket.title if ticket else "",
        status=(ticket.status_label or ticket.status) if ticket else "",
        url=(ticket.links.get("staff") if ticket else None) or settings.ticket_url(ticket_id),
        updates=updates)


def _created_in_app(ctx: EventContext, language: Language) -> str:
    return language.gettext("{someone} opened {number}: {title}").format(
        someone=_someone(ctx, language), number=ctx.ticket.number, title=ctx.ticket.title)


def _assigned_in_app(ctx: EventContext, language: Language) -> str:
    return language.gettext("{number} was assigned by {someone}").format(
        number=ctx.ticket.number, someone=_someone(ctx, language))


def _status_in_app(ctx: EventContext, language: Language) -> str:
    return language.gettext("{someone} changed the status of {number} to {status}").format(
        someone=_someone(ctx, language), number=ctx.ticket.number,
        status=ctx.status_label(ctx.payload["new_status"]))


def _comment_in_app(ctx: EventContext, language: Language) -> str:
    assert ctx.comment is not None
    text = language.gettext("{someone} added an internal note: {text}") \
        if ctx.comment.is_internal else language.gettext("{someone} added a comment: {text}")
    return text.format(someone=_someone(ctx, language), text=cut(ctx.comment.body, 280)[0])


def _about_one_ticket(ctx: EventContext) -> bool:
    return True


def _digest_about_one_ticket(ctx: EventContext) -> bool:
    return ctx.payload["total"] == 1


def _never(ctx: EventContext) -> bool:
    return False


def _no_ids(payload: dict[str, Any]) -> tuple[int, ...]:
    return ()


def _assignee_ids(payload: dict[str, Any]) -> tuple[int, ...]:
    return tuple(i for i in (payload.get("assignee_id"), payload.get("previous_assignee_id"))
                 if i is not None)


def _digest_user_ids(payload: dict[str, Any]) -> tuple[int, ...]:
    user_id = payload["recipient"].get("user_id")
    return (user_id,) if user_id is not None else ()


def _digest_ticket_ids(payload: dict[str, Any]) -> tuple[int, ...]:
    return tuple(payload["ticket_ids"])


def _summary_ticket_ids(payload: dict[str, Any]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(item["ticket_id"] for item in payload["items"]))


# ------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class EventType:
    """Everything that makes one kind of event."""

    rule: Callable[[EventContext, Settings], Recipients]
    """Who is told, on which channel (pure)."""
    subject: Callable[[EventContext, Language], str]
    """The subject in the reader's language (English: the contract's subjects)."""
    template: str
    """The template pair ``templates/emails/<template>.html|.txt``."""
    variables: Callable[[EventContext, Settings, Language], dict[str, Any]] = \
        ticket_variables
    """The template variables of this type, shared by all its recipients who read one
    language."""
    parse_payload: Callable[[dict[str, Any]], dict[str, Any]] = no_payload
    facts: Callable[[Ticket, dict[str, Any]], Ticket] = _as_loaded
    """The ticket as it was at the event, from the facts its payload carries."""
    needs: frozenset[Need] = frozenset()
    in_app: Callable[[EventContext, Language], str] | None = None
    """The in-app notification's body in the user's language (its title is the subject);
    None: no in-app rows."""
    about_one_ticket: Callable[[EventContext], bool] = _about_one_ticket
    """Whether the email threads with its ticket and names it in ``X-ITSM-Ticket``."""
    starts_thread: bool = False
    user_ids: Callable[[dict[str, Any]], tuple[int, ...]] = _no_ids
    """Users the payload names, to load besides the actor and the ticket's people."""
    ticket_ids: Callable[[dict[str, Any]], tuple[int, ...]] = _no_ids
    """Tickets the payload names (a digest's), to load besides the event's ticket."""
    summarized: bool = False
    """Whether a user who asked for hourly or daily summaries gets this event in the
    next summary instead of at once (the ticket events; never a digest or a warning)."""


EVENT_TYPES: dict[str, EventType] = {
    "ticket_created": EventType(
        rule=ticket_created, subject=_ticket_subject(N_("New Ticket: {title} ({number})")),
        template="ticket_created", parse_payload=_creation, facts=_created_facts,
        needs=frozenset({Need.TEAM, Need.MANAGERS}), in_app=_created_in_app,
        starts_thread=True, user_ids=_assignee_ids, summarized=True),
    "ticket_assigned": EventType(
        rule=ticket_assigned, subject=_ticket_subject(N_("Ticket Assigned: {title} ({number})")),
        template="ticket_assigned", variables=_assigned_variables,
        parse_payload=_assignment, facts=_assigned_facts, needs=frozenset({Need.TEAM}),
        in_app=_assigned_in_app, user_ids=_assignee_ids, summarized=True),
    "status_changed": EventType(
        rule=status_changed,
        subject=_ticket_subject(N_("Ticket Status Changed: {title} → {new_status}")),
        template="status_changed", variables=_status_variables,
        parse_payload=_status_change, facts=_status_facts, needs=frozenset({Need.TEAM}),
        in_app=_status_in_app, summarized=True),
    "comment_added": EventType(
        rule=comment_added,
        subject=_ticket_subject(N_("New Comment on Ticket: {title} ({number})")),
        template="comment_added", variables=_comment_variables, parse_payload=_comment,
        needs=frozenset({Need.COMMENT, Need.TEAM, Need.COMMENTERS}), in_app=_comment_in_app,
        summarized=True),
    "overdue": EventType(
        rule=overdue_digest, subject=_digest_subject, template="overdue_alert",
        variables=_digest_variables, parse_payload=_digest,
        about_one_ticket=_digest_about_one_ticket, user_ids=_digest_user_ids,
        ticket_ids=_digest_ticket_ids),
    "due_soon": EventType(
        rule=overdue_digest, subject=_due_soon_subject, template="due_soon",
        variables=_due_soon_variables, parse_payload=_due_soon_digest,
        about_one_ticket=_digest_about_one_ticket, user_ids=_digest_user_ids,
        ticket_ids=_digest_ticket_ids),
    "summary": EventType(
        rule=overdue_digest, subject=_summary_subject, template="summary",
        variables=_summary_variables, parse_payload=_summary, about_one_ticket=_never,
        user_ids=_digest_user_ids, ticket_ids=_summary_ticket_ids),
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
    parsed = spec.parse_payload(data)
    if data.get("actor_email") is not None:
        parsed["actor_email"] = _actor_email(data["actor_email"])
    return parsed


def _actor_email(value: object) -> str:
    """``actor_email``, which any event may carry: the address of an actor without an
    account (a django-helpdesk submitter who replied by mail), who is not told either."""
    if not isinstance(value, str) or address_problem(value.strip()):
        raise EventError(f"payload field 'actor_email' must be an email address, got "
                         f"{bounded_text(repr(value), 80)}")
    return value.strip().lower()


def resolve(ctx: EventContext, settings: Settings) -> Recipients:
    """Who must hear of this event, on which channel."""
    return event_type(ctx.event.event_type).rule(ctx, settings)
