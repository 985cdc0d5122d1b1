"""How long work reports progress, without knowing how it is shown.

Library functions that take a while (training, analysis, simulation, benchmarks) accept a ``Progress``
and open one task per stage; the presentation layer (``dyno.bench.console.RichProgress``) draws them.
Nothing below the CLI and the benchmarks imports a display.

    def train(..., progress: Progress = NO_PROGRESS):
        tick = progress.task("epoch 1", total=len(batches))
        for batch in batches:
            ...
            tick(status=f"loss {loss:.3f}")      # advance by one, update the status text
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Tick", "Progress", "NoProgress", "NO_PROGRESS"]


class Tick(Protocol):
    """Advances one task: ``tick()`` by one, ``tick(advance=0, status=...)`` to update its status."""

    def __call__(self, advance: int = 1, *, status: str | None = None) -> None: ...


class Progress(Protocol):
    """Opens tasks; ``total`` None when the amount of work is not known in advance."""

    def task(self, description: str, total: int | None = None) -> Tick: ...


def _ignore(advance: int = 1, *, status: str | None = None) -> None:
    pass


class NoProgress:
    """Shows nothing."""

    def task(self, description: str, total: int | None = None) -> Tick:  # noqa: ARG002 (the protocol's signature)
        return _ignore


NO_PROGRESS: Progress = NoProgress()
