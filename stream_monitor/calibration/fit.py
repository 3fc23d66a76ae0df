"""The fitting maths of a calibration: f per snapshot step, each feed's nuclear-norm line, the
Sentinel's training set (merging calibrations made in parallel: `calibration.merging`).

Every fit reads the meta-set's windows (`Calibration.points`: one dict per probe window with its
flips, raw scores, Sentinel features and labelled accuracies), never a stream being monitored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..estimation.sentinel import FEATURES, MARGINAL_FEATURES, fit_sentinel

__all__ = ["fit_flips", "nuclear_line", "sentinel_set"]


def nuclear_line(points: list[dict[str, Any]], frozen: bool = False) -> tuple[float, float] | None:
    """Accuracy = slope * NN + intercept over the meta-set's windows (Deng et al.'s regression):
    the served outputs' score against the online accuracy, or (`frozen`) the frozen model's
    score against the source accuracy."""
    score, truth = ("frozen_nuclear_score", "true_source_acc") if frozen else ("nuclear_norm_score", "true_online_acc")
    pairs = [(p[score], p[truth]) for p in points if p.get(score) is not None and p.get(truth) is not None]
    if len(pairs) < 3:
        return None
    x, y = np.array(pairs).T
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x / 100.0, y, 1)
    return float(slope), float(intercept)


def sentinel_set(points: list[dict[str, Any]], frozen: bool = False,
                 sidekick: str | None = None) -> dict[str, Any] | None:
    """The Sentinel forest's training set over the meta-set's windows: the served outputs' features
    against the online accuracy, or (`frozen`) the frozen model's against the source accuracy. The
    cross-validation folds hold out whole meta-set runs (a domain, or a stream with all its cycles).
    Without one `sidekick` for all points, the windows' Duos agreement column is left out."""
    features, truth = ("frozen_sentinel_features", "true_source_acc") if frozen else \
        ("sentinel_features", "true_online_acc")
    rows = [(p[features], p[truth], p["domain"].split("#")[0]) for p in points
            if p.get(features) is not None and p.get(truth) is not None]
    if len(rows) < 4:
        return None
    x, y, groups = zip(*rows)
    if sidekick is None:
        x = [f[:len(FEATURES + MARGINAL_FEATURES)] for f in x]
    return fit_sentinel(x, y, groups, sidekick=sidekick)


def fit_flips(points: list[dict[str, Any]], key: str = "weighted_flips",
              min_domains: int = 4) -> dict[int, dict[str, Any]]:
    """Per snapshot step, the least-squares quadratic acc = a WF^2 + b WF + c over the meta-set's
    windows (a line when fewer than `min_domains` + 1 windows, a quadratic needs spread); `key`:
    the weighted flips of the first-images or (spread_weighted_flips) of the spread reference set."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for p in points:
        if p["true_source_acc"] is not None and p.get(key) is not None:
            by_step.setdefault(int(p["cycle_step"]), []).append((p[key], p["true_source_acc"]))
    fits = {}
    for step, pairs in sorted(by_step.items()):
        if len(pairs) < min_domains:
            continue
        wf, acc = np.array(pairs).T
        degree = 2 if len(pairs) > min_domains and np.ptp(wf) > 0 else 1
        coefficients = np.polyfit(wf, acc, degree) if np.ptp(wf) > 0 else np.array([0.0, float(acc.mean())])
        coefficients = np.concatenate([np.zeros(3 - len(coefficients)), coefficients])
        residual = acc - np.polyval(coefficients, wf)
        fits[step] = {"coefficients": [float(c) for c in coefficients], "range": [float(wf.min()), float(wf.max())],
                      "rmse": float(np.sqrt(np.mean(residual ** 2))), "domains": len(pairs)}
    return fits
