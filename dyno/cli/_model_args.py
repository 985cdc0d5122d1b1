"""How commands name a model and its weights: a zoo name, ``module.path:callable`` or an entry point
of ``dyno.models``, with ``--weights trained | random | trained-or-random | FILE``; and, for the
commands that start from a plan (``serve``, ``run``), the weights the plan was made with."""

from __future__ import annotations

import os
from pathlib import Path

from dyno.errors import ConfigError

__all__ = ["MODEL_HELP", "WEIGHTS_HELP", "PLAN_WEIGHTS_HELP", "weights_source", "plan_weights"]

MODEL_HELP = ("a zoo model name (dyno eval --help lists them), module.path:callable (a callable returning an "
              "nn.Module with an input_shape attribute, or a dyno.zoo.ModelEntry), or a name a package "
              "registers in the entry-point group dyno.models")
WEIGHTS_HELP = ("trained (default), random, trained-or-random, or a state_dict file (torch.save(model."
                "state_dict()), read with weights_only=True)")
PLAN_WEIGHTS_HELP = ("trained | random | trained-or-random | a state_dict file (default: the weights the plan "
                     "was made with; the plan refuses others, naming both sha256)")


def weights_source(weights: str | os.PathLike) -> str:
    """What a plan records as its weights: the keyword, or the absolute path of the state_dict file."""
    from dyno.zoo import WEIGHTS

    if isinstance(weights, str) and weights in WEIGHTS:
        return weights
    return str(Path(weights).expanduser().resolve())


def plan_weights(plan_path: str | os.PathLike, given: str | None) -> str:
    """``given`` if the user gave weights; else the weights the plan at ``plan_path`` records (a
    ConfigError if that file is gone); else ``trained``."""
    if given is not None:
        return given
    from dyno.plan import Plan

    plan = Plan.load(plan_path)
    if not plan.weights or plan.weights in ("trained", "trained-or-random"):
        return "trained"
    if plan.weights == "random":
        raise ConfigError(f"{plan_path} was made with random weights, which cannot be made again; pass "
                          "--weights FILE with the state_dict it was made with")
    if not Path(plan.weights).is_file():
        raise ConfigError(f"{plan_path} was made with the weights in {plan.weights} (sha256 "
                          f"{plan.weights_sha256}), and that file is gone; pass --weights FILE")
    return plan.weights
