"""``path("", include("itsm_notify.django.urls"))``: the unsubscribe page at the path the
emails link to (``itsm_notify.ops.unsubscribe.UNSUBSCRIBE_PATH``)."""

from __future__ import annotations

from django.urls import path

from ..ops.unsubscribe import UNSUBSCRIBE_PATH
from .views import unsubscribe

app_name = "itsm_notify"

#: "/notifications/unsubscribe/{token}/" as a Django route
UNSUBSCRIBE_ROUTE = UNSUBSCRIBE_PATH.lstrip("/").replace("{token}", "<str:token>")

urlpatterns = [path(UNSUBSCRIBE_ROUTE, unsubscribe, name="unsubscribe")]
