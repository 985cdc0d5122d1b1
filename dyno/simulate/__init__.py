"""The discrete-event simulator: one policy streaming inferences over a bandwidth trace, on the plan's
numbers, through the very policy code the device client runs (``dyno.simulate.engine``).

    from dyno.simulate import SimConfig, simulate_policy
    result = simulate_policy(dyno.policy.make("dyno"), PerfModel(plan), trace, slo, SimConfig(slowdown=8))

Experiments over many policies, traces and tiers (``dyno simulate``) are in ``dyno.bench.simulate``.
"""

from dyno.simulate.engine import OracleDyno, SimConfig, SimResult, simulate_policy
from dyno.simulate.synthetic import synthetic_plan

__all__ = ["OracleDyno", "SimConfig", "SimResult", "simulate_policy", "synthetic_plan"]
