"""The one exception tree of dyno.

Every error dyno raises on purpose is a ``DynoError``; third-party failures (torch.fx, blosc2, grpc,
PIL, json) are translated at the boundary with ``raise ... from``. Messages say what was wrong and
what to do about it; the CLI prints ``str(error)`` on one line and exits non-zero.

    DynoError
    ├── ConfigError          a bad argument, option or config value
    ├── ModelError           unknown model name, wrong input shape, weights missing
    │   └── TraceError       torch.fx cannot trace the model (names the construct)
    ├── DataError            a dataset is missing, corrupt or malformed (IDX, labels.tsv, image)
    ├── PartitionError       an invalid cut, or a split that does not reproduce the model
    ├── FrameError           an encoded frame fails validation (from the network or a file)
    ├── PlanError            a plan file is corrupt, of another version, or for other weights
    ├── PolicyError          a policy cannot decide (empty plan, bad SLO)
    ├── TraceFileError       a bandwidth trace file is malformed
    └── RuntimeServiceError  the cloud service refused or failed a request
        └── ServerUnavailable  the server cannot be reached (the client falls back to the device)
"""

from __future__ import annotations

__all__ = [
    "DynoError",
    "ConfigError",
    "ModelError",
    "TraceError",
    "DataError",
    "PartitionError",
    "FrameError",
    "PlanError",
    "PolicyError",
    "TraceFileError",
    "RuntimeServiceError",
    "ServerUnavailable",
]


class DynoError(Exception):
    """Base of every error dyno raises on purpose."""


class ConfigError(DynoError, ValueError):
    """A bad argument, option or configuration value."""


class ModelError(DynoError):
    """An unknown model, a wrong input shape, or weights that cannot be loaded."""


class TraceError(ModelError):
    """torch.fx cannot trace the model; the message names the construct."""


class DataError(DynoError):
    """A dataset is missing, corrupt or malformed."""


class PartitionError(DynoError):
    """An invalid cut, or a split whose head and tail do not reproduce the model."""


class FrameError(DynoError):
    """An encoded frame failed validation: wrong version, mode, bits, shape, sizes or payload."""


class PlanError(DynoError):
    """A plan file is corrupt, of an unknown version, or made for another model or other weights."""


class PolicyError(DynoError):
    """A policy cannot make a decision (an empty plan, an invalid SLO)."""


class TraceFileError(DynoError):
    """A bandwidth trace file is malformed."""


class RuntimeServiceError(DynoError):
    """The cloud service refused or failed a request."""


class ServerUnavailable(RuntimeServiceError):
    """The cloud server cannot be reached or did not answer in time."""
