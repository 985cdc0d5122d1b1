"""Discrete-event simulation of policies over bandwidth traces (``dyno simulate``).

    from dyno.simulate import run, TIERS, DEFAULT_POLICIES
    report = run(plan, traces, tiers={"low": TIERS["low"]}, policies=DEFAULT_POLICIES, slo=SLO.parse(MAIN_SLO))
"""

from dyno.simulate.engine import FEEDS, SimConfig, SimResult, simulate_policy
from dyno.simulate.run import (DEFAULT_POLICIES, MAIN_SLO, OFFLOADING_BASELINES, ONLOADING_SLO, TIERS,
                               OracleDyno, Report, build_policy, feed_of, run, summary)

__all__ = ["FEEDS", "SimConfig", "SimResult", "simulate_policy", "DEFAULT_POLICIES", "MAIN_SLO",
           "OFFLOADING_BASELINES", "ONLOADING_SLO", "TIERS", "OracleDyno", "Report", "build_policy",
           "feed_of", "run", "summary"]
