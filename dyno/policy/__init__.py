"""DynO's scheduler and every baseline, behind one interface: ``decide(state) -> Decision``.

    from dyno.policy import SLO, Estimates, State, make
    policy = make("dyno")
    state = State(plan, Estimates(bandwidth_bps=5e6, device_slowdown=8), SLO.parse(DEFAULT_SLO),
                  batch=1, in_flight=8)   # in_flight: the client's request window (None: unbounded)
    decision = policy.decide(state)        # Decision(cut, codec, bits, predicted, note)

Registered names: ``dyno``, ``device-only``, ``cloud-only`` (JPEG q90), ``cloud-only-raw`` (fp32 input),
``neurosurgeon`` (minimum latency, fp32, sees the server's load), ``split-int8`` (SPINN's transfer, 8-bit +
lossless, without SPINN's early exits), ``jalad`` (minimum latency under the accuracy bound, decoupled again
when the bandwidth moves). The performance model is ``dyno.policy.model``.

Imports point one way: ``base`` (the interface) <- ``registry`` <- ``model`` <- ``floor`` <- the policies;
importing this package imports every policy module, and that is what registers them.
"""

from dyno.policy import baselines, dyno_policy  # noqa: F401  (importing them registers the policies)
from dyno.policy.base import (
                              DEFAULT_SLO,
                              FEEDS,
                              OBJECTIVES,
                              ONLOADING_SLO,
                              PRESETS,
                              SLO,
                              Decision,
                              Estimates,
                              Policy,
                              Prediction,
                              State,
)
from dyno.policy.baselines import CloudOnly, CloudOnlyRaw, DeviceOnly, JaladStyle, Neurosurgeon, SplitInt8
from dyno.policy.dyno_policy import DynoPolicy
from dyno.policy.model import DevicePower, PerfModel, predict
from dyno.policy.registry import make, names, register

__all__ = ["DEFAULT_SLO", "FEEDS", "OBJECTIVES", "ONLOADING_SLO", "PRESETS", "SLO", "Decision", "Estimates", "Policy",
           "Prediction", "State", "make", "names", "register", "DynoPolicy", "DeviceOnly", "CloudOnly",
           "CloudOnlyRaw", "Neurosurgeon", "SplitInt8", "JaladStyle", "PerfModel", "predict", "DevicePower"]
