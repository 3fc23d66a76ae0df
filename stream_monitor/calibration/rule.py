"""Fitting the headline rule on the full-range meta-set, with leave-one-family-out cross-validation.

For each shift family F of the meta-set (`stream_monitor.metaset`), every map fitted on meta-set
windows is fitted again without F's windows (the Sentinel's regressor, with the grid point and
regressor kind of the full fit; the nuclear-norm line; the support), and F's windows are read
through them: their held-out readings (`HeldOut`). Estimators that need no meta-set map keep the
values they recorded. The anchored online estimate is measured with the held-out frozen-feed
Sentinel as its source headline. The rule (`estimation.headline.HeadlineRule`) is then fitted on
the held-out readings of all families; `family_report` fits it again without each family and
measures its headline error and interval coverage on that family, so the reported figures are on
shifts neither the maps nor the rule saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..estimation.headline import COVERAGE, Choice, HeadlineRule, conformal_offsets
from ..estimation.pipeline import ANCHORED, META_FITTED
from ..estimation.readings import Target
from ..estimation.sentinel import SentinelRegressor
from ..estimation.support import Support

__all__ = ["MIN_WINDOWS", "HeldOut", "family_report", "fit_rule", "held_out_readings", "window_points"]

#: The fewest residuals a 90% interval can stand on (ceil((n + 1) 0.95) <= n).
MIN_WINDOWS = 19


@dataclass(frozen=True)
class HeldOut:
    """One meta-set window read by maps that never saw its family."""

    family: str
    domain: str
    truth: float
    values: dict[str, float]
    distance: float | None
    margin: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outside(self) -> bool:
        return self.distance is not None and self.distance > self.margin


def _feed(window: dict[str, Any], target: Target, adapter: str | None) -> tuple[dict[str, Any], float]:
    if target == Target.SOURCE:
        return window["frozen"], window["true_source_acc"]
    served = window["served"][adapter]
    return served["readings"], served["true_online_acc"]


def _score_x100(readings: dict[str, Any]) -> float | None:
    score = readings.get("nuclear-norm", {}).get("score")
    return None if score is None else 100.0 * score


def window_points(windows: Sequence[dict[str, Any]], adapter: str | None) -> list[dict[str, Any]]:
    """The meta-set's windows as calibration points (`Calibration.points`), so the Sentinel's
    training set and the nuclear-norm lines are fitted on them too (scores x100 as there)."""
    out = []
    for w in windows:
        frozen = w["frozen"]
        served = w["served"].get(adapter) if adapter else None
        out.append({"domain": f"metaset/{w['domain']}#window{w['window']}", "family": w["family"],
                    "cycle_step": None, "true_source_acc": w["true_source_acc"],
                    "true_online_acc": served and served["true_online_acc"],
                    "frozen_sentinel_features": frozen.get("sentinel", {}).get("features"),
                    "frozen_nuclear_score": _score_x100(frozen),
                    "sentinel_features": served and served["readings"].get("sentinel", {}).get("features"),
                    "nuclear_norm_score": served and _score_x100(served["readings"])})
    return out


def _sentinel_rows(points: Sequence[dict[str, Any]], frozen: bool) -> tuple[list, list]:
    key, truth = ("frozen_sentinel_features", "true_source_acc") if frozen else ("sentinel_features", "true_online_acc")
    rows = [(p[key], p[truth]) for p in points if p.get(key) is not None and p.get(truth) is not None]
    return [r[0] for r in rows], [r[1] for r in rows]


def _line(points: Sequence[dict[str, Any]], frozen: bool) -> tuple[float, float] | None:
    key, truth = ("frozen_nuclear_score", "true_source_acc") if frozen else ("nuclear_norm_score", "true_online_acc")
    pairs = np.array([(p[key], p[truth]) for p in points if p.get(key) is not None and p.get(truth) is not None])
    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0:
        return None
    slope, intercept = np.polyfit(pairs[:, 0] / 100.0, pairs[:, 1], 1)
    return float(slope), float(intercept)


def held_out_readings(windows: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]], target: Target,
                      sentinel: dict[str, Any] | None, adapter: str | None = None,
                      source: Sequence[HeldOut] | None = None) -> list[HeldOut]:
    """Every meta-set window's readings for `target`, each read by maps fitted without its family.

    Args:
        windows: the full-range meta-set's windows (`metaset.read_windows`).
        points: the other calibration points the maps are fitted on (e.g. held-out CCC streams);
            they are never held out (they have no readings of the other estimators).
        target: source (the frozen feed) or online (`adapter`'s served feed).
        sentinel: the full fit's Sentinel training set (its grid point and regressor kind are kept).
        source: the source target's held-out readings of the same windows (for the anchored estimate).
    """
    frozen = target == Target.SOURCE
    all_points = list(points) + window_points(windows, adapter)
    source_by = {(h.domain, h.extra["window"]): h for h in source or ()}
    out = []
    for family in sorted({w["family"] for w in windows}):
        train = [p for p in all_points if p.get("family") != family]
        x, y = _sentinel_rows(train, frozen)
        width = min(len(f) for f in x)
        regressor = None
        if sentinel is not None and len(y) >= 4:
            regressor = SentinelRegressor({**sentinel, "features": [list(f)[:width] for f in x], "accuracy": y,
                                           "sidekick": None})
        support = Support.of(x) if x else None
        line = _line(train, frozen)
        frozen_line = _line(train, True)
        for w in (w for w in windows if w["family"] == family):
            readings, truth = _feed(w, target, adapter)
            values = {name: r["value"] for name, r in readings.items()
                      if r.get("value") is not None and name not in META_FITTED}
            features = readings.get("sentinel", {}).get("features")
            if regressor is not None and features is not None:
                values["sentinel"] = regressor(features)
            score = readings.get("nuclear-norm", {}).get("score")
            if line is not None and score is not None:
                values["nuclear-norm"] = float(np.clip(line[0] * score + line[1], 0.0, 100.0))
            held = source_by.get((w["domain"], w["window"]))
            frozen_score = w["frozen"].get("nuclear-norm", {}).get("score")
            if (not frozen and held is not None and "sentinel" in held.values and frozen_line is not None
                    and score is not None and frozen_score is not None):
                values[ANCHORED] = float(np.clip(held.values["sentinel"] + frozen_line[0] * (score - frozen_score),
                                                 0.0, 100.0))
            distance = None if support is None or features is None else support.distance(features)
            out.append(HeldOut(family, w["domain"], truth, values, distance, support.margin if support else 0.25,
                               {"window": w["window"]}))
    return out


def _choices(held: Sequence[HeldOut], names: Sequence[str], coverage: float) -> list[Choice]:
    out = []
    for name in names:
        residuals = [h.truth - h.values[name] for h in held if name in h.values]
        if len(residuals) < MIN_WINDOWS:
            continue
        low, high = conformal_offsets(residuals, coverage)
        out.append(Choice(name, float(np.mean(np.abs(residuals))), low, high, len(residuals)))
    return sorted(out, key=lambda c: c.mae)


def fit_rule(held: Sequence[HeldOut], target: Target, support: Support | None,
             coverage: float = COVERAGE) -> HeadlineRule:
    """The headline rule from held-out readings: inside the support every estimator ranked by its
    held-out MAE on the windows that were inside; outside, only estimators with no meta-set map,
    ranked on the windows that were outside (on all windows where fewer than MIN_WINDOWS were)."""
    names = sorted({name for h in held for name in h.values})
    inside = _choices([h for h in held if not h.outside], names, coverage)
    free = [n for n in names if n not in META_FITTED]
    outside_windows = [h for h in held if h.outside]
    outside = _choices(outside_windows, free, coverage)
    ranked = {c.estimator for c in outside}
    # too few windows fell outside to rank an estimator there: its error over every window
    outside += [c for c in _choices(held, free, coverage) if c.estimator not in ranked]
    outside.sort(key=lambda c: c.mae)
    return HeadlineRule(target, tuple(inside), tuple(outside), support, coverage)


def family_report(held: Sequence[HeldOut], target: Target, support: Support | None,
                  coverage: float = COVERAGE) -> list[dict[str, Any]]:
    """Per family: the rule fitted without it, read on its windows: the headline's MAE, worst error,
    interval coverage and out-of-support share, and each estimator's held-out MAE."""
    out = []
    for family in sorted({h.family for h in held}):
        mine = [h for h in held if h.family == family]
        rule = fit_rule([h for h in held if h.family != family], target, support, coverage)
        errors, covered = [], []
        for h in mine:
            ranked = rule.outside if h.outside else rule.inside
            choice = next((c for c in ranked if c.estimator in h.values), None)
            if choice is None:
                continue
            value = h.values[choice.estimator]
            low, high = choice.interval(value, 1.0 + rule.widen * (h.distance - h.margin) if h.outside else 1.0)
            errors.append(abs(h.truth - value))
            covered.append(bool(low <= h.truth <= high))
        names = sorted({n for h in mine for n in h.values})
        out.append({"family": family, "target": str(target), "windows": len(mine),
                    "truth_range": [min(h.truth for h in mine), max(h.truth for h in mine)],
                    "headline_mae": float(np.mean(errors)) if errors else None,
                    "headline_worst": float(np.max(errors)) if errors else None,
                    "coverage": float(np.mean(covered)) if covered else None,
                    "out_of_support": float(np.mean([h.outside for h in mine])),
                    "estimator_mae": {n: float(np.mean([abs(h.truth - h.values[n]) for h in mine if n in h.values]))
                                      for n in names}})
    return out
