"""Outbox events from django-helpdesk 2.6's own signals (docs/sources/django-helpdesk.md §8).

Connected by the app's ``ready()`` when ``helpdesk`` is installed (setting
``ITSM_NOTIFY_HELPDESK_SIGNALS``: None = so, True = required, False = never), or by
:func:`connect`.

* ``new_ticket_done`` (staff form, public form, e-mail intake) → ``ticket_created``
  with the status, priority and owner the ticket was opened with; the actor is the
  author of its first follow-up (None for the public form and e-mail).
* ``update_ticket_done`` (``update_ticket``: the staff "respond" form, "take", "accept
  and close", the REST API; and e-mailed replies) → one event per fact, in this order:

  - ``ticket_assigned`` when the owner changed: ``assignee_id`` (None when the ticket
    was unassigned) and ``previous_assignee_id``;
  - ``status_changed`` when the status changed: ``old_status``, ``new_status`` as
    stored (django-helpdesk's integers);
  - ``comment_added`` when the follow-up has text, public or private:
    ``comment_id`` (the follow-up's id) and ``is_internal`` (not public); the engine
    decides who hears of a private one. A follow-up with no text (a bare status
    change or assignment) is not a comment.

  The actor is the follow-up's author: None for e-mailed replies and for non-staff
  users (django-helpdesk records no author for them).

"Before" comes from a ``pre_save`` receiver on ``Ticket``: the status and owner as
stored, read from the database before the first save of that ticket object since its
last event. ``update_ticket`` saves a ticket twice when the status changes (once in
``get_and_set_ticket_status``, once at the end), and an e-mailed reply saves the
reopened ticket before writing the follow-up; only the first save has the state
before. django-helpdesk's change log is no help: it stores translated labels.

**Transactions.** django-helpdesk opens none: its forms and ``update_ticket`` save in
autocommit unless the caller holds a transaction, and the signals come after the
ticket, the follow-up and django-helpdesk's own mail. The receivers write in the
current transaction, so:

- in a web request, set ``ATOMIC_REQUESTS = True`` on the database: then the change
  and its events commit together, and a failure writing an event rolls the change
  back;
- without it (and always for ``get_email``, a management command), the change is
  committed before the events are written; the events of one follow-up are still
  written together (one transaction), but a crash between the two loses them.

A receiver's error is not swallowed: django-helpdesk's caller sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models.signals import pre_save

from .outbox import notify

#: where the state before a save is kept on a ticket object until its event is written
_STORED_BEFORE = "_itsm_notify_stored_before"


@dataclass(frozen=True)
class TicketState:
    """A ticket's status and owner, as stored."""

    status: Any
    assignee_id: int | None


def followup_events(before: TicketState, after: TicketState, *, followup_id: int,
                    comment: str | None, public: bool) -> list[tuple[str, dict[str, Any]]]:
    """The events of one follow-up: ``(event_type, payload)``, one per fact."""
    events: list[tuple[str, dict[str, Any]]] = []
    if after.assignee_id != before.assignee_id:
        events.append(("ticket_assigned", {"assignee_id": after.assignee_id,
                                           "previous_assignee_id": before.assignee_id}))
    if after.status != before.status:
        events.append(("status_changed", {"old_status": before.status,
                                          "new_status": after.status}))
    if comment and comment.strip():
        events.append(("comment_added", {"comment_id": followup_id,
                                         "is_internal": not public}))
    return events


def _stored_state(ticket: Any) -> TicketState:
    """The ticket object's status and owner, as the database stores them (a form may
    have left the text ``"3"`` in an integer field)."""
    meta = ticket._meta
    status = meta.get_field("status").to_python(ticket.status)
    assignee_id = meta.get_field("assigned_to").to_python(ticket.assigned_to_id)
    return TicketState(status, assignee_id)


def remember_state_before_save(sender: Any, instance: Any, raw: bool = False,
                               using: str | None = None, **kwargs: Any) -> None:
    """``pre_save`` on ``Ticket``: keep the stored status and owner before the first
    save since the ticket object's last event."""
    if raw or instance._state.adding or instance.pk is None:
        return
    if _STORED_BEFORE in instance.__dict__:
        return
    row = (type(instance)._base_manager.using(using).filter(pk=instance.pk)
           .values_list("status", "assigned_to_id").first())
    if row is not None:
        instance.__dict__[_STORED_BEFORE] = TicketState(*row)


def on_new_ticket(sender: Any, ticket: Any, **kwargs: Any) -> None:
    """``new_ticket_done``: ``ticket_created`` with the ticket as it was opened."""
    from helpdesk.models import FollowUp

    ticket.__dict__.pop(_STORED_BEFORE, None)
    state = _stored_state(ticket)
    using = ticket._state.db
    author_id = (FollowUp.objects.using(using).filter(ticket_id=ticket.pk).order_by("id")
                 .values_list("user_id", flat=True).first())
    notify("ticket_created", ticket, author_id, status=state.status,
           priority=ticket._meta.get_field("priority").to_python(ticket.priority),
           assignee_id=state.assignee_id)


def on_ticket_updated(sender: Any, followup: Any, **kwargs: Any) -> None:
    """``update_ticket_done``: an event per fact of the follow-up (module docstring)."""
    ticket = followup.ticket
    after = _stored_state(ticket)
    before = ticket.__dict__.pop(_STORED_BEFORE, None) or after
    # the staff form leaves the posted text ("1") in public; stored, it is a boolean
    public = followup._meta.get_field("public").to_python(followup.public)
    events = followup_events(before, after, followup_id=followup.pk,
                             comment=followup.comment, public=public)
    with transaction.atomic(using=ticket._state.db, savepoint=False):
        for event_type, payload in events:
            notify(event_type, ticket, followup.user_id, **payload)


def connect() -> None:
    """Connect the receivers (idempotent)."""
    from helpdesk.models import Ticket
    from helpdesk.signals import new_ticket_done, update_ticket_done

    pre_save.connect(remember_state_before_save, sender=Ticket,
                     dispatch_uid="itsm_notify.helpdesk.pre_save")
    new_ticket_done.connect(on_new_ticket, dispatch_uid="itsm_notify.helpdesk.new_ticket")
    update_ticket_done.connect(on_ticket_updated,
                               dispatch_uid="itsm_notify.helpdesk.update_ticket")


def disconnect() -> None:
    """Disconnect the receivers."""
    from helpdesk.models import Ticket
    from helpdesk.signals import new_ticket_done, update_ticket_done

    pre_save.disconnect(sender=Ticket, dispatch_uid="itsm_notify.helpdesk.pre_save")
    new_ticket_done.disconnect(dispatch_uid="itsm_notify.helpdesk.new_ticket")
    update_ticket_done.disconnect(dispatch_uid="itsm_notify.helpdesk.update_ticket")
