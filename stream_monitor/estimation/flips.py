"""Weighted flips: Entropy Enigma (Press et al., ICML 2024), github.com/oripress/EntropyEnigma.

WF = sum_i 1[pred_i(t) != pred_i(cycle start)] * rank_pct(conf_i(cycle start)); the probe worker
counts it with `count_flips` on its reference set (and on the spread set, sampled by `position_hash`).
It is mapped to the frozen model's accuracy on the stream with a quadratic f fitted per snapshot
step on a calibration meta-set (the paper's ResNet-50 f ships as a calibration file); a probe of n
images is scaled to the fit's probe size (the paper's limited-memory setting: 100 images x10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def count_flips(reference: np.ndarray, confidences: np.ndarray, predictions: np.ndarray) -> tuple[int, float]:
    """Entropy Enigma's `count_flips`: the flips, and the flips weighted by the percentile rank of
    the reference confidence."""
    flipped = predictions != reference
    return int(flipped.sum()), float(np.nansum(flipped * percentile_ranks(confidences)))


def position_hash(positions: np.ndarray, cycle: int) -> np.ndarray:
    """splitmix64 of (position, cycle): a uniform key per image, a fresh permutation per cycle."""
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(cycle + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Average-rank percentiles in (0, 1], as pandas' `rank(pct=True)` in Entropy Enigma's `count_flips`:
    a NaN (a diverged model's confidence) stays NaN and the other values are ranked among themselves."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(values)
    ranks = np.full(values.shape, np.nan)
    if valid.any():
        ranks[valid] = rankdata(values[valid], method="average") / valid.sum()
    return ranks


@dataclass(frozen=True)
class FlipsCalibration:
    """f(WF) = a WF^2 + b WF + c, valid for one model, adapter, cadence and probe size."""

    model: str                # model name the fit is for
    coefficients: tuple[float, float, float]  # a, b, c
    fitted_range: tuple[float, float]  # WF (at 1,000 probe images) the fit saw
    cycle_step: int           # adapter steps after the cycle start the fit is for
    probe_size: int = 1000
    adapter: str = "rdumb"
    origin: str = ""

    def __call__(self, weighted_flips: float, probe_size: int) -> tuple[float, bool]:
        """(estimated accuracy in %, extrapolated) for WF measured on `probe_size` images.

        Guards the paper implies: clipped to [0, 100]; above the parabola's vertex (f rises
        again, WF ~ 452 for the paper's fit) the value at the vertex; outside the fitted range
        flagged as extrapolated.
        """
        a, b, c = self.coefficients
        wf = weighted_flips * self.probe_size / probe_size
        if a > 0 and wf > -b / (2 * a):
            wf_eval = -b / (2 * a)
        else:
            wf_eval = wf
        value = a * wf_eval * wf_eval + b * wf_eval + c
        lo, hi = self.fitted_range
        return min(100.0, max(0.0, value)), not lo <= wf <= hi
