"""The support of a calibration: the region of window features its meta-set covered.

A regressor fitted on windows of 10-51% accuracy reads a clean window (17 of 20 features outside
the training range) as 8% (issue 25). A window is **out of support** when one of the Sentinel's
window features that do not grow with the window's size lies further outside the meta-set's range
than `MARGIN` of that feature's spread (its standard deviation over the meta-set): the distance
is the largest such excess, in standard deviations, and 0 inside the range. The headline rule
(`headline.HeadlineRule`) then reads another region of its table: estimators that need no
meta-set map, with their intervals widened by the distance.

A box cannot see a window whose features are each within range but combine as no meta-set window's
do (a window of half clean and half corrupted images: its confidence profile is bimodal). The
**novelty test** places the window among the meta-set's windows instead: its distance to the
`NEIGHBOURS`-th nearest one (standardised support features) against the (1 - `NOVELTY_LEVEL`)
quantile of the same distance for the meta-set's own windows, each measured without the windows of
its own group (shift family or stream), so that a window is called novel as often as a window of
an unseen family was (conformal novelty detection: Vovk et al., 2005; Bates et al., "Testing for
outliers with conformal p-values", Ann. Statist. 2023). Whether a rule reads novel windows as
outside is learned per target (`headline.HeadlineRule.novelty`, calibration.fullrange).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .sentinel import ALL_FEATURES

__all__ = ["MARGIN", "NEIGHBOURS", "NOVELTY_LEVEL", "SUPPORT_FEATURES", "Support"]

#: Features whose value does not drift with the window's size (a max or a sum over a longer window
#: grows; a mean, a quantile or a class share does not): a meta-set of 512-image windows then
#: speaks for a probe window of thousands.
SUPPORT_FEATURES = ("mean", "q25", "q50", "q75", "nll_avg", "top_share", "class_entropy", "prior_overlap")
#: How far (in standard deviations of the feature over the meta-set) a window may lie outside the
#: meta-set's range and still count as inside.
MARGIN = 0.25
#: The novelty test's neighbour (the k-th nearest meta-set window) and level (the share of windows
#: of an unseen group it calls novel), set before any fit, not tuned.
NEIGHBOURS, NOVELTY_LEVEL = 5, 0.1


@dataclass(frozen=True)
class Support:
    """Per SUPPORT_FEATURES column: the meta-set's minimum, maximum and standard deviation; and,
    where the windows' groups were given, the novelty test's standardised windows and threshold."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    scale: tuple[float, ...]
    margin: float = MARGIN
    reference: tuple[tuple[float, ...], ...] | None = None  # the windows, (x - mean) / scale
    centre: tuple[float, ...] | None = None                 # their mean
    threshold: float | None = None                          # the novelty test's distance
    neighbours: int = NEIGHBOURS

    @classmethod
    def of(cls, features: Sequence[Sequence[float]], margin: float = MARGIN,
           groups: Sequence[str] | None = None) -> "Support":
        """The support of a meta-set's window features (rows: prefixes of ALL_FEATURES); with each
        row's `groups`, also the novelty test (none where some row has too few neighbours outside
        its own group)."""
        x = _columns(np.asarray([list(f)[:len(ALL_FEATURES) - 1] for f in features], dtype=np.float64))
        scale = np.maximum(x.std(0), 1e-6)
        box = cls(tuple(x.min(0).tolist()), tuple(x.max(0).tolist()), tuple(scale.tolist()), margin)
        if groups is None:
            return box
        centre = x.mean(0)
        z = (x - centre) / scale
        labels = np.asarray(groups)
        if len(labels) != len(z):
            raise ValueError(f"{len(labels)} groups for {len(z)} windows")
        own = []
        for i in range(len(z)):
            others = z[labels != labels[i]]
            if len(others) < NEIGHBOURS:
                return box
            own.append(_kth_distance(others, z[i], NEIGHBOURS))
        threshold = float(np.quantile(own, 1.0 - NOVELTY_LEVEL))
        return replace(box, reference=tuple(tuple(r) for r in z.tolist()), centre=tuple(centre.tolist()),
                       threshold=threshold)

    def novel(self, features: Sequence[float]) -> bool:
        """Whether the window lies further from the meta-set's windows than the novelty test allows
        (False without the test)."""
        if self.reference is None or self.threshold is None:
            return False
        x = _columns(np.asarray(features, dtype=np.float64)[None])[0]
        z = (x - np.asarray(self.centre)) / np.asarray(self.scale)
        return _kth_distance(np.asarray(self.reference), z, self.neighbours) > self.threshold

    def distance(self, features: Sequence[float]) -> float:
        """How far outside the meta-set's range the window lies, in standard deviations (0 inside)."""
        x = _columns(np.asarray(features, dtype=np.float64)[None])[0]
        low, high, scale = (np.asarray(v) for v in (self.low, self.high, self.scale))
        return float(np.max(np.maximum(0.0, np.maximum(low - x, x - high)) / scale))

    def contains(self, features: Sequence[float]) -> bool:
        return self.distance(features) <= self.margin

    def to_dict(self) -> dict[str, Any]:
        out = {"low": list(self.low), "high": list(self.high), "scale": list(self.scale), "margin": self.margin}
        if self.reference is not None:
            out.update(reference=[list(r) for r in self.reference], centre=list(self.centre),
                       threshold=self.threshold, neighbours=self.neighbours)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Support":
        novelty = {}
        if data.get("reference") is not None:  # a file from before the novelty test has none
            novelty = dict(reference=tuple(tuple(r) for r in data["reference"]), centre=tuple(data["centre"]),
                           threshold=float(data["threshold"]), neighbours=int(data["neighbours"]))
        return cls(tuple(data["low"]), tuple(data["high"]), tuple(data["scale"]), float(data["margin"]), **novelty)


def _kth_distance(rows: np.ndarray, z: np.ndarray, k: int) -> float:
    """The Euclidean distance from `z` to its k-th nearest row."""
    return float(np.partition(np.sqrt(((rows - z) ** 2).sum(1)), k - 1)[k - 1])


def _columns(x: np.ndarray) -> np.ndarray:
    return x[:, [ALL_FEATURES.index(name) for name in SUPPORT_FEATURES]]
