"""The headline estimate of each target: the first estimator of the measured order with a value."""

import pytest

from stream_monitor.estimation.headline import HEADLINE_ORDER, Headline, pick_headline
from stream_monitor.estimation.window import NuclearNorm, SourceStats, with_source_line


def test_the_first_estimator_of_the_order_with_a_value_wins():
    estimates = [("average-confidence", "online", 90.0, None), ("nuclear-norm", "online", None, None),
                 ("duo-agreement", "online", 61.0, None), ("cot", "source", 70.0, None),
                 ("weighted-flips", "source", 44.0, True), ("sentinel", "source", 31.5, None)]
    assert pick_headline("online", estimates) == Headline("duo-agreement", 61.0, None)
    assert pick_headline("source", estimates) == Headline("sentinel", 31.5, None)
    assert pick_headline("source", estimates[:5]) == Headline("weighted-flips", 44.0, True)


def test_a_raw_softmax_baseline_never_headlines_the_source_target():
    assert pick_headline("source", [("cot", "source", 70.0, None), ("average-confidence", "source", 80.0, None)]) is None
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
