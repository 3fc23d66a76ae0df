"""The learned headline rule: conformal intervals, the support and its fallback, the guard."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_monitor.calibration.format import Calibration
from stream_monitor.calibration.rule import (HeldOut, adapter_report, anchor_line, family_report, fit_rule,
                                             fit_unseen_adapter_rule, point_gaps, unseen_adapter_readings,
                                             window_gaps)
from stream_monitor.estimation.context import EstimationContext
from stream_monitor.estimation.headline import Choice, HeadlineRule, conformal_offsets, group_weighted_offsets
from stream_monitor.estimation.pipeline import ANCHORED, derive
from stream_monitor.metaset import merge_windows
from stream_monitor.estimation.readings import Feed, Reading, Target
from stream_monitor.estimation.sentinel import SentinelRegressor, marginal_features, profile, window_features
from stream_monitor.estimation.support import SUPPORT_FEATURES, Support


def test_conformal_offsets_cover_new_residuals_at_the_level():
    rng = np.random.default_rng(0)
    residuals = rng.normal(-3.0, 5.0, 200)  # a biased estimator: truth 3 points under it on average
    low, high = conformal_offsets(residuals)
    assert low < -3.0 < high
    fresh = rng.normal(-3.0, 5.0, 20000)
    coverage = np.mean((fresh >= low) & (fresh <= high))
    assert 0.87 <= coverage <= 0.95


def test_conformal_offsets_need_enough_residuals():
    assert conformal_offsets([1.0] * 18) == (-math.inf, math.inf)  # no finite 90% interval from 18
    low, high = conformal_offsets(list(range(19)))
    assert (low, high) == (0.0, 18.0)  # the extreme ranks: the widest interval there is


def test_group_weighted_offsets_aim_at_a_new_family_and_are_never_narrower_than_pooled():
    rng = np.random.default_rng(5)
    # a family of 150 windows read within 1 point and two of 15 read within 10: pooled, the first
    # sets the offsets; weighted alike, each family gets a third of the CDF
    residuals = [*rng.uniform(-1, 1, 150), *rng.uniform(-10, 10, 15), *rng.uniform(-10, 10, 15)]
    groups = ["easy"] * 150 + ["hard"] * 15 + ["harder"] * 15
    pooled = conformal_offsets(residuals)
    low, high = group_weighted_offsets(residuals, groups)
    assert low <= pooled[0] and high >= pooled[1]
    hard = np.asarray(residuals[150:])
    assert np.mean((hard >= pooled[0]) & (hard <= pooled[1])) < 0.7  # pooled misses the hard families
    assert np.mean((hard >= low) & (hard <= high)) >= 0.85
    assert group_weighted_offsets(residuals, ["all"] * len(residuals)) == pooled  # one family: split conformal
    assert group_weighted_offsets([1.0] * 18, ["a"] * 18) == (-math.inf, math.inf)


def window(confidence: float, size: int = 256, k: int = 10) -> list[float]:
    """Sentinel features of a window whose images put about `confidence` on their class."""
    spread = np.clip(confidence + np.linspace(-0.05, 0.05, size), 1.0 / k, 0.999)
    probs = np.repeat(((1 - spread) / (k - 1))[:, None], k, 1)
    classes = np.arange(size) % k
    probs[np.arange(size), classes] = spread
    entropy, nll = profile(probs)
    return list(window_features(entropy, nll)) + marginal_features(np.bincount(classes, minlength=k))


def sentinel_reading(feed: Feed, features, value: float) -> Reading:
    target = Target.SOURCE if feed == Feed.FROZEN else Target.ONLINE
    return Reading("sentinel", feed, target, value, features=tuple(features))


def rule(support: Support) -> HeadlineRule:
    return HeadlineRule(Target.SOURCE, inside=(Choice("sentinel", 2.0, -3.0, 4.0, 100),
                                               Choice("average-confidence", 9.0, -20.0, 2.0, 100)),
                        outside=(Choice("average-confidence", 9.0, -20.0, 2.0, 100),),
                        support=support)


def test_support_flags_a_window_outside_the_meta_set_and_the_headline_falls_back():
    support = Support.of([window(c) for c in np.linspace(0.2, 0.6, 9)])
    assert support.contains(window(0.4))
    assert not support.contains(window(0.99))  # the clean window, against a mid-range meta-set
    context = EstimationContext(rules={Target.SOURCE: rule(support)})

    inside = derive([sentinel_reading(Feed.FROZEN, window(0.4), 40.0),
                     Reading("average-confidence", Feed.FROZEN, Target.SOURCE, 45.0)], context)
    assert inside.source.estimator == "sentinel" and inside.source.interval == (37.0, 44.0)
    assert inside.source_out_of_support is False

    clean = derive([sentinel_reading(Feed.FROZEN, window(0.99), 10.0),
                    Reading("average-confidence", Feed.FROZEN, Target.SOURCE, 97.0)], context)
    assert clean.source.estimator == "average-confidence"  # never the regressor outside its support
    assert clean.source_out_of_support is True
    low, high = clean.source.interval
    assert low < 97.0 - 20.0 and high == 100.0  # widened beyond the rule's offsets, clipped to 100
    columns = clean.columns()
    assert columns["est_source_out_of_support"] is True and columns["est_source_lo"] == low


def test_without_features_or_a_rule_the_flag_is_unknown():
    support = Support.of([window(c) for c in np.linspace(0.2, 0.6, 9)])
    context = EstimationContext(rules={Target.SOURCE: rule(support)})
    estimate = derive([Reading("average-confidence", Feed.FROZEN, Target.SOURCE, 45.0)], context)
    assert estimate.source_out_of_support is None and estimate.source.interval == (25.0, 47.0)
    fixed = derive([Reading("nuclear-norm", Feed.FROZEN, Target.SOURCE, 45.0)], EstimationContext())
    assert fixed.source.interval is None and fixed.columns()["est_source_lo"] is None


def test_a_window_more_confident_than_the_training_set_never_reads_below_its_most_confident_window():
    confidences = np.linspace(0.3, 0.7, 12)
    # a mid-range meta-set where accuracy falls as confidence rises (confidently wrong windows),
    # except its most confident window: a line carries the trend past the edge
    accuracy = list(70.0 - 100.0 * (confidences - 0.3))
    accuracy[-1] = 60.0
    training = {"features": [window(c) for c in confidences], "accuracy": accuracy, "params": {},
                "regressor": "ridge", "seed": 0, "sidekick": None}
    regressor = SentinelRegressor(training)
    assert regressor(window(0.5)) < 60.0  # inside, the line reads as fitted
    assert regressor(window(0.99)) >= 60.0
    assert regressor.guard(window(0.5)) == 0.0


def test_a_window_less_confident_than_the_training_set_never_reads_above_its_least_confident_window():
    confidences = np.linspace(0.3, 0.7, 12)
    # accuracy rises as confidence falls past the least confident windows: a line carries it on,
    # and a near-uniform window (a destroyed image's outputs) would read far above chance
    accuracy = list(90.0 - 100.0 * (confidences - 0.3))
    accuracy[0] = 30.0
    training = {"features": [window(c) for c in confidences], "accuracy": accuracy, "params": {},
                "regressor": "ridge", "seed": 0, "sidekick": None}
    regressor = SentinelRegressor(training)
    assert regressor(window(0.5)) > 30.0  # inside, the line reads as fitted
    assert regressor.ceiling(window(0.5)) == 100.0
    uniform = window(0.1)  # every image's outputs at 1/K: entropy log K
    assert regressor.ceiling(uniform) == 30.0
    assert regressor(uniform) <= 30.0


def held(family: str, truth: float, values: dict, distance: float = 0.0) -> HeldOut:
    return HeldOut(family, family, truth, values, distance)


def test_fit_rule_ranks_by_held_out_error_and_keeps_meta_fitted_estimators_out_of_the_outside_region():
    rng = np.random.default_rng(1)
    windows = []
    for family in ("a", "b", "c"):
        for _ in range(30):
            truth = float(rng.uniform(10, 95))
            windows.append(held(family, truth, {"sentinel": truth + rng.normal(0, 2),
                                                "average-confidence": truth + rng.normal(8, 4)},
                                distance=float(rng.choice([0.0, 2.0]))))
    fitted = fit_rule(windows, Target.SOURCE, None)
    assert [c.estimator for c in fitted.inside] == ["sentinel", "average-confidence"]
    assert [c.estimator for c in fitted.outside] == ["average-confidence"]
    report = family_report(windows, Target.SOURCE, None)
    assert [r["family"] for r in report] == ["a", "b", "c"]
    assert all(r["coverage"] >= 0.75 for r in report)


def test_a_region_with_too_few_windows_ranks_on_all_so_every_headline_has_an_interval():
    rng = np.random.default_rng(2)
    # a small meta-set: 24 windows, 4 of them inside the support (too few to rank an estimator there)
    windows = [held(family, truth, {"sentinel": truth + rng.normal(0, 2), "average-confidence": truth + 8.0},
                    distance=0.0 if k < 4 else 2.0)
               for k, (family, truth) in enumerate((f, float(t)) for f in "abc" for t in rng.uniform(10, 95, 8))]
    fitted = fit_rule(windows, Target.SOURCE, None)
    assert [c.estimator for c in fitted.inside] == ["sentinel", "average-confidence"]
    assert all(c.windows == len(windows) for c in fitted.inside)  # the residuals of every window
    assert [c.estimator for c in fitted.outside] == ["average-confidence"]
    assert fitted.outside[0].windows == 20  # enough outside: ranked there


def test_the_rule_round_trips_through_a_calibration_file(tmp_path):
    support = Support.of([window(c) for c in np.linspace(0.2, 0.6, 9)])
    written = Calibration(model="m", model_sha256=None, adapter=None, hyperparameters=None, probe_size=None,
                          probe_every=100, cycle=None, domains=[], rules={"source": rule(support).to_dict()},
                          meta_windows=[{"family": "affine", "domain": "affine:3", "window": 0}])
    loaded = Calibration.load(written.save(tmp_path / "c.json"))
    assert loaded.headline_rules() == {Target.SOURCE: rule(support)}
    assert loaded.meta_windows == written.meta_windows
    assert len(support.low) == len(SUPPORT_FEATURES)
    context = EstimationContext(rules=loaded.headline_rules())
    assert EstimationContext.from_dict(context.to_dict()).rules == context.rules


def metaset(rng: np.random.Generator, adapters: dict[str, float], families=("a", "b", "c", "d")) -> list[dict]:
    """Meta-set windows whose served accuracy gap is `slope` x the nuclear-norm score gap (+ noise)."""
    out = []
    for family in families:
        for k in range(12):
            source, frozen_score = float(rng.uniform(20, 90)), float(rng.uniform(0.3, 0.9))
            served = {}
            for name, slope in adapters.items():
                gap = float(rng.uniform(-0.1, 0.2))
                served[name] = {"true_online_acc": source + slope * gap + rng.normal(0, 1.0),
                                "readings": {"nuclear-norm": {"value": None, "score": frozen_score + gap}}}
            out.append({"family": family, "domain": f"{family}:{k}", "window": 0, "true_source_acc": source,
                        "frozen": {"nuclear-norm": {"value": None, "score": frozen_score}}, "served": served})
    return out


def source_held(windows: list[dict]) -> list[HeldOut]:
    """A perfect held-out source Sentinel, inside the support."""
    return [HeldOut(w["family"], w["domain"], w["true_source_acc"], {"sentinel": w["true_source_acc"]}, 0.0,
                    extra={"window": w["window"]}) for w in windows]


def test_the_anchor_line_is_fitted_on_every_adapters_gap():
    windows = metaset(np.random.default_rng(0), {"x": 60.0, "y": 60.0})
    gaps = window_gaps(windows)
    assert len(gaps) == 2 * len(windows) and {g.adapter for g in gaps} == {"x", "y"}
    slope, intercept = anchor_line(gaps)
    assert slope == pytest.approx(60.0, abs=3.0) and intercept == pytest.approx(0.0, abs=1.0)
    assert anchor_line(gaps[:2]) is None  # fewer than 3 gaps


def long_stream_points(rng: np.random.Generator, slope: float, n: int = 30) -> list[dict]:
    """An adapter calibration's points of long held-out streams (scores x100, as the files keep them)."""
    out = []
    for k in range(n):
        source, frozen, gap = float(rng.uniform(20, 60)), float(rng.uniform(30, 90)), float(rng.uniform(0, 10))
        out.append({"domain": f"heldout-ccc/s#{k}", "true_source_acc": source, "frozen_nuclear_score": frozen,
                    "nuclear_norm_score": frozen + gap, "true_online_acc": source + slope * gap / 100.0,
                    "frozen_sentinel_features": None})
    return out + [{"domain": "metaset/a:0#window0", "true_source_acc": 50.0}]  # a meta-set point: not a stream's


def test_unseen_adapter_readings_read_each_adapters_long_streams_through_a_line_that_never_saw_them():
    rng = np.random.default_rng(2)
    windows = metaset(rng, {"fresh": 60.0})
    gaps = point_gaps(long_stream_points(rng, 60.0), "alike") + point_gaps(long_stream_points(rng, -200.0), "odd")
    assert {g.family for g in gaps} == {"streams"} and len(gaps) == 60
    held = unseen_adapter_readings(windows, source_held(windows), gaps, None)
    assert {h.extra["adapter"] for h in held} == {"meta-set", "alike", "odd"}
    error = {a: np.mean([abs(h.truth - h.values[ANCHORED]) for h in held if h.extra["adapter"] == a])
             for a in ("alike", "odd")}
    # "odd" loses accuracy as its score gap grows: a line that never saw it cannot know, and it shows
    assert error["odd"] > 2 * error["alike"], error
    rule = fit_unseen_adapter_rule(held, None)
    assert rule.feed == Feed.FROZEN and [c.estimator for c in rule.inside] == [ANCHORED]
    assert HeadlineRule.from_dict(rule.to_dict()) == rule
    report = adapter_report(held, None)
    assert [r["family"] for r in report][:2] == ["adapter alike (long streams)", "adapter odd (long streams)"]
    assert {r["family"] for r in report[2:]} == {"meta-set a", "meta-set b", "meta-set c", "meta-set d"}


def test_unseen_adapter_offsets_cover_the_widest_group_not_the_largest():
    rng = np.random.default_rng(4)

    def unseen(origin: str, error: float) -> HeldOut:
        truth = float(rng.uniform(20, 80))
        return HeldOut("f", "d", truth, {ANCHORED: truth - error}, 0.0, extra={"window": 0, "adapter": origin})

    # many long-stream residuals within 2 points, a few meta-set ones within 15: pooled, the long
    # streams would set the offsets, and a window like the meta-set's would be covered ~60% of the time
    held = [unseen("rdumb", float(e)) for e in rng.uniform(-2, 2, 200)] + \
        [unseen("meta-set", float(e)) for e in rng.uniform(-15, 15, 40)]
    choice = fit_unseen_adapter_rule(held, None).inside[0]
    meta = [h.truth - h.values[ANCHORED] for h in held if h.extra["adapter"] == "meta-set"]
    assert np.mean([choice.low <= r <= choice.high for r in meta]) >= 0.9
    assert choice.windows == 240 and choice.high - choice.low > 20


def test_meta_set_files_merge_window_by_window():
    rng = np.random.default_rng(3)
    first = metaset(rng, {"x": 60.0})
    second = [{**w, "served": {"y": w["served"]["x"]}} for w in first[:5]]
    merged = merge_windows(first, second)
    assert len(merged) == len(first) and set(merged[0]["served"]) == {"x", "y"} and set(merged[-1]["served"]) == {"x"}
    assert set(first[0]["served"]) == {"x"}  # the inputs are not changed
    with pytest.raises(ValueError, match="rebuild one of them"):
        merge_windows(first, [{**first[0], "true_source_acc": first[0]["true_source_acc"] + 5}])
