"""The headline rule learned on the meta-set, with its 90% intervals (issue 25).

`calibration.rule.fit_rule` measures, for every estimator with a reading on the full-range
meta-set, its error on each shift family while that family was held out of every fit
(leave-one-family-out: the Sentinel, the nuclear-norm line and the support are refitted without
it). The rule keeps, per target and per region of the window:
- **inside** the support (`support.Support`): every estimator, ranked by its held-out MAE on the
  windows that were inside the support of the fit that did not see them;
- **outside** it: only estimators that need no meta-set map (average confidence, DoC, ATC, COT:
  their maps are the clean domain's labelled statistics, which hold on any window), ranked by their
  held-out MAE on the windows that fell outside;
and for each, the 5% and 95% conformal quantiles of its held-out signed residuals (truth minus
estimate) in that region (split conformal prediction, Vovk et al. 2005; per region it is
Mondrian conformal prediction). The headline of a window is the first ranked estimator with a
value; its interval is the value plus those quantiles; outside the support its half-width grows
by `widen` per standard deviation the window lies beyond the margin (about its centre); it is
clipped to [0, 100].

The rule and its inputs (the meta-set's readings) are stored in the calibration file; a run
without a rule for a target uses the fixed order (`pipeline.HEADLINE_ORDER`) and gives no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .readings import Feed, Reading, Target, find
from .support import Support

__all__ = ["COVERAGE", "WIDEN", "Choice", "HeadlineRule", "conformal_offsets", "group_weighted_offsets"]

COVERAGE = 0.9
#: Outside the support, the interval's offsets grow by this share per standard deviation the
#: window lies beyond the margin: the meta-set says nothing of how wrong an estimator is there.
WIDEN = 0.5
#: The feed whose Sentinel features place a target's window inside or outside the support.
FEED_OF = {Target.SOURCE: Feed.FROZEN, Target.ONLINE: Feed.SERVED}


def conformal_offsets(residuals: Sequence[float], coverage: float = COVERAGE) -> tuple[float, float]:
    """(low, high) offsets such that value + [low, high] covers the truth with probability at least
    `coverage` for a new window exchangeable with the residuals' (truth - estimate): the
    ceil((n+1) a)-th smallest residual for a = (1 - coverage)/2 and its mirror (split conformal).
    With too few residuals for the level, the offsets are infinite (no finite interval is valid)."""
    r = np.sort(np.asarray(residuals, dtype=np.float64))
    n = len(r)
    tail = (1.0 - coverage) / 2.0
    k_high = math.ceil((n + 1) * (1.0 - tail) - 1e-9)  # (n + 1) 0.95 is 19.000000000000004 for n = 19
    k_low = math.floor((n + 1) * tail + 1e-9)
    if n == 0 or k_high > n or k_low < 1:
        return -math.inf, math.inf
    return float(r[k_low - 1]), float(r[k_high - 1])


def group_weighted_offsets(residuals: Sequence[float], groups: Sequence[str],
                           coverage: float = COVERAGE) -> tuple[float, float]:
    """(low, high) offsets from the residuals' CDF with every group weighted alike, widened to the
    split-conformal offsets of all residuals where those are wider.

    Pooled residuals cover a window exchangeable with the windows; a window of a shift family
    nobody calibrated on is exchangeable, at best, with a family. Giving each family the same
    weight in the CDF (the pooled-CDF set of Dunn, Wasserman & Ramdas, "Distribution-free
    prediction sets for two-layer hierarchical models", JASA 2022) aims the coverage at a new
    family rather than at the family with the most windows. With a handful of families no
    finite-sample guarantee holds at this level for a new family, so the pooled offsets
    (`conformal_offsets`) stay the least the interval is."""
    r = np.asarray(residuals, dtype=np.float64)
    pooled_low, pooled_high = conformal_offsets(r, coverage)
    if not len(r) or not math.isfinite(pooled_low):
        return pooled_low, pooled_high
    names, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    weight = 1.0 / counts[index]
    order = np.argsort(r, kind="stable")
    cdf = np.cumsum(weight[order]) / weight.sum()
    tail = (1.0 - coverage) / 2.0
    low = r[order][np.searchsorted(cdf, tail - 1e-12)]
    high = r[order][min(np.searchsorted(cdf, 1.0 - tail - 1e-12), len(r) - 1)]
    return float(min(low, pooled_low)), float(max(high, pooled_high))


@dataclass(frozen=True)
class Choice:
    """One ranked estimator of a region: its held-out MAE and residual quantiles there."""

    estimator: str
    mae: float
    low: float
    high: float
    windows: int

    def interval(self, value: float, stretch: float = 1.0) -> tuple[float, float]:
        """value + [low, high], its half-width times `stretch` about its centre, clipped to [0, 100]."""
        centre, half = (self.low + self.high) / 2.0, stretch * (self.high - self.low) / 2.0
        return (float(np.clip(value + centre - half, 0.0, 100.0)), float(np.clip(value + centre + half, 0.0, 100.0)))


@dataclass(frozen=True)
class HeadlineRule:
    """A target's learned headline rule (module docstring)."""

    target: Target
    inside: tuple[Choice, ...]
    outside: tuple[Choice, ...]
    support: Support | None
    coverage: float = COVERAGE
    widen: float = WIDEN
    #: the feed whose Sentinel features are placed against the support (None: the target's own,
    #: FEED_OF); the frozen file's rule for adapters without a calibration places the frozen feed
    feed: Feed | None = None

    def distance(self, readings: Sequence[Reading]) -> float | None:
        """How far the window lies outside the support (None: no support or no features to tell)."""
        sentinel = find(readings, "sentinel", self.feed or FEED_OF[self.target])
        if self.support is None or sentinel is None or sentinel.features is None:
            return None
        return self.support.distance(sentinel.features)

    def stretch(self, distance: float | None) -> float:
        """How much the interval widens at `distance` (1 inside the support)."""
        if self.support is None or distance is None or distance <= self.support.margin:
            return 1.0
        return 1.0 + self.widen * (distance - self.support.margin)

    def pick(self, readings: Sequence[Reading]) -> tuple[Reading | None, bool | None]:
        """The headline reading with its interval, and whether the window is out of support."""
        distance = self.distance(readings)
        outside = distance is not None and distance > self.support.margin
        found = {r.estimator: r for r in readings if r.target == self.target and r.value is not None}
        for choice in (self.outside if outside else self.inside):
            reading = found.get(choice.estimator)
            if reading is None:
                continue
            return (replace(reading, interval=choice.interval(reading.value, self.stretch(distance))),
                    None if distance is None else outside)
        return None, (None if distance is None else outside)

    def to_dict(self) -> dict[str, Any]:
        return {"target": str(self.target), "coverage": self.coverage, "widen": self.widen,
                "support": self.support and self.support.to_dict(),
                "inside": [c.__dict__ for c in self.inside], "outside": [c.__dict__ for c in self.outside],
                **({"feed": str(self.feed)} if self.feed else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadlineRule":
        return cls(Target(data["target"]), tuple(Choice(**c) for c in data["inside"]),
                   tuple(Choice(**c) for c in data["outside"]),
                   Support.from_dict(data["support"]) if data.get("support") else None,
                   float(data["coverage"]), float(data["widen"]), Feed(data["feed"]) if data.get("feed") else None)
