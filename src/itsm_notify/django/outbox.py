"""``notify()``: one outbox row, written through Django's ORM in the caller's transaction.

::

    from django.db import transaction
    from itsm_notify.django import notify

    with transaction.atomic():          # the change and its event commit together
        old = ticket.status
        ticket.status = new
        ticket.save()
        notify("status_changed", ticket, request.user, old_status=old, new_status=new)

The payload carries what was true when the event happened (issue 14 §4, "event-time
facts"), values as the app stores them (an integer status stays an integer, a code
like ``"prog"`` stays text), so the event is told as it happened, not as the ticket
looks when ``send-pending`` runs a minute later. The keys per event type
(:data:`PAYLOAD_KEYS`):

================== ======================================================================
event type         payload keys (all optional unless *required*)
================== ======================================================================
``ticket_created`` ``status``, ``priority`` (as stored), ``assignee_id`` (the owner when it
                   was opened, or None)
``ticket_assigned`` ``assignee_id`` (the new owner; None when the ticket was unassigned),
                   ``previous_assignee_id`` (the owner before, or None)
``status_changed`` ``new_status`` (*required*), ``old_status`` (as stored)
``comment_added``  ``comment_id`` (*required*), ``is_internal`` (True for a staff-only
                   note; the engine decides who hears of it)
================== ======================================================================

A key not listed, a missing required key, or a value of the wrong kind is a
``TypeError``, as a wrong keyword argument would be; an unknown event type is a
``ValueError``. The row goes to the database the ticket was loaded from (Django's
router decides, with the ticket as the hint), where the caller's transaction is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: the largest value of the outbox's ``ticket_id`` and ``actor_id`` (INTEGER columns)
MAX_COLUMN_ID = 2**31 - 1
#: the largest id a payload may name (the engine's bound)
MAX_PAYLOAD_ID = 2**63 - 1

Kind = Literal["id", "value", "flag"]


@dataclass(frozen=True)
class PayloadKey:
    """What a payload key holds: ``id`` (a row id, or a model instance whose pk is
    taken, or None), ``value`` (a status or priority as stored: text or a whole
    number, or None) or ``flag`` (True or False)."""

    kind: Kind
    required: bool = False


PAYLOAD_KEYS: Mapping[str, Mapping[str, PayloadKey]] = {
    "ticket_created": {"status": PayloadKey("value"), "priority": PayloadKey("value"),
                       "assignee_id": PayloadKey("id")},
    "ticket_assigned": {"assignee_id": PayloadKey("id"),
                        "previous_assignee_id": PayloadKey("id")},
    "status_changed": {"old_status": PayloadKey("value"),
                       "new_status": PayloadKey("value", required=True)},
    "comment_added": {"comment_id": PayloadKey("id", required=True),
                      "is_internal": PayloadKey("flag")},
}


def _pk_of(value: Any) -> Any:
    """A model instance's primary key; anything else as it is."""
    meta = getattr(value, "_meta", None)
    if meta is not None and hasattr(value, "pk"):
        if value.pk is None:
            raise ValueError(f"{meta.label} has no primary key yet: save it before notify()")
        return value.pk
    return value


def _payload_value(event_type: str, key: str, spec: PayloadKey, value: Any) -> Any:
    where = f"notify({event_type!r}): payload field {key!r}"
    if spec.kind == "id":
        value = _pk_of(value)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be an id (a whole number), a saved model "
                            f"instance or None, not {type(value).__name__}")
        if not 0 < value <= MAX_PAYLOAD_ID:
            raise ValueError(f"{where} is not an id (1 to 2**63-1): {value}")
        return value
    if spec.kind == "flag":
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be True or False, not {type(value).__name__}")
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(f"{where} is not valid Unicode text (a lone surrogate), so it "
                            "cannot be stored as JSON") from None
        return value
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{where} must be the value as the app stores it (text or a whole "
                    f"number), not {type(value).__name__}")


def encode_payload(event_type: str, payload: Mapping[str, Any]) -> str:
    """The JSON text of ``event_type``'s ``payload``, checked against :data:`PAYLOAD_KEYS`."""
    if event_type not in PAYLOAD_KEYS:
        raise ValueError(f"notify(): unknown event type {event_type!r}; the known ones are "
                         f"{', '.join(PAYLOAD_KEYS)}")
    keys = PAYLOAD_KEYS[event_type]
    unknown = sorted(set(payload) - set(keys))
    if unknown:
        raise TypeError(f"notify({event_type!r}) got unexpected payload field "
                        f"{unknown[0]!r}; its fields are {', '.join(keys)}")
    missing = [key for key, spec in keys.items() if spec.required and key not in payload]
    if missing:
        raise TypeError(f"notify({event_type!r}) needs the payload field {missing[0]!r}")
    checked = {key: _payload_value(event_type, key, keys[key], value)
               for key, value in payload.items()}
    for key, spec in keys.items():
        if spec.required and checked[key] is None:
            raise TypeError(f"notify({event_type!r}): payload field {key!r} cannot be None")
    return json.dumps(checked, ensure_ascii=False, allow_nan=False, sort_keys=True)


def _column_id(what: str, value: Any, *, optional: bool) -> int | None:
    """The id of a ticket or actor (a model instance or an id) for an INTEGER column."""
    if optional and (value is None or getattr(value, "is_anonymous", False) is True):
        return None  # a system event, or request.user when nobody is logged in
    value = _pk_of(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"notify(): the {what} must be a model instance or its id (a whole "
                        f"number){' or None' if optional else ''}, not {type(value).__name__}")
    if not 0 < value <= MAX_COLUMN_ID:
        raise ValueError(f"notify(): the {what} id {value} does not fit the outbox's "
                         "INTEGER column (1 to 2**31-1)")
    return value


def notify(event_type: str, ticket: Any, actor: Any = None, **payload: Any) -> int:
    """Write one ``event_type`` row for ``ticket`` into the outbox; its id.

    ``ticket`` is a model instance or its id; ``actor`` the user who did it (an
    instance, an id, or None for a system event or an anonymous visitor); ``payload``
    the event-time facts of :data:`PAYLOAD_KEYS`. The row is written with the ORM in
    the current transaction of the ticket's database: inside ``transaction.atomic()``
    it commits or rolls back with the change; in autocommit it is committed at once.
    """
    from django.db import router

    from .models import OutboxEvent

    text = encode_payload(event_type, payload)
    ticket_id = _column_id("ticket", ticket, optional=False)
    actor_id = _column_id("actor", actor, optional=True)
    hints = {"instance": ticket} if hasattr(ticket, "_state") else {}
    using = router.db_for_write(OutboxEvent, **hints)
    row = OutboxEvent.objects.using(using).create(
        event_type=event_type, ticket_id=ticket_id, actor_id=actor_id, payload=text)
    return int(row.pk)
