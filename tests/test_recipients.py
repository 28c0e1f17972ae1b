"""Who is told what (contract §2): the pure recipient rules, no database, no socket.

Each test builds an ``EventContext`` by hand, as the context loader would, and checks
the exact email addresses and in-app user ids ``resolve`` returns.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from itsm_notify.config import Settings, load_settings
from itsm_notify.errors import EventError
from itsm_notify.events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import EVENT_TYPES, parse_payload, resolve
from itsm_notify.states import Channel

# The cast: ids are stable so expectations read plainly.
ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA, HANK = 1, 2, 3, 4, 5, 6, 7, 8
USERS = {
    ALICE: User(ALICE, "alice", "alice@example.com", "Alice", "Lopez"),       # requester
    BOB: User(BOB, "bob", "bob@example.com", "Bob", "Okafor"),                # assignee, team
    CAROL: User(CAROL, "carol", "carol@example.com", "Carol", "Nguyen"),      # team
    DAVE: User(DAVE, "dave", "dave@example.com", "Dave", "Schmidt", is_manager=True),
    ERIN: User(ERIN, "erin", "erin@example.com", "Erin", "Kowalski"),         # commenter
    FRANK: User(FRANK, "frank", "frank@example.com", "Frank", "Meyer"),       # other agent
    GINA: User(GINA, "gina", "gina@example.com", "Gina", is_active=False),    # inactive
    HANK: User(HANK, "hank", None, "Hank"),                                   # no address
}
TICKET = Ticket(id=7, number="TKT-007", title="VPN drops", description="It drops.",
                status="open", priority="high", requester_id=ALICE, assignee_id=BOB,
                project_id=1, due_at=None, created_at=None)
TEAM = (BOB, CAROL)


def settings(**overrides: Any) -> Settings:
    """Settings from defaults and ``overrides`` only (no environment, no files)."""
    return load_settings(overrides, environ={}, dotenv_path=None)


def context(event_type: str, payload: dict[str, Any] | None = None, *, actor: int | None = None,
            ticket: Ticket = TICKET, notify_team: bool = True, team: tuple[int, ...] = TEAM,
            managers: tuple[int, ...] = (DAVE,), comment: Comment | None = None,
            commenters: tuple[int, ...] = (), users: dict[int, User] | None = None,
            opted_out: frozenset[tuple[int, str]] = frozenset()) -> EventContext:
    """An EventContext as the loader builds it, with the payload parsed for real and the
    facts it carries applied to the ticket."""
    raw = json.dumps(payload or {})
    event = OutboxEvent(id=100, event_type=event_type, ticket_id=ticket.id, actor_id=actor,
                        payload=raw)
    parsed = parse_payload(event_type, raw)
    project = Project(1, "Network", notify_team) if ticket.project_id else None
    people = USERS if users is None else users
    return EventContext(event=event, payload=parsed,
                        ticket=EVENT_TYPES[event_type].facts(ticket, parsed), users=people,
                        project=project, team_ids=team if project else (), manager_ids=managers,
                        comment=comment, public_commenter_ids=commenters,
                        admin_accounts={u.email.lower(): u for u in people.values()
                                        if u.is_active and u.email},
                        opted_out=opted_out)


def comment(author: int, *, internal: bool = False) -> Comment:
    return Comment(id=50, ticket_id=TICKET.id, author_id=author, body="A comment",
                   is_internal=internal, created_at=None)


def emails(ctx: EventContext, s: Settings | None = None) -> list[str]:
    return [r.address for r in resolve(ctx, s or settings()).email]


def in_app(ctx: EventContext, s: Settings | None = None) -> set[int]:
    recipients = resolve(ctx, s or settings()).in_app
    assert len(recipients) == len(set(recipients)), "one in-app row per user"
    return set(recipients)


def addr(*user_ids: int) -> set[str]:
    return {USERS[i].email or "" for i in user_ids}


# ------------------------------------------------------------------ ticket_created


def test_ticket_created_tells_requester_assignee_team_admins_and_managers() -> None:
    s = settings(admins="Ops Team <ops@example.com>, noc@example.com")
    ctx = context("ticket_created", actor=FRANK)
    recipients = resolve(ctx, s)
    assert [r.address for r in recipients.email] == [
        "alice@example.com", "bob@example.com", "carol@example.com",
        "ops@example.com", "noc@example.com"]
    # ADMINS are addresses, not users: email only, and named as configured.
    ops = recipients.email[3]
    assert (ops.name, ops.user_id) == ("Ops Team", None)
    assert recipients.email[0].user_id == ALICE and recipients.email[0].first_name == "Alice"
    # Managers in-app only: dave has no email, but an in-app row.
    assert set(recipients.in_app) == {ALICE, BOB, CAROL, DAVE}


def test_ticket_created_without_notify_team_leaves_the_team_out() -> None:
    ctx = context("ticket_created", actor=FRANK, notify_team=False)
    assert set(emails(ctx)) == addr(ALICE, BOB)
    assert in_app(ctx) == {ALICE, BOB, DAVE}


def test_ticket_created_manager_who_is_also_assignee_gets_email_and_one_row() -> None:
    ticket = replace(TICKET, assignee_id=DAVE, project_id=None)
    ctx = context("ticket_created", actor=ALICE, ticket=ticket)
    assert emails(ctx) == ["dave@example.com"]
    assert in_app(ctx) == {DAVE}


def test_ticket_created_unassigned_without_project() -> None:
    ticket = replace(TICKET, assignee_id=None, project_id=None)
    ctx = context("ticket_created", actor=None, ticket=ticket, managers=())
    assert emails(ctx) == ["alice@example.com"]
    assert in_app(ctx) == {ALICE}


# ----------------------------------------------------------------- ticket_assigned


def test_ticket_assigned_tells_only_the_new_assignee_from_the_payload() -> None:
    ctx = context("ticket_assigned", {"assignee_id": FRANK}, actor=DAVE)
    assert emails(ctx) == ["frank@example.com"]
    assert in_app(ctx) == {FRANK}


def test_ticket_assigned_defaults_to_the_tickets_assignee() -> None:
    ctx = context("ticket_assigned", {}, actor=DAVE)
    assert emails(ctx) == ["bob@example.com"]
    assert in_app(ctx) == {BOB}


def test_ticket_assigned_to_oneself_tells_nobody() -> None:
    ctx = context("ticket_assigned", {"assignee_id": FRANK}, actor=FRANK)
    assert emails(ctx) == [] and in_app(ctx) == set()


# ------------------------------------------------------------------ status_changed


def test_status_changed_to_a_public_status_tells_requester_assignee_and_team() -> None:
    s = settings(internal_statuses="triage, waiting_on_vendor")
    ctx = context("status_changed", {"old_status": "open", "new_status": "in_progress"},
                  actor=FRANK)
    assert emails(ctx, s) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    assert in_app(ctx, s) == {ALICE, BOB, CAROL}
    # The manager is not told of status changes.
    assert DAVE not in in_app(ctx, s)


@pytest.mark.parametrize("status", ["triage", "waiting_on_vendor"])
def test_status_changed_to_an_internal_status_leaves_the_requester_out(status: str) -> None:
    s = settings(internal_statuses="triage, waiting_on_vendor")
    ctx = context("status_changed", {"old_status": "open", "new_status": status}, actor=FRANK)
    assert emails(ctx, s) == ["bob@example.com", "carol@example.com"]
    assert in_app(ctx, s) == {BOB, CAROL}


def test_status_changed_without_notify_team() -> None:
    ctx = context("status_changed", {"new_status": "resolved"}, actor=FRANK, notify_team=False)
    assert emails(ctx) == ["alice@example.com", "bob@example.com"]
    assert in_app(ctx) == {ALICE, BOB}


# ------------------------------------------------------------------- comment_added


def test_public_comment_tells_requester_assignee_and_other_public_commenters() -> None:
    ctx = context("comment_added", {"comment_id": 50}, actor=ERIN, comment=comment(ERIN),
                  commenters=(BOB, ERIN, FRANK))
    # erin wrote it (actor); frank commented publicly before; carol (team, no public
    # comment) and dave (manager) are not told of comments.
    assert emails(ctx) == ["alice@example.com", "bob@example.com", "frank@example.com"]
    assert in_app(ctx) == {ALICE, BOB, FRANK}


def test_public_comment_by_the_requester() -> None:
    ctx = context("comment_added", {"comment_id": 50}, actor=ALICE, comment=comment(ALICE),
                  commenters=(ALICE,))
    assert emails(ctx) == ["bob@example.com"]
    assert in_app(ctx) == {BOB}


def test_internal_comment_is_never_emailed_and_only_staff_see_it_in_app() -> None:
    s = settings(admins="ops@example.com", notify_actor=True)
    ctx = context("comment_added", {"comment_id": 50}, actor=FRANK,
                  comment=comment(FRANK, internal=True), commenters=(ERIN,))
    recipients = resolve(ctx, s)
    assert recipients.email == ()
    # assignee and project members; not the requester, not public commenters, not
    # managers, not admins; the actor here only because notify_actor is on.
    assert set(recipients.in_app) == {BOB, CAROL}


def test_internal_comment_reaches_the_team_even_without_notify_team() -> None:
    ctx = context("comment_added", {"comment_id": 50}, actor=FRANK, notify_team=False,
                  comment=comment(FRANK, internal=True))
    assert emails(ctx) == []
    assert in_app(ctx) == {BOB, CAROL}


def test_internal_comment_reaches_the_requester_only_when_staff() -> None:
    staff_requester = replace(TICKET, requester_id=CAROL)
    ctx = context("comment_added", {"comment_id": 50}, actor=FRANK, ticket=staff_requester,
                  comment=comment(FRANK, internal=True))
    assert in_app(ctx) == {BOB, CAROL}
    outsider = context("comment_added", {"comment_id": 50}, actor=FRANK, team=(BOB,),
                       comment=comment(FRANK, internal=True))
    assert ALICE not in in_app(outsider) and in_app(outsider) == {BOB}


# ----------------------------------------------------------------------- the actor


def test_actor_is_excluded_by_default_and_included_with_notify_actor() -> None:
    ctx = context("status_changed", {"new_status": "in_progress"}, actor=BOB)
    assert emails(ctx) == ["alice@example.com", "carol@example.com"]
    assert in_app(ctx) == {ALICE, CAROL}
    s = settings(notify_actor=True)
    assert emails(ctx, s) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    assert in_app(ctx, s) == {ALICE, BOB, CAROL}


def test_actor_excluded_by_address_too_when_also_an_admin() -> None:
    s = settings(admins="Bob Okafor <BOB@example.com>, ops@example.com")
    ctx = context("ticket_created", actor=BOB, notify_team=False)
    assert emails(ctx, s) == ["alice@example.com", "ops@example.com"]


# --------------------------------------------------------------------- de-duplication


def test_one_email_per_address_case_insensitively() -> None:
    users = dict(USERS)
    users[CAROL] = replace(USERS[CAROL], email="Alice@Example.COM ")  # a shared mailbox
    s = settings(admins="Help <ALICE@example.com>, ops@example.com, Ops <OPS@EXAMPLE.COM>")
    ctx = context("ticket_created", actor=FRANK, users=users)
    recipients = resolve(ctx, s)
    assert [r.key for r in recipients.email] == [
        "alice@example.com", "bob@example.com", "ops@example.com"]
    # The first holder of an address keeps it: the requester, a user.
    assert recipients.email[0].user_id == ALICE
    # Both users still get their own in-app row.
    assert set(recipients.in_app) == {ALICE, BOB, CAROL, DAVE}


def test_one_email_and_one_row_per_user_in_several_roles() -> None:
    # bob is the requester, the assignee, a team member and a public commenter.
    ticket = replace(TICKET, requester_id=BOB)
    ctx = context("comment_added", {"comment_id": 50}, actor=ERIN, ticket=ticket,
                  comment=comment(ERIN), commenters=(BOB, BOB, ERIN))
    recipients = resolve(ctx, settings())
    assert [r.address for r in recipients.email] == ["bob@example.com"]
    assert recipients.in_app == (BOB,)


# ----------------------------------------------------- inactive, no address, opt-out


def test_inactive_users_get_nothing_and_users_without_address_only_in_app() -> None:
    ticket = replace(TICKET, requester_id=GINA, assignee_id=HANK, project_id=None)
    ctx = context("ticket_created", actor=FRANK, ticket=ticket, managers=())
    recipients = resolve(ctx, settings())
    assert recipients.email == ()
    assert set(recipients.in_app) == {HANK}


def test_unknown_user_ids_are_skipped() -> None:
    ctx = context("ticket_assigned", {"assignee_id": 999}, actor=DAVE)
    assert emails(ctx) == [] and in_app(ctx) == set()


def test_opted_out_channels_are_honoured_per_channel() -> None:
    ctx = context("ticket_created", actor=FRANK,
                  opted_out=frozenset({(ALICE, Channel.EMAIL), (CAROL, Channel.IN_APP),
                                       (DAVE, Channel.IN_APP)}))
    assert emails(ctx) == ["bob@example.com", "carol@example.com"]
    assert in_app(ctx) == {ALICE, BOB}


# -------------------------------------------------------------------- parse_payload


def test_parse_payload_accepts_the_contract_payloads() -> None:
    assert parse_payload("ticket_created", "{}") == {}
    assert parse_payload("ticket_created", None) == {}
    assert parse_payload("ticket_created", "  ") == {}
    assert parse_payload("ticket_assigned", '{"assignee_id": 4}') == {"assignee_id": 4}
    assert parse_payload("ticket_assigned", None) == {}  # the ticket's assignee, as loaded
    assert parse_payload("status_changed", '{"old_status": "open", "new_status": "done"}') \
        == {"old_status": "open", "new_status": "done"}
    assert parse_payload("status_changed", '{"new_status": "done"}') \
        == {"old_status": None, "new_status": "done"}
    assert parse_payload("comment_added", '{"comment_id": 12, "extra": 1}') == {"comment_id": 12}


@pytest.mark.parametrize(("event_type", "payload", "message"), [
    ("ticket_exploded", "{}", "unknown event type 'ticket_exploded'"),
    ("", "{}", "unknown event type ''"),
    ("comment_added", "{not json", "payload is not valid JSON"),
    ("ticket_created", "[1, 2]", "payload must be a JSON object, got list"),
    ("ticket_created", '"text"', "payload must be a JSON object, got str"),
    ("ticket_created", "3", "payload must be a JSON object, got int"),
    ("comment_added", "{}", "payload needs 'comment_id'"),
    ("comment_added", None, "payload needs 'comment_id'"),
    ("comment_added", '{"comment_id": "12"}', "'comment_id' must be a whole number"),
    ("comment_added", '{"comment_id": true}', "'comment_id' must be a whole number"),
    ("comment_added", '{"comment_id": 1.5}', "'comment_id' must be a whole number"),
    ("ticket_assigned", '{"assignee_id": "bob"}', "'assignee_id' must be a whole number"),
    ("status_changed", '{"old_status": "open"}', "payload needs 'new_status'"),
    ("status_changed", '{"new_status": "  "}', "payload needs 'new_status'"),
    ("status_changed", '{"new_status": [3]}', "must be text or a whole number"),
    ("status_changed", '{"new_status": "x", "old_status": true}', "must be text or a whole"),
])
def test_parse_payload_refuses_with_a_readable_reason(event_type: str, payload: str | None,
                                                      message: str) -> None:
    with pytest.raises(EventError) as info:
        parse_payload(event_type, payload)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_resolve_refuses_an_unknown_event_type() -> None:
    ctx = context("ticket_created", actor=FRANK)
    bad = replace(ctx, event=replace(ctx.event, event_type="nope"))
    with pytest.raises(EventError, match="unknown event type 'nope'"):
        resolve(bad, settings())


def test_an_admin_address_with_an_account_gets_in_app_too() -> None:
    """Issue 2: ADMINS get email and in-app; in-app needs a user account."""
    settings = load_settings({"admins": "Ops <OPS@example.com>, Dev <dev@example.com>"},
                             environ={}, dotenv_path=None)
    users = {1: User(1, "req", "req@example.com"), 9: User(9, "ops", "ops@example.com", "Olga")}
    ticket = Ticket(1, "TKT-1", "t", "", "open", "low", 1, None, None, None, None)
    ctx = EventContext(event=OutboxEvent(1, "ticket_created", 1, None, None), payload={},
                       ticket=ticket, users=users, manager_ids=(),
                       admin_accounts={"ops@example.com": users[9]})
    result = resolve(ctx, settings)
    assert [r.key for r in result.email] == ["req@example.com", "ops@example.com",
                                             "dev@example.com"]
    assert result.in_app == (1, 9)
    assert [r.user_id for r in result.email] == [1, 9, None]
