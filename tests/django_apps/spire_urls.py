"""The spire test site's URLconf: ``django_spire.urls`` where spire's own test project
mounts it, ``/django_spire/``."""

from django.urls import include, path

urlpatterns = [path("django_spire/", include("django_spire.urls", namespace="django_spire"))]
