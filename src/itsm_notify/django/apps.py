"""The Django app: ``INSTALLED_APPS = [..., "itsm_notify.django"]`` (label ``itsm_notify``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class HelpDeskIntegration:
    """Receivers that turn a help-desk app's own changes into outbox events."""

    app: str
    """The help desk's app, as in INSTALLED_APPS."""
    setting: str
    """Django setting: None (the default) connects the receivers when ``app`` is
    installed; True requires it; False never connects them."""
    module: str
    """The module (in this package) with ``connect()``."""


#: one entry per help desk whose events the app writes by itself
INTEGRATIONS = (
    HelpDeskIntegration("helpdesk", "ITSM_NOTIFY_HELPDESK_SIGNALS", "helpdesk"),
    HelpDeskIntegration("django_spire.help_desk", "ITSM_NOTIFY_SPIRE_SIGNALS", "spire"),
)


class ItsmNotifyConfig(AppConfig):
    name = "itsm_notify.django"
    label = "itsm_notify"
    verbose_name = "itsm-notify"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        for integration in INTEGRATIONS:
            wanted = getattr(settings, integration.setting, None)
            installed = apps.is_installed(integration.app)
            if wanted and not installed:
                raise ImproperlyConfigured(
                    f"{integration.setting} is True but {integration.app!r} is not in "
                    f"INSTALLED_APPS: add {integration.app!r} or remove the setting.")
            if wanted or (wanted is None and installed):
                import_module(f"{__package__}.{integration.module}").connect()
