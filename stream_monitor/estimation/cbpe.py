"""A CBPE-style estimate (NannyML's confidence-based performance estimation,
docs/how_it_works/performance_estimation.rst), a baseline.

Multiclass CBPE reads accuracy as the mean calibrated probability of the predicted class. Here
the calibration is one isotonic map of the max-softmax to the chance of being right (a top-label
calibration, where NannyML calibrates every class column one-vs-rest and renormalises), fitted on
the calibration's labelled held-out domains and used only where it lowered the held-out ECE
(NannyML's `needs_calibration`); otherwise the raw max-softmax is read, which is AC. The map lives
in `baseline_maps.py`'s per-model file, not in the calibration. CBPE assumes the model's
calibration holds on the stream: adaptation breaks that (research/risk_monitoring.md 4.3).
"""

from __future__ import annotations

import numpy as np

from .base import ESTIMATORS, NotComputableError
from .baseline_maps import maps_for
from .readings import Feed
from .window import FeedStats, WindowEstimator


def calibrated_confidence(probs: np.ndarray, isotonic: tuple[tuple[float, ...], tuple[float, ...]] | None) -> np.ndarray:
    """The max-softmax through the isotonic map (sklearn's IsotonicRegression.predict with
    out_of_bounds="clip": linear between knots, flat outside), or as is without one."""
    confidence = np.asarray(probs, np.float64).max(1)
    if isotonic is None:
        return confidence
    knots, values = isotonic
    return np.interp(confidence, knots, values)


@ESTIMATORS.register("cbpe", description=(
    "CBPE-style (NannyML): the mean isotonic-calibrated max-softmax, calibrated only where that lowers "
    "held-out ECE; baseline"))
class CBPE(WindowEstimator):
    """CBPE-style accuracy: the window's mean calibrated max-softmax (raw softmax, no temperature)."""

    name = "cbpe"
    state_keys = ("total", "count")

    def __init__(self, stats: FeedStats | None = None, feed: Feed = Feed.SERVED,
                 isotonic: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> None:
        self.isotonic = isotonic
        super().__init__(stats, feed)

    @classmethod
    def create(cls, stats, feed, *, num_classes, sidekick=None):
        maps = maps_for(num_classes)
        return cls(stats, feed, maps.cbpe_isotonic if maps else None)

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, probs: np.ndarray) -> None:
        if len(probs):
            self.total += float(calibrated_confidence(probs, self.isotonic).sum())
            self.count += len(probs)

    def compute(self) -> float:
        if not self.count:
            raise NotComputableError("cbpe has seen no image yet")
        return 100.0 * self.total / self.count
