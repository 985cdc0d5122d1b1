"""What every test module may use: the data at hand, found relative to the repository, never by an
absolute path. ``../shared`` (beside the checkout) is not part of the repository: tests that need it
skip with a reason naming the missing path, and so do tests that need Debian's Fashion-MNIST.

    from conftest import needs_fmnist, needs_imagenet

    @needs_imagenet
    def test_something(imagenet_samples): ...
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dyno.zoo import _paths

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"
IMAGENET_SAMPLES = SHARED / "imagenet-samples"
DATA = Path(__file__).resolve().parent / "data"


def _fmnist_present() -> bool:
    root = _paths.fashion_mnist_root()
    return any((root / f"t10k-labels-idx1-ubyte{ext}").is_file() for ext in ("", ".gz"))


needs_fmnist = pytest.mark.skipif(not _fmnist_present(),
                                  reason=f"Fashion-MNIST is not installed at {_paths.fashion_mnist_root()} "
                                  "(Debian package dataset-fashion-mnist; `make setup` installs it as root)")
needs_imagenet = pytest.mark.skipif(not (IMAGENET_SAMPLES / "labels.tsv").is_file(),
                                    reason=f"{IMAGENET_SAMPLES}/labels.tsv not present (../shared is not part "
                                    "of the repository)")
needs_traces = pytest.mark.skipif(not (TRACES / "norway-hsdpa").is_dir(),
                                  reason=f"{TRACES} not present (../shared is not part of the repository)")


@pytest.fixture(scope="session")
def imagenet_samples() -> Path:
    """``../shared/imagenet-samples``; skips when absent."""
    if not (IMAGENET_SAMPLES / "labels.tsv").is_file():
        pytest.skip(f"{IMAGENET_SAMPLES}/labels.tsv not present")
    return IMAGENET_SAMPLES


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """``../shared/traces`` (norway-hsdpa, fcc); skips when absent."""
    if not (TRACES / "norway-hsdpa").is_dir():
        pytest.skip(f"{TRACES} not present")
    return TRACES


# The runtime's tests share one small untrained CNN (tests/nets.py) and its nominal plan; a module that
# needs another model defines its own fixtures of these names.
@pytest.fixture(scope="module")
def model():
    from nets import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def plan(model):
    from dyno.offline import nominal_plan

    return nominal_plan(model)


@pytest.fixture(scope="module")
def splits(model, plan):
    from dyno.runtime import Splits

    return Splits(model, plan)


def cached_fmnist_resnet() -> str | None:
    """The reason to skip, or None when the trained weights and the plan are cached."""
    from dyno import offline, zoo

    if zoo.trained_weights_info(zoo.get_model("fmnist-resnet")) is None:
        return "fmnist-resnet has no trained weights cached (dyno train fmnist-resnet)"
    if not offline.default_plan_path("fmnist-resnet").exists():
        return f"no cached plan at {offline.default_plan_path('fmnist-resnet')} (dyno demo makes it)"
    return None


def dyno_json(*args: str, timeout: float = 600) -> dict:
    """``python -m dyno ARGS`` on fmnist-resnet's cached weights and plan (skipped where they are not
    cached): its ``--json`` document, after checking it exited 0."""
    import json
    import subprocess
    import sys

    reason = cached_fmnist_resnet()
    if reason:
        pytest.skip(reason)
    out = subprocess.run([sys.executable, "-m", "dyno", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)
