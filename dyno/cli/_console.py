"""The rich consoles the commands print through."""

from __future__ import annotations

import sys

from rich.console import Console


def stdout_console() -> Console:
    # Piped output has no terminal width; rich would squeeze tables into 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200)


def stderr_console() -> Console:
    """For progress and live displays, so that stdout stays clean for --json."""
    return Console(stderr=True)
