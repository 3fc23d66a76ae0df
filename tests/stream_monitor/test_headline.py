"""The headline estimate of each target: the first estimator of the measured order with a value."""

import pytest

from stream_monitor.estimation.anchored import NAME as ANCHORED, anchored_estimate
from stream_monitor.estimation.headline import HEADLINE_ORDER, Headline, headline_columns, pick_headline
from stream_monitor.estimation.window import NuclearNorm, SourceStats, with_source_line


def test_the_first_estimator_of_the_order_with_a_value_wins():
    estimates = [("average-confidence", "online", 90.0, None), ("nuclear-norm", "online", None, None),
                 ("duo-agreement", "online", 61.0, None), ("cot", "source", 70.0, None),
                 ("weighted-flips", "source", 44.0, True), ("sentinel", "source", 31.5, None)]
    assert pick_headline("online", estimates) == Headline("duo-agreement", 61.0, None)
    assert pick_headline("source", estimates) == Headline("sentinel", 31.5, None)
    assert pick_headline("source", estimates[:5]) == Headline("weighted-flips", 44.0, True)


def test_a_raw_softmax_baseline_never_headlines_the_source_target():
    baselines = [("cot", "source", 70.0, None), ("average-confidence", "source", 80.0, None)]
    assert pick_headline("source", baselines) is None
    assert "average-confidence" not in HEADLINE_ORDER["source"]
    assert HEADLINE_ORDER["online"][-1] == "average-confidence"  # always computable: the last resort


def test_the_served_nuclear_norm_falls_back_on_the_source_models_line():
    frozen = SourceStats(accuracy=80.0, nuclear_fit=(100.0, -10.0))
    assert with_source_line(None, frozen) == SourceStats(nuclear_fit=(100.0, -10.0))
    own = SourceStats(accuracy=70.0, nuclear_fit=(50.0, 5.0))
    assert with_source_line(own, frozen) is own  # the adapter's own line wins
    served = SourceStats(accuracy=70.0)
    assert with_source_line(served, frozen) == SourceStats(accuracy=70.0, nuclear_fit=(100.0, -10.0))
    assert with_source_line(served, None) is served and with_source_line(None, SourceStats()) is None
    nn = NuclearNorm(with_source_line(None, frozen))
    nn.update(__import__("numpy").eye(4, dtype="float32"))  # one-hot, K = m = 4: score 1
    assert nn.compute() == pytest.approx(90.0)


def test_the_anchored_estimate_is_the_source_headline_plus_the_nuclear_norms_gap_through_one_line():
    window = [("sentinel", "source", 30.0, None), ("nuclear-norm-score", "source-score", 40.0, None),
              ("nuclear-norm-score", "score", 33.0, None), ("weighted-flips", "source", 50.0, False),
              ("nuclear-norm", "online", 99.0, None)]  # the served line's reading: not used
    assert anchored_estimate(window, slope=50.0) == pytest.approx(30.0 + 50.0 * (33.0 - 40.0) / 100)
    assert anchored_estimate(window[1:], slope=50.0) == pytest.approx(50.0 - 3.5)  # the flips anchor
    assert anchored_estimate(window, slope=1000.0) == 0.0  # clipped
    assert anchored_estimate(window, slope=None) is None
    assert anchored_estimate(window[:2], 50.0) is None and anchored_estimate(window[2:3], 50.0) is None


def test_headline_columns_keep_the_paired_frozen_reading_of_the_online_estimator():
    window = [("sentinel", "source", 30.0, None), ("nuclear-norm", "source", 40.0, None),
              ("nuclear-norm", "online", 33.0, None), ("weighted-flips", "source", 50.0, True)]
    columns = headline_columns(window)
    assert columns == {"est_source_acc": 30.0, "est_source_method": "sentinel", "est_extrapolated": None,
                       "est_online_acc": 33.0, "est_online_method": "nuclear-norm", "est_source_paired": 40.0,
                       "est_online_gap": -7.0}  # one estimator, one line: the paired difference
    # an online estimator without a frozen reading: no paired value; the anchored gap is one line's
    columns = headline_columns(window + [(ANCHORED, "online", 23.0, None)])
    assert (columns["est_online_method"], columns["est_source_paired"]) == (ANCHORED, None)
    assert columns["est_online_gap"] == pytest.approx(23.0 - 30.0)
    # no paired reading, no anchored estimate: the headlines' difference
    assert headline_columns(window[:1] + [("duo-agreement", "online", 26.0, None)])["est_online_gap"] == -4.0
    assert headline_columns([])["est_online_acc"] is None and headline_columns([])["est_online_gap"] is None


def test_with_an_adapter_calibration_the_served_estimators_headline_the_online_target():
    from stream_monitor.estimation.headline import headline_order
    from stream_monitor.estimation.window import calibrated_on_adapter

    window = [("sentinel", "source", 30.0, None), ("nuclear-norm", "online", 41.0, None),
              (ANCHORED, "online", 27.0, None), ("nuclear-norm", "source", 35.0, None)]
    assert pick_headline("online", window) == Headline(ANCHORED, 27.0, None)  # the source model's line: anchored
    assert pick_headline("online", window, adapter_calibrated=True) == Headline("nuclear-norm", 41.0, None)
    # the adapter's line and the frozen model's are two calibrations: no pairing; the gap is the anchored one's
    columns = headline_columns(window, adapter_calibrated=True)
    assert columns["est_source_paired"] is None and columns["est_online_gap"] == pytest.approx(27.0 - 30.0)
    served_sentinel = window + [("sentinel", "online", 44.0, None)]
    assert pick_headline("online", served_sentinel, adapter_calibrated=True).estimator == "sentinel"
    assert headline_order("source", adapter_calibrated=True) == HEADLINE_ORDER["source"]
    assert set(headline_order("online", True)) == set(HEADLINE_ORDER["online"])  # the same estimators, reordered
    assert not calibrated_on_adapter(None) and not calibrated_on_adapter(SourceStats(accuracy=80.0))
    assert calibrated_on_adapter(SourceStats(nuclear_fit=(100.0, -10.0)))
    assert calibrated_on_adapter(SourceStats(sentinel={"features": [[0.0]], "accuracy": [50.0]}))
