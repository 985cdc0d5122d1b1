"""dyno's figures on disk: a matplotlib figure written atomically, then closed.

    save_png(fig, "plan.png", dpi=110, bbox_inches="tight")   # readers see the old picture or the new one

The picture is written through :func:`dyno.datafile.atomic_path` (a unique temporary file in the same
directory, fsync, rename), so a reader never sees half a PNG, and a failed save leaves no temporary file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dyno.datafile import atomic_path

__all__ = ["save_png"]


def save_png(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Save ``fig`` at ``path`` atomically with ``fig.savefig(..., **savefig_kwargs)`` and close it,
    whether or not the save succeeds; returns the path. The format is ``savefig_kwargs["format"]``, or
    else the path's suffix (the temporary file keeps it), as with ``savefig`` itself."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path
