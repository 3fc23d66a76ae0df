"""From readings to two numbers (`estimation.pipeline`): the anchored estimate, the headlines, the
gap; and the pipeline that owns every estimator on both feeds."""

import numpy as np
import pytest

from stream_monitor.estimation import ESTIMATORS
from stream_monitor.estimation.context import EstimationContext
from stream_monitor.estimation.flips import FlipsCalibration
from stream_monitor.estimation.pipeline import (ANCHORED, HEADLINE_ORDER, EstimationPipeline, derive,
                                                headline_order)
from stream_monitor.estimation.readings import Feed, Reading, Target
from stream_monitor.estimation.window import NuclearNorm, FeedStats, calibrated_on_adapter, with_frozen_line

SERVED, FROZEN, ONLINE, SOURCE = Feed.SERVED, Feed.FROZEN, Target.ONLINE, Target.SOURCE
NO_LINE = EstimationContext()
LINE = EstimationContext(frozen=FeedStats(nuclear_fit=(50.0, 0.0)))  # anchored slope 50


def read(name, feed, value, target=None, **extra) -> Reading:
    return Reading(name, feed, target or (ONLINE if feed == SERVED else SOURCE), value, **extra)


def test_the_first_estimator_of_the_order_with_a_value_wins():
    window = [read("average-confidence", SERVED, 90.0), read("nuclear-norm", SERVED, None),
              read("duo-agreement", SERVED, 61.0), read("cot", FROZEN, 70.0),
              read("weighted-flips", SERVED, 44.0, SOURCE, extrapolated=True), read("sentinel", FROZEN, 31.5)]
    estimate = derive(window, NO_LINE)
    assert (estimate.online.estimator, estimate.online.value) == ("duo-agreement", 61.0)
    assert (estimate.source.estimator, estimate.source.value) == ("sentinel", 31.5)
    flips = derive(window[:5], NO_LINE).source
    assert (flips.estimator, flips.value, flips.extrapolated) == ("weighted-flips", 44.0, True)


def test_a_raw_softmax_baseline_never_headlines_the_source_target():
    assert derive([read("cot", FROZEN, 70.0), read("average-confidence", FROZEN, 80.0)], NO_LINE).source is None
    assert "average-confidence" not in HEADLINE_ORDER[SOURCE]
    assert HEADLINE_ORDER[ONLINE][-1] == "average-confidence"  # always computable: the last resort


def test_the_served_nuclear_norm_falls_back_on_the_frozen_models_line():
    frozen = FeedStats(accuracy=80.0, nuclear_fit=(100.0, -10.0))
    assert with_frozen_line(None, frozen) == FeedStats(nuclear_fit=(100.0, -10.0))
    own = FeedStats(accuracy=70.0, nuclear_fit=(50.0, 5.0))
    assert with_frozen_line(own, frozen) is own  # the adapter's own line wins
    served = FeedStats(accuracy=70.0)
    assert with_frozen_line(served, frozen) == FeedStats(accuracy=70.0, nuclear_fit=(100.0, -10.0))
    assert with_frozen_line(served, None) is served and with_frozen_line(None, FeedStats()) is None
    nn = NuclearNorm(with_frozen_line(None, frozen))
    nn.update(np.eye(4, dtype="float32"))  # one-hot, K = m = 4: score 1
    assert nn.compute() == pytest.approx(90.0)
    assert (nn.reading().score, nn.reading().value) == (pytest.approx(1.0), pytest.approx(90.0))


def test_the_anchored_estimate_is_the_source_headline_plus_the_nuclear_norms_gap_through_one_line():
    window = [read("sentinel", FROZEN, 30.0), read("nuclear-norm", FROZEN, None, score=0.40),
              read("nuclear-norm", SERVED, 99.0, score=0.33),  # the served line's value: not used
              read("weighted-flips", SERVED, 50.0, SOURCE, extrapolated=False)]
    anchored = derive(window, LINE).readings[-1]
    assert anchored.estimator == ANCHORED and anchored.value == pytest.approx(30.0 + 50.0 * (0.33 - 0.40))
    assert derive(window[1:], LINE).readings[-1].value == pytest.approx(50.0 - 3.5)  # the flips anchor
    steep = EstimationContext(frozen=FeedStats(nuclear_fit=(1000.0, 0.0)))
    assert derive(window, steep).readings[-1].value == 0.0  # clipped
    assert derive(window, NO_LINE).readings[-1].value is None  # no frozen line, no slope
    assert derive(window[:2], LINE).readings[-1].value is None  # no served score


def test_the_estimate_columns_keep_the_paired_frozen_reading_of_the_online_estimator():
    window = [read("sentinel", FROZEN, 30.0), read("nuclear-norm", FROZEN, 40.0),
              read("nuclear-norm", SERVED, 33.0), read("weighted-flips", SERVED, 50.0, SOURCE, extrapolated=True)]
    assert derive(window, NO_LINE).columns() == {
        "est_source_acc": 30.0, "est_source_method": "sentinel", "est_extrapolated": None,
        "est_online_acc": 33.0, "est_online_method": "nuclear-norm", "est_source_paired": 40.0,
        "est_online_gap": -7.0,  # one estimator, one line: the paired difference
        # no learned rule in the context: no interval, and no support to be outside of
        "est_source_lo": None, "est_source_hi": None, "est_online_lo": None, "est_online_hi": None,
        "est_source_out_of_support": None, "est_online_out_of_support": None}
    # with both raw scores and the frozen line, the anchored estimate headlines; its gap is one line's
    scored = [window[0], read("nuclear-norm", FROZEN, 40.0, score=0.40), read("nuclear-norm", SERVED, 33.0, score=0.26)]
    columns = derive(scored, LINE).columns()
    assert (columns["est_online_method"], columns["est_source_paired"]) == (ANCHORED, None)
    assert columns["est_online_gap"] == pytest.approx(50.0 * (0.26 - 0.40))
    # no paired reading, no anchored estimate: the headlines' difference
    assert derive(window[:1] + [read("duo-agreement", SERVED, 26.0)], NO_LINE).gap == -4.0
    empty = derive([], NO_LINE).columns()
    assert empty["est_online_acc"] is None and empty["est_online_gap"] is None


def test_with_an_adapter_calibration_the_served_estimators_headline_the_online_target():
    own = EstimationContext(frozen=FeedStats(nuclear_fit=(50.0, 0.0)), adapter_calibrated=True)
    window = [read("sentinel", FROZEN, 30.0), read("nuclear-norm", SERVED, 41.0, score=0.4),
              read("nuclear-norm", FROZEN, 35.0, score=0.46)]
    assert derive(window, LINE).online.estimator == ANCHORED  # the frozen model's line: anchored
    assert (derive(window, own).online.estimator, derive(window, own).online.value) == ("nuclear-norm", 41.0)
    # the adapter's line and the frozen model's are two calibrations: no pairing; the gap is the anchored one's
    estimate = derive(window, own)
    assert estimate.source_paired is None and estimate.gap == pytest.approx(50.0 * (0.4 - 0.46))
    assert derive(window + [read("sentinel", SERVED, 44.0)], own).online.estimator == "sentinel"
    assert headline_order(SOURCE, adapter_calibrated=True) == HEADLINE_ORDER[SOURCE]
    assert set(headline_order(ONLINE, True)) == set(HEADLINE_ORDER[ONLINE])  # the same estimators, reordered
    assert not calibrated_on_adapter(None) and not calibrated_on_adapter(FeedStats(accuracy=80.0))
    assert calibrated_on_adapter(FeedStats(nuclear_fit=(100.0, -10.0)))
    assert calibrated_on_adapter(FeedStats(sentinel={"features": [[0.0]], "accuracy": [50.0]}))


def test_derive_is_pure_and_ignores_an_anchored_reading_it_is_given():
    window = [read("sentinel", FROZEN, 30.0), read("nuclear-norm", FROZEN, None, score=0.4),
              read("nuclear-norm", SERVED, None, score=0.5), read(ANCHORED, SERVED, 99.0)]
    first, again = derive(window, LINE), derive(window, LINE)
    assert first == again and window[-1].value == 99.0
    assert [r.estimator for r in first.readings].count(ANCHORED) == 1
    assert first.online.value == pytest.approx(35.0)


# ---- the pipeline --------------------------------------------------------------------------------
def probs(n: int = 64, k: int = 10, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 3, (n, k))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def test_the_pipeline_runs_every_registered_estimator_on_each_feed_it_declares():
    pipeline = EstimationPipeline(EstimationContext(), num_classes=10)
    keys = {e.key for e in pipeline.estimators}
    softmax_only = [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).requires is None]
    assert keys == {f"{feed}/{n}" for n in softmax_only for feed in ESTIMATORS.get(n).feeds}
    full = EstimationPipeline(EstimationContext(), num_classes=10, sidekick="embedded-small", dropout=True)
    assert {e.key for e in full.estimators} == {f"{feed}/{n}" for n in ESTIMATORS.names()
                                                for feed in ESTIMATORS.get(n).feeds}


def test_the_pipeline_drops_non_finite_rows_and_reads_each_feed_apart():
    pipeline = EstimationPipeline(EstimationContext(), num_classes=10)
    served = probs(seed=1)
    diverged = served.copy()
    diverged[:8] = np.nan
    pipeline.observe(SERVED, diverged)
    pipeline.observe(FROZEN, None)  # the evaluator did not score this batch
    readings = {(r.estimator, r.feed): r for r in pipeline.readings()}
    assert readings["average-confidence", SERVED].value == pytest.approx(100 * served[8:].max(1).mean(), rel=1e-5)
    assert readings["average-confidence", FROZEN].value is None  # nothing seen on the frozen feed
    pipeline.reset()
    assert all(r.value is None for r in pipeline.readings())


def test_the_pipeline_state_round_trips_and_a_missing_estimator_is_an_error():
    pipeline = EstimationPipeline(EstimationContext(), num_classes=10)
    pipeline.observe(SERVED, probs(seed=2))
    pipeline.observe(FROZEN, probs(seed=3))
    restored = EstimationPipeline(EstimationContext(), num_classes=10)
    restored.load_state_dict(pipeline.state_dict())
    assert restored.readings() == pipeline.readings()
    state = pipeline.state_dict()
    state.pop("frozen/cot")
    with pytest.raises(KeyError, match="no state of the estimator frozen/cot"):
        EstimationPipeline(EstimationContext(), num_classes=10).load_state_dict(state)
    state = pipeline.state_dict()
    state["served/doc"].pop("count")
    with pytest.raises(KeyError, match="served/doc lacks count"):
        EstimationPipeline(EstimationContext(), num_classes=10).load_state_dict(state)


def test_flips_readings_and_reread_use_the_contexts_calibration():
    f = FlipsCalibration("m", (0.0, -0.5, 90.0), (0.0, 100.0), cycle_step=10, probe_size=100)
    line = FeedStats(nuclear_fit=(100.0, -10.0))
    context = EstimationContext(served=line, frozen=line, flips={10: f}, spread_flips={10: f})
    pipeline = EstimationPipeline(context, num_classes=10)
    flips = pipeline.flips_readings(10, weighted_flips=20.0, probe_size=200, spread_weighted_flips=300.0,
                                    spread_size=100)
    assert [(r.estimator, r.value, r.extrapolated) for r in flips] == [
        ("spread-flips", 0.0, True), ("weighted-flips", pytest.approx(85.0), False)]  # 20 on 200 = 10 on 100
    assert pipeline.flips_readings(5, 20.0, 200) == []  # no f at this cycle step
    recorded = [read("nuclear-norm", SERVED, None, score=0.5), read("average-confidence", FROZEN, 70.0)]
    assert [r.value for r in pipeline.reread(recorded)] == [pytest.approx(40.0), 70.0]


def test_the_anchored_estimate_reads_the_gap_through_the_frozen_files_anchor_line():
    anchored = EstimationContext(frozen=FeedStats(nuclear_fit=(1000.0, 0.0), anchor_fit=(60.0, -2.0)))
    readings = [Reading("sentinel", Feed.FROZEN, Target.SOURCE, 40.0),
                Reading("nuclear-norm", Feed.SERVED, Target.ONLINE, 0.0, score=0.6),
                Reading("nuclear-norm", Feed.FROZEN, Target.SOURCE, 0.0, score=0.5)]
    # the anchor line, not the (steep) nuclear-norm line: 40 + 60 * 0.1 - 2
    assert derive(readings, anchored).online.value == pytest.approx(44.0)
    assert anchored.anchor_line == (60.0, -2.0) and LINE.anchor_line == (50.0, 0.0)  # an older file: slope only
    assert EstimationContext.from_dict(anchored.to_dict()).anchor_line == (60.0, -2.0)


def test_a_model_that_does_not_adapt_reads_its_online_accuracy_as_its_source_accuracy():
    context = EstimationContext(frozen=FeedStats(nuclear_fit=(50.0, 0.0)), served_is_frozen=True)
    source = Reading("sentinel", Feed.FROZEN, Target.SOURCE, 62.0, interval=(55.0, 70.0))
    estimate = derive([source, Reading("average-confidence", Feed.SERVED, Target.ONLINE, 90.0)], context)
    assert estimate.online.value == 62.0 and estimate.online.interval == (55.0, 70.0)
    assert estimate.online.target == Target.ONLINE and estimate.gap == 0.0
    assert estimate.online_out_of_support == estimate.source_out_of_support
    assert EstimationContext.from_dict(context.to_dict()).served_is_frozen
    nothing = derive([Reading("average-confidence", Feed.SERVED, Target.ONLINE, 90.0)], context)
    assert nothing.online is None and nothing.gap is None  # no source headline: no online one either
