"""The unsubscribe page behind ``SITE_URL/notifications/unsubscribe/<token>/``
(``itsm_notify.ops.unsubscribe.UNSUBSCRIBE_PATH``), mounted by
``path("", include("itsm_notify.django.urls"))``.

* GET shows a confirmation page (template ``itsm_notify/unsubscribe_confirm.html``)
  with a form that POSTs back; it changes nothing, so a link checker that opens the
  link unsubscribes nobody.
* POST turns the user's email for that event type off: the page's form, and the
  RFC 8058 one-click POST a mail client sends from the ``List-Unsubscribe-Post``
  header (body ``List-Unsubscribe=One-Click``, no cookies, no CSRF token). The view is
  exempt from CSRF and needs no login: the signed token is the authority. Answer:
  ``itsm_notify/unsubscribe_done.html``.
* A forged or altered token: 400; a logged-in user with someone else's token: 403
  (``itsm_notify/unsubscribe_invalid.html``). The preferences table missing or the
  database failing: 503, same template.

The token is verified with the key the tool signed it with: the Django setting
``ITSM_NOTIFY_SECRET_KEY`` when set, else Django's ``SECRET_KEY`` — the tool reads its
key from the environment variable ``SECRET_KEY``, so a tool that shares the site's
``.env`` signs with Django's key and needs no setting. The choice is written to the
tool's ``notification_preferences`` (``itsm-notify db init`` creates it) through
Django's connection, in a transaction of its own.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError, IntegrityError, router, transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from ..errors import InvalidToken
from ..ops.unsubscribe import read_token
from ..states import Channel
from ..storage.database import utcnow
from .models import NotificationPreference

log = logging.getLogger("itsm_notify.django")

#: the Django setting holding the tool's SECRET_KEY, when it differs from Django's
SECRET_KEY_SETTING = "ITSM_NOTIFY_SECRET_KEY"

#: what a person is unsubscribed from, per event type
EVENT_LABELS = {
    "ticket_created": _("new tickets"),
    "ticket_assigned": _("tickets assigned to you"),
    "status_changed": _("ticket status changes"),
    "comment_added": _("new comments on tickets"),
}


def signing_key() -> str:
    """The key unsubscribe tokens are verified with (module docstring)."""
    return str(getattr(settings, SECRET_KEY_SETTING, "") or settings.SECRET_KEY)


def turn_email_off(user_id: int, event_type: str) -> None:
    """Record that ``user_id`` wants no email of ``event_type`` (the tool's
    ``set_preference(..., Channel.EMAIL, False, ...)``, through Django's connection)."""
    using = router.db_for_write(NotificationPreference)
    rows = NotificationPreference.objects.using(using)
    key = {"user_id": user_id, "event_type": event_type, "channel": Channel.EMAIL}
    now = utcnow()
    with transaction.atomic(using=using):
        if rows.filter(**key).update(enabled=False, updated_at=now):
            return
        try:
            with transaction.atomic(using=using):
                rows.create(**key, enabled=False, updated_at=now)
        except IntegrityError:  # a second click, at the same moment
            rows.filter(**key).update(enabled=False, updated_at=now)


def _refusal(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return TemplateResponse(request, "itsm_notify/unsubscribe_invalid.html",
                            {"message": message}, status=status)


@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET: the confirmation page; POST (the form or an RFC 8058 one-click): apply."""
    try:
        user_id, event_type = read_token(signing_key(), token)
    except InvalidToken:
        return _refusal(request, _("This unsubscribe link is not valid: it was changed or "
                                   "cut short. Use the link from the latest email."), 400)
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.pk != user_id:
        return _refusal(request, _("This unsubscribe link belongs to another account. "
                                   "Log out, or use the link from your own email."), 403)
    context = {"event_type": event_type,
               "event_label": EVENT_LABELS.get(event_type, event_type),
               "action": request.path}
    if request.method != "POST":
        return TemplateResponse(request, "itsm_notify/unsubscribe_confirm.html", context)
    try:
        turn_email_off(user_id, event_type)
    except DatabaseError:
        log.exception("could not record an unsubscribe of user %s from %s "
                      "(has 'itsm-notify db init' created notification_preferences?)",
                      user_id, event_type)
        return _refusal(request, _("Your choice could not be saved just now. "
                                   "Please try again in a few minutes."), 503)
    return TemplateResponse(request, "itsm_notify/unsubscribe_done.html", context)
