"""Peak allocation of a call, measured with tracemalloc (deterministic), for the decoders' memory bounds."""

from __future__ import annotations

import tracemalloc
from typing import Any, Callable


def traced_peak(call: Callable[..., Any], *args: Any) -> tuple[BaseException | None, int]:
    """(the exception ``call(*args)`` raised, or None; peak bytes allocated meanwhile)."""
    tracemalloc.start()
    try:
        call(*args)
    except BaseException as error:  # noqa: BLE001 - returned to the test, which asserts on it
        raised: BaseException | None = error
    else:
        raised = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak
