"""``notification_outbox`` exactly as ``itsm-notify db init`` creates it (storage/schema.py),
and the tool's ``notification_preferences`` (unmanaged: db init creates it).

Made by ``makemigrations`` (Django 5.2), wrapped to the project's line length."""

from django.db import migrations, models

import itsm_notify.django.fields


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="NotificationPreference",
            fields=[
                ("pk", models.CompositePrimaryKey(
                    "user_id", "event_type", "channel", blank=True, editable=False,
                    primary_key=True, serialize=False)),
                ("user_id", models.IntegerField()),
                ("event_type", models.CharField(max_length=64)),
                ("channel", models.CharField(max_length=16)),
                ("enabled", models.BooleanField()),
                ("updated_at", itsm_notify.django.fields.NaiveUTCDateTimeField(
                    db_default=itsm_notify.django.fields.UtcNow())),
            ],
            options={
                "db_table": "notification_preferences",
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="OutboxEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("event_type", models.CharField(max_length=64)),
                ("ticket_id", models.IntegerField(null=True)),
                ("actor_id", models.IntegerField(null=True)),
                ("payload", itsm_notify.django.fields.PlainTextField(null=True)),
                ("created_at", itsm_notify.django.fields.NaiveUTCDateTimeField(
                    db_default=itsm_notify.django.fields.UtcNow())),
                ("state", models.CharField(db_default="pending", max_length=16)),
                ("attempts", models.IntegerField(db_default=0)),
                ("available_at", itsm_notify.django.fields.NaiveUTCDateTimeField(
                    db_default=itsm_notify.django.fields.UtcNow())),
                ("locked_by", models.CharField(max_length=128, null=True)),
                ("locked_until", itsm_notify.django.fields.NaiveUTCDateTimeField(null=True)),
                ("last_error", itsm_notify.django.fields.PlainTextField(null=True)),
                ("processed_at", itsm_notify.django.fields.NaiveUTCDateTimeField(null=True)),
            ],
            options={
                "db_table": "notification_outbox",
                "indexes": [models.Index(fields=["state", "id"], name="ix_outbox_state_id")],
            },
        ),
    ]
