"""itsm-notify's Django app (``pip install 'itsm-notify[django]'``).

``INSTALLED_APPS = [..., "itsm_notify.django"]`` (app label ``itsm_notify``), then
``manage.py migrate`` creates ``notification_outbox`` as ``itsm-notify db init`` would.

* :func:`notify` (``itsm_notify.django.outbox``): write an outbox row in the caller's
  transaction, with the event-time facts of ``PAYLOAD_KEYS``.
* ``itsm_notify.django.helpdesk``: receivers for django-helpdesk 2.6's signals,
  connected automatically when ``helpdesk`` is installed
  (``ITSM_NOTIFY_HELPDESK_SIGNALS = False`` turns them off).
* ``itsm_notify.django.urls``: the unsubscribe page, ``path("",
  include("itsm_notify.django.urls"))``.

Nothing outside this package imports Django: the tool itself runs without it.
"""

from .outbox import PAYLOAD_KEYS, notify

__all__ = ["PAYLOAD_KEYS", "notify"]
