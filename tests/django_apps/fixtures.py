"""pytest fixtures for the real Django help desks (registered in ``tests/conftest.py``).

* ``helpdesk_site`` — django-helpdesk 2.6.1 built by its own migrations, parametrized
  over ``sqlite``, ``postgresql`` and ``mariadb`` (the latter two skip unless
  ``ITSM_TEST_POSTGRES_URL`` / ``ITSM_TEST_MARIADB_URL`` are set). The schema is built
  once per database and session and reset for each test (see
  :meth:`HelpdeskSite.open`), so the tool under test finds exactly a freshly installed
  django-helpdesk at ``helpdesk_site.url``.
* ``spire_python`` — the interpreter of django-spire's own virtualenv (made on first
  use), or a skip saying why there is none; run the harness with
  :func:`django_apps.spire.run_spire`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpdesk_site import HelpdeskSite
from .spire import SpireUnavailable
from .spire import spire_python as make_spire_python

DATABASES = ["sqlite", "postgresql", "mariadb"]
_SERVER_URL_ENV = {"postgresql": "ITSM_TEST_POSTGRES_URL", "mariadb": "ITSM_TEST_MARIADB_URL"}


@pytest.fixture(scope="session")
def helpdesk_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's SQLite file for django-helpdesk (reset, not rebuilt, per test)."""
    return f"sqlite:///{tmp_path_factory.mktemp('django-helpdesk') / 'helpdesk.db'}"


@pytest.fixture(params=DATABASES, ids=DATABASES)
def helpdesk_site(request: pytest.FixtureRequest,
                  helpdesk_sqlite_url: str) -> Iterator[HelpdeskSite]:
    """django-helpdesk, freshly installed in the test's database (once per database)."""
    if request.param == "sqlite":
        url = helpdesk_sqlite_url
    else:
        env_name = _SERVER_URL_ENV[request.param]
        url = os.environ.get(env_name, "")
        if not url:
            pytest.skip(f"django-helpdesk on {request.param} needs {env_name}")
    site = HelpdeskSite.open(url)
    yield site
    site.close()


@pytest.fixture(scope="session")
def spire_python() -> Path:
    """django-spire 1.3.0's interpreter (Python >= 3.12), or a skip with the reason."""
    try:
        return make_spire_python()
    except SpireUnavailable as unavailable:
        pytest.skip(str(unavailable))
