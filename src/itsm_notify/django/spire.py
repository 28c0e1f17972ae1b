"""Outbox events from django-spire 1.3's help desk (docs/sources/django-spire.md §3).

Connected by the app's ``ready()`` when ``django_spire.help_desk`` is installed (setting
``ITSM_NOTIFY_SPIRE_SIGNALS``: None = so, True = required, False = never), or by
:func:`connect`.

spire sends no signal of its own, so a ``post_save`` receiver on ``HelpDeskTicket``
with ``created=True`` writes ``ticket_created`` (status and priority as stored, the
actor being ``created_by``). spire's service saves the ticket inside
``transaction.atomic``, so the event commits with the ticket.

Connecting also switches spire's own new-ticket notifications off
(``HelpDeskTicketNotificationService.create_new_ticket_notifications``, which 1.3 calls
on every save through the service, edits and completion included): itsm-notify does
that job, and leaving both on would tell everyone twice. spire has no setting for it;
:func:`disconnect` puts spire's method back.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save

from .outbox import notify

_DISPATCH_UID = "itsm_notify.spire.post_save"
_SPIRES_OWN = "_itsm_notify_spires_own"


def on_ticket_saved(sender: Any, instance: Any, created: bool = False, raw: bool = False,
                    **kwargs: Any) -> None:
    """``post_save`` on ``HelpDeskTicket``: ``ticket_created`` for a new ticket."""
    if raw or not created:
        return
    notify("ticket_created", instance, instance.created_by_id,
           status=instance.status, priority=instance.priority)


def _no_notifications(self: Any) -> None:
    """spire's new-ticket notifications, switched off: itsm-notify sends them."""


def connect() -> None:
    """Connect the receiver and switch spire's own new-ticket notifications off
    (idempotent)."""
    from django_spire.help_desk.models import HelpDeskTicket
    from django_spire.help_desk.services.notification_service import (
        HelpDeskTicketNotificationService as Service,
    )

    post_save.connect(on_ticket_saved, sender=HelpDeskTicket, dispatch_uid=_DISPATCH_UID)
    if not hasattr(Service, _SPIRES_OWN):
        setattr(Service, _SPIRES_OWN, Service.create_new_ticket_notifications)
        Service.create_new_ticket_notifications = _no_notifications


def disconnect() -> None:
    """Disconnect the receiver and give spire its own notifications back."""
    from django_spire.help_desk.models import HelpDeskTicket
    from django_spire.help_desk.services.notification_service import (
        HelpDeskTicketNotificationService as Service,
    )

    post_save.disconnect(sender=HelpDeskTicket, dispatch_uid=_DISPATCH_UID)
    if hasattr(Service, _SPIRES_OWN):
        Service.create_new_ticket_notifications = getattr(Service, _SPIRES_OWN)
        delattr(Service, _SPIRES_OWN)
