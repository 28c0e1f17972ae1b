"""The test site's URLconf: django-helpdesk where its install docs put it, ``/helpdesk/``."""

from django.urls import include, path

urlpatterns = [path("helpdesk/", include("helpdesk.urls"))]
