"""The estimator contract, as ignite's `Metric`: `reset`, `update`, `compute`; and the registry."""

from __future__ import annotations

from ..registry import Registry

__all__ = ["ESTIMATORS", "NotComputableError"]

#: name -> window estimator class (`stream-monitor list estimators`); every registered class runs
#: on each feed it declares, in every run whose requirements it meets (`EstimationPipeline`).
ESTIMATORS: Registry[type] = Registry("estimator")


class NotComputableError(RuntimeError):
    """An estimator or detector has not seen enough data yet (warming up)."""
