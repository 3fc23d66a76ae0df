"""Fitting the headline rule on the full-range meta-set, with leave-one-family-out cross-validation.

For each shift family F of the meta-set (`stream_monitor.metaset`), every map fitted on meta-set
windows is fitted again without F's windows (the Sentinel's regressor, with the grid point and
regressor kind of the full fit; the nuclear-norm line; the support), and F's windows are read
through them: their held-out readings (`HeldOut`). Estimators that need no meta-set map keep the
values they recorded. The anchored online estimate is measured with the held-out frozen-feed
Sentinel as its source headline and the anchor line (`anchor_line`) fitted without the family.
The rule (`estimation.headline.HeadlineRule`) is then fitted on the held-out readings of all families; `family_report` fits it again without each family and
measures its headline error and interval coverage on that family, so the reported figures are on
shifts neither the maps nor the rule saw.

Adapters without a calibration of their own get the frozen file's online rule
(`fit_unseen_adapter_rule`): the anchored estimate, its residuals from meta-set windows read
through a line fitted without their family and from each adapter's long held-out streams read
through a line fitted without that adapter's (`unseen_adapter_readings`); `adapter_report` fits
the rule again without each part and scores it there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..estimation.headline import COVERAGE, Choice, HeadlineRule, conformal_offsets, group_weighted_offsets
from ..estimation.pipeline import ANCHORED, META_FITTED
from ..estimation.readings import Feed, Target
from ..estimation.sentinel import SentinelRegressor
from ..estimation.support import Support

__all__ = ["MIN_WINDOWS", "Gap", "HeldOut", "adapter_report", "anchor_line", "family_report", "fit_rule",
           "fit_unseen_adapter_rule", "held_out_readings", "point_gaps", "unseen_adapter_readings", "window_gaps",
           "window_points"]

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


def _adapters(windows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({a for w in windows for a in w["served"]})


@dataclass(frozen=True)
class Gap:
    """One window's served-minus-frozen nuclear-norm score gap and accuracy gap, with its adapter
    and family: a meta-set window's served feed, or a point of an adapter's calibration (a probe
    window of a long held-out stream, family `streams`)."""

    adapter: str
    family: str
    score_gap: float
    accuracy_gap: float
    source_truth: float
    features: tuple[float, ...] | None = None  # the frozen feed's Sentinel features (the support)
    domain: str = ""


def window_gaps(windows: Sequence[dict[str, Any]]) -> list[Gap]:
    """Every meta-set window's gap, per adapter."""
    out = []
    for w in windows:
        frozen = w["frozen"].get("nuclear-norm", {}).get("score")
        for adapter, served in w["served"].items():
            score = served["readings"].get("nuclear-norm", {}).get("score")
            if frozen is not None and score is not None:
                out.append(Gap(adapter, w["family"], score - frozen, served["true_online_acc"] - w["true_source_acc"],
                               w["true_source_acc"], domain=f"{w['domain']}#{w['window']}"))
    return out


def point_gaps(points: Sequence[dict[str, Any]], adapter: str) -> list[Gap]:
    """The gaps of an adapter calibration's points outside the meta-set (probe windows of its
    held-out streams and fixed domains, after hundreds of steps of adaptation, which the meta-set's
    fresh adapters never reach); their family is `streams`."""
    return [Gap(adapter, "streams", (p["nuclear_norm_score"] - p["frozen_nuclear_score"]) / 100.0,
                p["true_online_acc"] - p["true_source_acc"], p["true_source_acc"],
                tuple(p["frozen_sentinel_features"]) if p.get("frozen_sentinel_features") else None, p["domain"])
            for p in points if not str(p.get("domain", "")).startswith("metaset/")
            and None not in (p.get("nuclear_norm_score"), p.get("frozen_nuclear_score"), p.get("true_online_acc"),
                             p.get("true_source_acc"))]


def anchor_line(gaps: Sequence[Gap]) -> tuple[float, float] | None:
    """(slope, intercept) of online minus source accuracy against the served-minus-frozen nuclear-norm
    score gap, least squares over `gaps`; the anchored estimate's map (`FeedStats.anchor_fit`).
    None: fewer than 3 gaps."""
    xy = np.array([(g.score_gap, g.accuracy_gap) for g in gaps])
    if len(xy) < 3 or np.ptp(xy[:, 0]) == 0:
        return None
    slope, intercept = np.polyfit(xy[:, 0], xy[:, 1], 1)
    return float(slope), float(intercept)


def _anchored_value(window: dict[str, Any], score: float | None, held: HeldOut | None,
                    line: tuple[float, float] | None) -> float | None:
    """The anchored estimate of one window: the held-out source Sentinel plus the line's gap."""
    frozen_score = window["frozen"].get("nuclear-norm", {}).get("score")
    if held is None or "sentinel" not in held.values or line is None or score is None or frozen_score is None:
        return None
    return float(np.clip(held.values["sentinel"] + line[0] * (score - frozen_score) + line[1], 0.0, 100.0))


def held_out_readings(windows: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]], target: Target,
                      sentinel: dict[str, Any] | None, adapter: str | None = None,
                      source: Sequence[HeldOut] | None = None, gaps: Sequence[Gap] = ()) -> list[HeldOut]:
    """Every meta-set window's readings for `target`, each read by maps fitted without its family.

    Args:
        windows: the full-range meta-set's windows (`metaset.read_windows`).
        points: the other calibration points the maps are fitted on (e.g. held-out CCC streams);
            they are never held out (they have no readings of the other estimators).
        target: source (the frozen feed) or online (`adapter`'s served feed).
        sentinel: the full fit's Sentinel training set (its grid point and regressor kind are kept).
        source: the source target's held-out readings of the same windows (for the anchored estimate).
        gaps: the anchor line's data besides the meta-set's windows (`point_gaps`); the line is
            fitted on them and on the meta-set's windows of the other families.
    """
    frozen = target == Target.SOURCE
    all_points = list(points) + window_points(windows, adapter)
    all_gaps = [] if frozen else [*window_gaps(windows), *gaps]
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
        anchor = None if frozen else anchor_line([g for g in all_gaps if g.family != family])
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
            anchored = _anchored_value(w, score, source_by.get((w["domain"], w["window"])), anchor)
            if anchored is not None:
                values[ANCHORED] = anchored
            distance = None if support is None or features is None else support.distance(features)
            out.append(HeldOut(family, w["domain"], truth, values, distance, support.margin if support else 0.25,
                               {"window": w["window"]}))
    return out


def _choices(held: Sequence[HeldOut], names: Sequence[str], coverage: float,
             group: Callable[[HeldOut], str] | None = None) -> list[Choice]:
    """Each estimator with at least MIN_WINDOWS residuals, ranked by held-out MAE, with its
    conformal offsets, every shift family weighted alike (`group_weighted_offsets`: a window of a
    new family is the case to cover, not one of the family with most windows); with `group`, the
    widest of those and of the offsets of each group that has enough residuals. A window
    exchangeable with any one group is then covered at `coverage`, whichever group it resembles;
    pooled offsets cover only a window exchangeable with the mixture, and the largest group sets
    them."""
    out = []
    for name in names:
        mine = [h for h in held if name in h.values]
        residuals = [h.truth - h.values[name] for h in mine]
        if len(residuals) < MIN_WINDOWS:
            continue
        low, high = group_weighted_offsets(residuals, [h.family for h in mine], coverage)
        if group is not None:
            by: dict[str, list[float]] = {}
            for h, residual in zip(mine, residuals):
                by.setdefault(group(h), []).append(residual)
            offsets = [conformal_offsets(r, coverage) for r in by.values() if len(r) >= MIN_WINDOWS]
            low, high = min([low, *(o[0] for o in offsets)]), max([high, *(o[1] for o in offsets)])
        out.append(Choice(name, float(np.mean(np.abs(residuals))), low, high, len(residuals)))
    return sorted(out, key=lambda c: c.mae)


def fit_rule(held: Sequence[HeldOut], target: Target, support: Support | None,
             coverage: float = COVERAGE) -> HeadlineRule:
    """The headline rule from held-out readings: inside the support every estimator ranked by its
    held-out MAE on the windows that were inside; outside, only estimators with no meta-set map,
    ranked on the windows that were outside. A region with too few windows to rank an estimator
    (MIN_WINDOWS) ranks it on all windows: a small meta-set (a user's few held-out images) then
    still gives every headline an interval, inside the support as outside."""
    names = sorted({name for h in held for name in h.values})
    inside = _choices([h for h in held if not h.outside], names, coverage)
    ranked_inside = {c.estimator for c in inside}
    inside += [c for c in _choices(held, names, coverage) if c.estimator not in ranked_inside]
    inside.sort(key=lambda c: c.mae)
    free = [n for n in names if n not in META_FITTED]
    outside_windows = [h for h in held if h.outside]
    outside = _choices(outside_windows, free, coverage)
    ranked = {c.estimator for c in outside}
    # too few windows fell outside to rank an estimator there: its error over every window
    outside += [c for c in _choices(held, free, coverage) if c.estimator not in ranked]
    outside.sort(key=lambda c: c.mae)
    return HeadlineRule(target, tuple(inside), tuple(outside), support, coverage)


def _scores(rule: HeadlineRule, mine: Sequence[HeldOut]) -> dict[str, Any]:
    """The rule's headline read on held-out windows: MAE, worst error, coverage, out-of-support share."""
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
    return {"windows": len(mine), "truth_range": [min(h.truth for h in mine), max(h.truth for h in mine)],
            "headline_mae": float(np.mean(errors)) if errors else None,
            "headline_worst": float(np.max(errors)) if errors else None,
            "coverage": float(np.mean(covered)) if covered else None,
            "out_of_support": float(np.mean([h.outside for h in mine])),
            "estimator_mae": {n: float(np.mean([abs(h.truth - h.values[n]) for h in mine if n in h.values]))
                              for n in names}}


def family_report(held: Sequence[HeldOut], target: Target, support: Support | None,
                  coverage: float = COVERAGE, fit: Callable[..., HeadlineRule] | None = None) -> list[dict[str, Any]]:
    """Per family: the rule fitted without it (`fit_rule`, or `fit(held, support, coverage)`), read
    on its windows: the headline's MAE, worst error, interval coverage and out-of-support share, and
    each estimator's held-out MAE."""
    out = []
    for family in sorted({h.family for h in held}):
        others = [h for h in held if h.family != family]
        rule = fit_rule(others, target, support, coverage) if fit is None else fit(others, support, coverage)
        out.append({"family": family, "target": str(target),
                    **_scores(rule, [h for h in held if h.family == family])})
    return out


def unseen_adapter_readings(windows: Sequence[dict[str, Any]], source: Sequence[HeldOut], gaps: Sequence[Gap],
                            support: Support | None) -> list[HeldOut]:
    """The anchored estimate's held-out readings, as for an adapter without a calibration.

    - Meta-set windows: once each (its adapters start fresh and are within a point of each other
      there), with the held-out source Sentinel (`source`) and a line fitted on every gap outside
      the window's family.
    - Calibration points (`gaps`, long held-out streams): a line fitted on the meta-set's windows
      and the other adapters' points only, so each adapter's long-run gaps are read by a line that
      never saw that adapter adapt for long. Their value is the true source accuracy plus that
      line's gap: they measure the gap's error, the meta-set windows the source headline's.
    """
    source_by = {(h.domain, h.extra["window"]): h for h in source}
    meta = window_gaps(windows)
    out = []
    for family in sorted({w["family"] for w in windows}):
        line = anchor_line([g for g in [*meta, *gaps] if g.family != family])
        for w in (w for w in windows if w["family"] == family and w["served"]):
            adapter = _adapters([w])[0]
            served, held = w["served"][adapter], source_by.get((w["domain"], w["window"]))
            value = _anchored_value(w, served["readings"].get("nuclear-norm", {}).get("score"), held, line)
            if value is not None:
                out.append(HeldOut(family, w["domain"], served["true_online_acc"], {ANCHORED: value},
                                   held.distance, held.margin, {"window": w["window"], "adapter": "meta-set"}))
    for adapter in sorted({g.adapter for g in gaps}):
        line = anchor_line([*meta, *(g for g in gaps if g.adapter != adapter)])
        if line is None:
            continue
        for g in (g for g in gaps if g.adapter == adapter):
            distance = support.distance(g.features) if support is not None and g.features else None
            value = float(np.clip(g.source_truth + line[0] * g.score_gap + line[1], 0.0, 100.0))
            out.append(HeldOut(g.family, g.domain, g.source_truth + g.accuracy_gap, {ANCHORED: value}, distance,
                               support.margin if support is not None else 0.25, {"window": 0, "adapter": adapter}))
    return out


def fit_unseen_adapter_rule(held: Sequence[HeldOut], support: Support | None,
                            coverage: float = COVERAGE) -> HeadlineRule:
    """The online rule of adapters without a calibration: the anchored estimate, with conformal
    offsets from `unseen_adapter_readings` inside the frozen feed's support and (widened) outside.

    The residuals come in groups that are not alike: the meta-set's windows (adapters fresh at each
    domain, where adapting the BatchNorm statistics gains most) and each adapter's long streams
    (three quarters of the residuals, smaller gaps). An adapter nobody calibrated may behave like
    either, so the offsets are the widest of each group's (`_choices`' `group`), not the pooled
    ones, which the long streams' many small residuals would set."""
    by = _origin
    inside = _choices([h for h in held if not h.outside], [ANCHORED], coverage, by)
    outside = _choices([h for h in held if h.outside], [ANCHORED], coverage, by) or \
        _choices(held, [ANCHORED], coverage, by)
    return HeadlineRule(Target.ONLINE, tuple(inside), tuple(outside), support, coverage, feed=Feed.FROZEN)


def _origin(held: HeldOut) -> str:
    """The group of an unseen-adapter residual: "meta-set", or the adapter whose long stream it is."""
    return held.extra["adapter"]


def adapter_report(held: Sequence[HeldOut], support: Support | None, coverage: float = COVERAGE) -> list[dict[str, Any]]:
    """Per adapter with long-stream readings: `fit_unseen_adapter_rule` fitted without them, scored on them."""
    out = []
    for adapter in sorted({h.extra["adapter"] for h in held} - {"meta-set"}):
        rule = fit_unseen_adapter_rule([h for h in held if h.extra["adapter"] != adapter], support, coverage)
        out.append({"family": f"adapter {adapter} (long streams)", "target": "online (adapters without a calibration)",
                    **_scores(rule, [h for h in held if h.extra["adapter"] == adapter])})
    meta = [h for h in held if h.extra["adapter"] == "meta-set"]
    if meta:
        out += [{**r, "family": f"meta-set {r['family']}", "target": "online (adapters without a calibration)"}
                for r in family_report(meta + [h for h in held if h.extra["adapter"] != "meta-set"], Target.ONLINE,
                                       support, coverage, fit=fit_unseen_adapter_rule)
                if r["family"] != "streams"]
    return out
