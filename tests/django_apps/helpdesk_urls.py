"""The test site's URLconf: django-helpdesk where its install docs put it, ``/helpdesk/``,
and itsm-notify's unsubscribe page at the root, where the emails link to it."""

from django.urls import include, path

urlpatterns = [path("helpdesk/", include("helpdesk.urls")),
               path("", include("itsm_notify.django.urls"))]
