"""Real Django help desks (django-helpdesk, django-spire) built by their own code, for tests."""
