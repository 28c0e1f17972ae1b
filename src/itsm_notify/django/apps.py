"""The Django app: ``INSTALLED_APPS = [..., "itsm_notify.django"]`` (label ``itsm_notify``)."""

from __future__ import annotations

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: Django setting: None (the default) connects the django-helpdesk receivers when
#: django-helpdesk is installed; True requires it; False never connects them.
HELPDESK_SIGNALS_SETTING = "ITSM_NOTIFY_HELPDESK_SIGNALS"


class ItsmNotifyConfig(AppConfig):
    name = "itsm_notify.django"
    label = "itsm_notify"
    verbose_name = "itsm-notify"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        wanted = getattr(settings, HELPDESK_SIGNALS_SETTING, None)
        installed = apps.is_installed("helpdesk")
        if wanted and not installed:
            raise ImproperlyConfigured(
                f"{HELPDESK_SIGNALS_SETTING} is True but django-helpdesk is not in "
                "INSTALLED_APPS: add 'helpdesk' or remove the setting.")
        if wanted or (wanted is None and installed):
            from . import helpdesk

            helpdesk.connect()
