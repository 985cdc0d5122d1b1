"""The discrete-event simulator on the plan's numbers, through the very policy code the device client
runs: a fleet of devices sharing one batching cloud (``dyno.simulate.fleet``, ``dyno.simulate.cloud``),
and one device streaming over one trace as its special case (``dyno.simulate.engine``).

    from dyno.simulate import SimConfig, simulate_policy
    result = simulate_policy(dyno.policy.make("dyno"), PerfModel(plan), trace, slo, SimConfig(slowdown=8))

    from dyno.simulate import CloudConfig, DeviceSpec, FleetConfig, run_fleet
    fleet = run_fleet(model, [DeviceSpec(policy=make("dyno"), slowdown=1.3, trace=t, slo=slo, rate=15)],
                      FleetConfig(duration_s=60, cloud=CloudConfig(workers=2, scale=0.04)))

Experiments over many policies, traces, tiers and fleet sizes are in ``dyno.bench``.
"""

from dyno.simulate.cloud import CloudConfig
from dyno.simulate.engine import OracleDyno, SimConfig, SimResult, result_of, simulate_policy
from dyno.simulate.fleet import DeviceSpec, DeviceTally, FleetConfig, FleetResult, run_fleet
from dyno.simulate.synthetic import synthetic_plan

__all__ = ["CloudConfig", "DeviceSpec", "DeviceTally", "FleetConfig", "FleetResult", "OracleDyno", "SimConfig",
           "SimResult", "result_of", "run_fleet", "simulate_policy", "synthetic_plan"]
