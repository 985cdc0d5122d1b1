"""The end of a benchmark's child process: what it reports to its parent, the one way.

A child ("spawn") runs its body and sends ``("done", report)``, or ``("error", traceback)`` when the body
raises anything (KeyboardInterrupt and SystemExit too), then closes its end of the pipe; a parent that
is already gone is no error. The parent reads the pair and raises its own error on ``"error"``; the
child's exit code stays 0 either way, since the message, not the code, tells the parent what happened.

    def worker_main(spec, conn):
        answer(conn, lambda: _run(spec, conn))       # _run may send ("ready", None) and wait for "go" first
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

__all__ = ["answer"]


def answer(conn: Any, body: Callable[[], Any]) -> None:
    """Send ``("done", body())`` or ``("error", the traceback)`` through ``conn``, then close it."""
    try:
        conn.send(("done", body()))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc(limit=10)))
        except OSError:
            pass  # the parent is gone
    finally:
        conn.close()
