"""DynO's scheduler and every baseline, behind one interface: ``decide(state) -> Decision``.

    from dyno.policy import SLO, Estimates, State, make
    policy = make("dyno")
    state = State(plan, Estimates(bandwidth_bps=5e6, device_slowdown=8), SLO.parse("throughput;drop<=1"),
                  batch=1, in_flight=8)   # in_flight: the client's request window (None: unbounded)
    decision = policy.decide(state)        # Decision(cut, codec, bits, predicted, note)

Registered names: ``dyno``, ``device-only``, ``cloud-only`` (JPEG q90), ``cloud-only-raw`` (fp32 input),
``neurosurgeon``, ``spinn`` (SPINN-style transfer: 8-bit + lossless, no early exits), ``jalad``
(JALAD-style: fixed offline choice). The performance model is ``dyno.policy.model``.
"""

from dyno.policy.base import OBJECTIVES, SLO, Decision, Estimates, Policy, Prediction, State
from dyno.policy.registry import make, names, register

__all__ = ["OBJECTIVES", "SLO", "Decision", "Estimates", "Policy", "Prediction", "State",
           "make", "names", "register"]


def __getattr__(name: str):  # the model and policy classes load on first use
    if name in ("DynoPolicy",):
        from dyno.policy import dyno_policy

        return getattr(dyno_policy, name)
    if name in ("DeviceOnly", "CloudOnly", "CloudOnlyRaw", "Neurosurgeon", "SpinnStyle", "JaladStyle"):
        from dyno.policy import baselines

        return getattr(baselines, name)
    if name in ("PerfModel", "predict", "DevicePower"):
        from dyno.policy import model

        return getattr(model, name)
    raise AttributeError(f"module 'dyno.policy' has no attribute {name!r}")
