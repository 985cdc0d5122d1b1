"""The offline stage: what dyno learns about a model once, before serving it.

    plan = dyno.offline.nominal_plan(model)        # a plan with nominal figures (nothing measured)
"""

from dyno.offline.nominal import nominal_plan

__all__ = ["nominal_plan"]
