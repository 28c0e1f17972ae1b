"""The ``itsm-notify`` entry point.

``send-pending`` from cron, with nothing due, is answered by ops/idle.py before the
command line and the engine are even imported; everything else (and any doubt) goes to
cli.py.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["send-pending"] and _idle():
        return
    from .cli import main as run_command

    run_command()


def _idle() -> bool:
    """Whether the configured database has nothing due (and the settings are valid: a
    configuration error is the full path's to report)."""
    from .config import load_settings
    from .errors import ConfigError
    from .ops.idle import nothing_due

    try:
        settings = load_settings()
    except ConfigError:
        return False
    return nothing_due(settings.database_url)
