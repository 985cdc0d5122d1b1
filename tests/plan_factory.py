"""Plans for policy, monitor and simulator tests (no model, no analysis run needed)."""

from __future__ import annotations

from dyno.plan import CutPlan, Option, Plan
from dyno.policy import Decision, Policy
from dyno.simulate.synthetic import INPUT_SHAPE, synthetic_plan

make_plan = synthetic_plan   # random but valid plans shaped like real ones


def tiny_plan(*, device_ms=(0.0, 4.0, 10.0), cloud_ms=(10.0, 5.0, 0.0), bytes_=(1000.0, 500.0),
              accuracy=(0.9, 0.9), accuracy_fp32: float = 0.9) -> Plan:
    """Three cuts by hand: the input (one jpeg:90 option), one inner cut (shuffle-lz4:8), the output.

    Every number is given, for hand-checked model and simulator cases. Codec times are zero.
    """
    cuts = (
        CutPlan(id=0, name="input", shape=INPUT_SHAPE, nonnegative=True, device_ms=device_ms[0],
                cloud_ms={1: cloud_ms[0]},
                options=(Option(codec="jpeg", bits=90, bytes=bytes_[0], accuracy=accuracy[0]),)),
        CutPlan(id=1, name="mid", shape=(4, 8, 8), nonnegative=True, device_ms=device_ms[1],
                cloud_ms={1: cloud_ms[1]},
                options=(Option(codec="shuffle-lz4", bits=8, bytes=bytes_[1], accuracy=accuracy[1]),)),
        CutPlan(id=2, name="output", shape=(10,), nonnegative=False, device_ms=device_ms[2],
                cloud_ms={1: cloud_ms[2] if cloud_ms[2] > 0 else 0.0}),
    )
    return Plan(model="tiny", weights_sha256="0" * 64, input_shape=INPUT_SHAPE, num_classes=10,
                accuracy_fp32=accuracy_fp32, samples=10, device_profile="test", cloud_profile="test",
                cuts=cuts)


class Fixed(Policy):
    """Always the same (cut, codec, bits): the runtime's tests choose where the work goes."""

    name = "fixed"

    def __init__(self, cut: int, codec: str | None = "fp32", bits: int | None = None):
        self.cut, self.codec, self.bits = cut, codec, bits

    def decide(self, _state):
        return Decision(self.cut, self.codec, self.bits)
