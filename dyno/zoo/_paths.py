"""Where the zoo keeps and finds things: the cache directory and the default dataset roots."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "weights_dir", "fashion_mnist_root", "imagenet_samples_root"]

#: Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    """The user's dyno cache: ``$DYNO_CACHE``, else ``~/.cache/dyno`` (not created here)."""
    env = os.environ.get("DYNO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dyno"


def weights_dir() -> Path:
    """Where ``dyno train`` stores trained weights: ``cache_dir() / "weights"``."""
    return cache_dir() / "weights"


def fashion_mnist_root() -> Path:
    """``$DYNO_FASHION_MNIST``, else the Debian package's directory."""
    env = os.environ.get("DYNO_FASHION_MNIST")
    return Path(env).expanduser() if env else DEBIAN_FASHION_MNIST


def imagenet_samples_root() -> Path:
    """``$DYNO_IMAGENET_SAMPLES``, else ``shared/imagenet-samples`` next to the source checkout."""
    env = os.environ.get("DYNO_IMAGENET_SAMPLES")
    if env:
        return Path(env).expanduser()
    # dyno/zoo/_paths.py -> checkout -> its parent holds shared/ (see DESIGN.md "Data and models")
    return Path(__file__).resolve().parents[3] / "shared" / "imagenet-samples"
