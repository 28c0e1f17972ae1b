"""Run ``spire_harness.py`` under a Python that django-spire 1.3.0 accepts.

django-spire 1.3.0 needs Python >= 3.12 and Django 6; the project (and its test run)
is on Python 3.11 with Django 5.2, so spire lives in a virtualenv of its own, made on
the first use with uv and kept (default ``<repo>/.venv-spire``, or
``ITSM_TEST_SPIRE_VENV``). The interpreter it is made from is, in order:
``ITSM_TEST_SPIRE_PYTHON``, what ``uv python find '>=3.12'`` finds without
downloading, then the Pythons of a pyenv installation. None of them: the tests skip,
saying so.

The virtualenv also holds this checkout of itsm-notify, installed editable (so its
Django app is the code under test), as a spire site would ``pip install`` it.

Each :func:`run_spire` call is one ``python spire_harness.py …`` process; it prints one
JSON object, returned as a dict.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

#: what the spire virtualenv holds (PyMySQL: the MariaDB driver, as in the project)
SPIRE_REQUIREMENTS = ("django-spire==1.3.0", "pymysql==1.2.4")
#: the oldest Python django-spire 1.3.0 installs on (its Requires-Python)
SPIRE_MIN_PYTHON = (3, 12)
HARNESS = Path(__file__).with_name("spire_harness.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
#: seconds for one harness run (schema build included)
RUN_TIMEOUT = 180


class SpireUnavailable(Exception):
    """django-spire cannot run here; the message says why and what would fix it."""


def _python_version(python: str) -> tuple[int, int] | None:
    """The version of the interpreter ``python``, or None when it does not run
    (a pyenv shim for a version not selected fails, for instance)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)", done.stdout.strip())
    if done.returncode != 0 or not match:
        return None
    return int(match[1]), int(match[2])


def _candidate_pythons() -> list[str]:
    candidates = []
    if os.environ.get("ITSM_TEST_SPIRE_PYTHON"):
        candidates.append(os.environ["ITSM_TEST_SPIRE_PYTHON"])
    uv = shutil.which("uv")
    if uv:
        found = subprocess.run(
            [uv, "python", "find", "--no-python-downloads",
             ">={}.{}".format(*SPIRE_MIN_PYTHON)],
            capture_output=True, text=True, timeout=60, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(found.stdout.strip())
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(path) for path in sorted((pyenv_root / "versions").glob("3.*/bin/python3"))]
    return candidates


def find_base_python() -> str:
    """An interpreter >= 3.12 to make the spire virtualenv from."""
    for python in _candidate_pythons():
        version = _python_version(python)
        if version is not None and version >= SPIRE_MIN_PYTHON:
            return python
    raise SpireUnavailable(
        "django-spire 1.3.0 needs Python >= 3.12 and none was found (set "
        "ITSM_TEST_SPIRE_PYTHON to one, or install one with uv or pyenv)")


def spire_venv() -> Path:
    return Path(os.environ.get("ITSM_TEST_SPIRE_VENV", REPO_ROOT / ".venv-spire"))


def _has_requirements(python: Path) -> bool:
    """Whether ``python`` has exactly the pinned SPIRE_REQUIREMENTS installed, and
    itsm-notify from this checkout."""
    wanted = dict(requirement.split("==") for requirement in SPIRE_REQUIREMENTS)
    code = ("import importlib.metadata as m, json, sys, itsm_notify; "
            "print(json.dumps([{n: m.version(n) for n in sys.argv[1:]}, "
            "itsm_notify.__file__]))")
    done = subprocess.run([str(python), "-c", code, *wanted], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        return False
    versions, itsm_notify_file = json.loads(done.stdout)
    return versions == wanted and Path(itsm_notify_file).is_relative_to(REPO_ROOT)


def spire_python() -> Path:
    """The spire virtualenv's interpreter, making the virtualenv first if need be."""
    venv = spire_venv()
    python = venv / "bin" / "python"
    if python.exists() and _has_requirements(python):
        return python
    uv = shutil.which("uv")
    if uv is None:
        raise SpireUnavailable("making the django-spire virtualenv needs uv on PATH")
    base = find_base_python()
    # built aside and renamed into place, so a half-made virtualenv is never used
    staging = Path(tempfile.mkdtemp(prefix=".venv-spire-", dir=venv.parent))
    try:
        for command in (
            [uv, "venv", "--quiet", "--relocatable", "--no-python-downloads",
             "--python", base, str(staging)],
            [uv, "pip", "install", "--quiet", "--python", str(staging / "bin" / "python"),
             *SPIRE_REQUIREMENTS, "--editable", str(REPO_ROOT)],
        ):
            done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                  check=False)
            if done.returncode != 0:
                raise SpireUnavailable(
                    f"could not make the django-spire virtualenv ({' '.join(command[:3])} "
                    f"failed: {done.stderr.strip()[-500:]})")
        shutil.rmtree(venv, ignore_errors=True)
        staging.rename(venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return python


def run_spire(python: Path, database_url: str, *args: str) -> dict[str, Any]:
    """Run ``spire_harness.py DATABASE_URL ARGS…`` and return the JSON it printed."""
    done = subprocess.run([str(python), str(HARNESS), database_url, *args],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
                          cwd=HARNESS.parent)
    if done.returncode != 0:
        raise RuntimeError(f"spire_harness.py {' '.join(args)} failed "
                           f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts
