"""The support of a calibration: the region of window features its meta-set covered.

A regressor fitted on windows of 10-51% accuracy reads a clean window (17 of 20 features outside
the training range) as 8% (issue 25). A window is **out of support** when one of the Sentinel's
window features that do not grow with the window's size lies further outside the meta-set's range
than `MARGIN` of that feature's spread (its standard deviation over the meta-set): the distance
is the largest such excess, in standard deviations, and 0 inside the range. The headline rule
(`headline.HeadlineRule`) then reads another region of its table: estimators that need no
meta-set map, with their intervals widened by the distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .sentinel import ALL_FEATURES

__all__ = ["MARGIN", "SUPPORT_FEATURES", "Support"]

#: Features whose value does not drift with the window's size (a max or a sum over a longer window
#: grows; a mean, a quantile or a class share does not): a meta-set of 512-image windows then
#: speaks for a probe window of thousands.
SUPPORT_FEATURES = ("mean", "q25", "q50", "q75", "nll_avg", "top_share", "class_entropy", "prior_overlap")
#: How far (in standard deviations of the feature over the meta-set) a window may lie outside the
#: meta-set's range and still count as inside.
MARGIN = 0.25


@dataclass(frozen=True)
class Support:
    """Per SUPPORT_FEATURES column: the meta-set's minimum, maximum and standard deviation."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    scale: tuple[float, ...]
    margin: float = MARGIN

    @classmethod
    def of(cls, features: Sequence[Sequence[float]], margin: float = MARGIN) -> "Support":
        """The support of a meta-set's window features (rows: prefixes of ALL_FEATURES)."""
        x = _columns(np.asarray([list(f)[:len(ALL_FEATURES) - 1] for f in features], dtype=np.float64))
        scale = np.maximum(x.std(0), 1e-6)
        return cls(tuple(x.min(0).tolist()), tuple(x.max(0).tolist()), tuple(scale.tolist()), margin)

    def distance(self, features: Sequence[float]) -> float:
        """How far outside the meta-set's range the window lies, in standard deviations (0 inside)."""
        x = _columns(np.asarray(features, dtype=np.float64)[None])[0]
        low, high, scale = (np.asarray(v) for v in (self.low, self.high, self.scale))
        return float(np.max(np.maximum(0.0, np.maximum(low - x, x - high)) / scale))

    def contains(self, features: Sequence[float]) -> bool:
        return self.distance(features) <= self.margin

    def to_dict(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high), "scale": list(self.scale), "margin": self.margin}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Support":
        return cls(tuple(data["low"]), tuple(data["high"]), tuple(data["scale"]), float(data["margin"]))


def _columns(x: np.ndarray) -> np.ndarray:
    return x[:, [ALL_FEATURES.index(name) for name in SUPPORT_FEATURES]]
