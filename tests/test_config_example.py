"""config.example.toml documents every setting, and is itself a valid configuration."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from itsm_notify.config import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_every_setting_is_documented_with_its_environment_name() -> None:
    text = EXAMPLE.read_text()
    for f in fields(Settings):
        if f.metadata["env"] is None:  # chat destinations: [chat.<name>] tables, shown apart
            assert "[chat." in text
            continue
        assert re.search(rf"^# {f.name} = ", text, re.M), f"{f.name} missing"
        assert f"[{f.metadata['env']}]" in text, f"{f.metadata['env']} missing"


def test_the_example_uncommented_loads_as_the_defaults(tmp_path: Path) -> None:
    lines = [line[2:] for line in EXAMPLE.read_text().splitlines()
             if re.match(r"^# [a-z_]+ = ", line)]
    config = tmp_path / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    loaded = load_settings(config_path=config, environ={}, dotenv_path=None)
    assert loaded == load_settings(environ={}, dotenv_path=None)
