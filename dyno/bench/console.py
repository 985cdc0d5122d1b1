"""The consoles and the progress display every command prints through (rich). Presentation only:
nothing in the library imports this module; the CLI and the benchmarks hand a ``RichProgress`` to the
library functions that take a ``dyno.progress.Progress``.

    with RichProgress() as progress:
        plan = dyno.offline.analyze("fmnist-resnet", progress=progress)
"""

from __future__ import annotations

import dataclasses
import sys
import time
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


@dataclasses.dataclass
class _Count:
    description: str
    total: int | None
    done: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    last: float = 0.0

    def tick(self, advance: int = 1, *, status: str | None = None) -> None:  # noqa: ARG002 (shown live only)
        self.done += advance
        self.last = time.perf_counter()


class RichProgress:
    """``dyno.progress.Progress`` drawn as rich progress bars on stderr, one per task.

    A no-op with ``enabled=False`` (``--json``, ``--no-progress``). Where stderr is not a terminal (a
    log, a pipe) nothing is drawn while the work runs; when it ends normally, one line per task
    records what was done (``simulate: 18/18 in 3.2 s``). Use as a context manager.
    """

    def __init__(self, enabled: bool = True, *, transient: bool = False) -> None:
        self._console = stderr_console()
        self.enabled = enabled
        self._bar: Progress | None = None
        self._tasks: list[_Count] = []   # where stderr is not a terminal
        if self.enabled and self._console.is_terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=self._console, transient=transient)

    def __enter__(self) -> RichProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None:
            for task in self._tasks:
                counted = f"{task.done}/{task.total}" if task.total is not None else f"{task.done}"
                seconds = max(task.last - task.started, 0.0)
                self._console.print(f"{task.description}: {counted} in {seconds:.1f} s", highlight=False,
                                    soft_wrap=True)

    def task(self, description: str, total: int | None = None) -> Tick:
        if not self.enabled:
            return NO_PROGRESS.task(description, total)
        bar = self._bar
        if bar is None:
            record = _Count(description, total)
            self._tasks.append(record)
            return record.tick
        task = bar.add_task(description, total=total, status="")

        def tick(advance: int = 1, *, status: str | None = None) -> None:
            if status is None:
                bar.update(task, advance=advance)
            else:
                bar.update(task, advance=advance, status=status)

        return tick
