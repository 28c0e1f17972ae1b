"""The tool's tables, as Django sees them.

* :class:`OutboxEvent` is ``notification_outbox``, managed by this app: ``migrate``
  creates it exactly as ``itsm-notify db init`` would (``storage/schema.py``: the same
  columns, types, nullability, server-side defaults and the ``ix_outbox_state_id``
  index), so Django's test databases have it too, and ``db init`` afterwards sees it as
  the outbox and leaves it alone. Write rows with :func:`itsm_notify.django.notify`;
  every column but ``event_type``, ``ticket_id``, ``actor_id`` and ``payload`` belongs
  to the tool's sender.
* :class:`NotificationPreference` is ``notification_preferences``, owned and created
  by the tool (``itsm-notify db init``): unmanaged here, used by the unsubscribe view.
"""

from __future__ import annotations

from django.db import models

from ..states import EventState
from .fields import NaiveUTCDateTimeField, PlainTextField, UtcNow


class OutboxEvent(models.Model):
    """One ticket event waiting for (or done by) ``itsm-notify send-pending``."""

    id = models.BigAutoField(primary_key=True)
    event_type = models.CharField(max_length=64)
    ticket_id = models.IntegerField(null=True)
    actor_id = models.IntegerField(null=True)
    #: JSON text (the tool, not the database, judges it); see itsm_notify.django.outbox
    payload = PlainTextField(null=True)
    created_at = NaiveUTCDateTimeField(db_default=UtcNow())
    state = models.CharField(max_length=16, db_default=EventState.PENDING)
    attempts = models.IntegerField(db_default=0)
    available_at = NaiveUTCDateTimeField(db_default=UtcNow())
    locked_by = models.CharField(max_length=128, null=True)
    locked_until = NaiveUTCDateTimeField(null=True)
    last_error = PlainTextField(null=True)
    processed_at = NaiveUTCDateTimeField(null=True)

    class Meta:
        db_table = "notification_outbox"
        # the claim walks pending rows in id order
        indexes = [models.Index(fields=["state", "id"], name="ix_outbox_state_id")]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.pk} (ticket {self.ticket_id}, {self.state})"


class NotificationPreference(models.Model):
    """A user's choice for one event type on one channel (absent means on)."""

    pk = models.CompositePrimaryKey("user_id", "event_type", "channel")
    user_id = models.IntegerField()
    event_type = models.CharField(max_length=64)
    channel = models.CharField(max_length=16)
    enabled = models.BooleanField()
    updated_at = NaiveUTCDateTimeField(db_default=UtcNow())

    class Meta:
        managed = False  # the tool's own table: itsm-notify db init creates it
        db_table = "notification_preferences"

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"user {self.user_id}: {self.event_type} by {self.channel} {state}"
