"""The alert rules the README shows (contrib/prometheus): valid, and their unit tests
pass under Prometheus' own promtool (skipped where promtool is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "contrib" / "prometheus"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("command", [["check", "rules", "itsm-notify.rules.yml"],
                                     ["test", "rules", "itsm-notify.rules.test.yml"]])
def test_promtool_accepts_the_rules(command: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: prometheus)")
    result = subprocess.run([promtool, *command], cwd=RULES, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_shows_the_rules_as_they_are() -> None:
    readme = README.read_text()
    rules = (RULES / "itsm-notify.rules.yml").read_text()
    for alert in ("ItsmNotifyQueueStuck", "ItsmNotifyDeliveriesFailing"):
        assert f"alert: {alert}" in readme
    for line in rules.splitlines():
        if line.strip().startswith(("expr:", "sum by", "/ sum by", "> 0.05", "for:")):
            assert line.strip() in readme, line
