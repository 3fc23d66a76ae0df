"""Label-free accuracy estimates and collapse detectors (ignite's reset/update/compute contract)."""

from .base import NotComputableError
from .sentinel import EntropySentinel
from .window import ESTIMATORS as _SOFTMAX_ESTIMATORS

#: Every window estimator, each run on both feeds (served and frozen) by the run loop.
WINDOW_ESTIMATORS = _SOFTMAX_ESTIMATORS + (EntropySentinel,)

__all__ = ["NotComputableError", "WINDOW_ESTIMATORS"]
