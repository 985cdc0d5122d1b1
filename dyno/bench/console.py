"""The consoles and the progress display every command prints through (rich). Presentation only:
nothing in the library imports this module; the CLI and the benchmarks hand a ``RichProgress`` to the
library functions that take a ``dyno.progress.Progress``.

    with RichProgress() as progress:
        plan = dyno.offline.analyze("fmnist-resnet", progress=progress)
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dyno.progress import NO_PROGRESS, Tick

__all__ = ["stdout_console", "stderr_console", "RichProgress"]


def stdout_console() -> Console:
    """Tables and results. Piped output has no terminal width; rich would squeeze tables into 80 columns."""
    return Console(width=None if sys.stdout.isatty() else 200)


def stderr_console() -> Console:
    """Progress and live displays, so that stdout stays clean for --json."""
    return Console(stderr=True)


class RichProgress:
    """``dyno.progress.Progress`` drawn as rich progress bars on stderr, one per task.

    A no-op with ``enabled=False`` (``--json``, ``--no-progress``). Where stderr is not a terminal
    (a log, a pipe) rich draws the final state once, at the end. Use as a context manager.
    """

    def __init__(self, enabled: bool = True, *, transient: bool = False) -> None:
        console = stderr_console()
        self.enabled = enabled
        self._bar: Progress | None = None
        if self.enabled:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, transient=transient)

    def __enter__(self) -> RichProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def task(self, description: str, total: int | None = None) -> Tick:
        bar = self._bar
        if bar is None:
            return NO_PROGRESS.task(description, total)
        task = bar.add_task(description, total=total, status="")

        def tick(advance: int = 1, *, status: str | None = None) -> None:
            if status is None:
                bar.update(task, advance=advance)
            else:
                bar.update(task, advance=advance, status=status)

        return tick
