"""The estimator contract, as ignite's `Metric`: `reset`, `update`, `compute`."""

from __future__ import annotations


class NotComputableError(RuntimeError):
    """An estimator or detector has not seen enough data yet (warming up)."""
