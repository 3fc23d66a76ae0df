"""benchmarks/suite_scoring.py: the evaluation suite's MAE, worst window, coverage and support rate."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "suite_scoring.py"
_SPEC = importlib.util.spec_from_file_location("suite_scoring", _PATH)
scoring = importlib.util.module_from_spec(_SPEC)
sys.modules["suite_scoring"] = scoring
_SPEC.loader.exec_module(scoring)


def test_score_of_synthetic_windows():
    s = scoring.score([50.0, 60.0, None], [52.0, 50.0, 40.0], lows=[45.0, 55.0, None], highs=[55.0, 58.0, None],
                      flags=[True, False, None])
    assert (s.windows, s.missing) == (2, 1)
    assert s.mae == pytest.approx(6.0) and s.bias == pytest.approx(4.0) and s.worst == pytest.approx(10.0)
    assert s.coverage == pytest.approx(0.5)  # 52 in [45, 55]; 50 not in [55, 58]; no interval on the third
    assert s.out_of_support == pytest.approx(0.5)


def test_score_without_intervals_or_flags_says_not_available():
    s = scoring.score([10.0], [20.0])
    assert s.coverage is None and s.out_of_support is None and s.worst == pytest.approx(10.0)
    empty = scoring.score([None], [20.0])
    assert empty.mae is None and empty.worst is None and empty.missing == 1
    with pytest.raises(ValueError, match="estimates for"):
        scoring.score([1.0, 2.0], [1.0])


def probes(**extra):
    return {"step": [100, 200], "true_source_acc": [90.0, 50.0], "true_online_acc": [80.0, 40.0],
            "est_source_acc": [85.0, 53.0], "est_source_method": ["sentinel", "nuclear-norm"],
            "est_online_acc": [80.0, 30.0], "est_online_method": ["sentinel", "sentinel"], **extra}


def test_headline_reads_interval_and_support_columns_when_present():
    out = scoring.headline_scores(probes(est_source_lo=[80.0, 54.0], est_source_hi=[95.0, 60.0],
                                         est_online_out_of_support=[False, True]))
    source, methods = out["source"]
    assert methods == "nuclear-norm+sentinel"
    assert source.mae == pytest.approx(4.0) and source.worst == pytest.approx(5.0)
    assert source.coverage == pytest.approx(0.5)
    online, _ = out["online"]
    assert online.coverage is None and online.out_of_support == pytest.approx(0.5)
    assert online.worst == pytest.approx(10.0)


def test_estimators_are_scored_against_their_targets_truth_on_the_same_step():
    estimates = {"step": [100, 200, 100], "estimator": ["mano", "mano", "mano"],
                 "feed": ["frozen", "frozen", "served"], "target": ["source", "source", "online"],
                 "value": [88.0, 60.0, None], "extrapolated": [None, True, None]}
    out = scoring.estimator_scores(probes(), estimates)
    frozen = out[("source", "frozen/mano")]
    assert frozen.mae == pytest.approx(6.0) and frozen.worst == pytest.approx(10.0)
    assert frozen.out_of_support == pytest.approx(1.0) and frozen.coverage is None
    assert out[("online", "served/mano")].missing == 1


def test_window_rows_trace_each_headline_window_with_its_interval_and_flag():
    rows = scoring.window_rows(probes(est_source_lo=[80.0, 54.0], est_source_hi=[95.0, 60.0],
                                      est_online_out_of_support=[False, True]))
    assert [(r["target"], r["step"]) for r in rows] == [("source", 100), ("source", 200), ("online", 100),
                                                        ("online", 200)]
    first, second, _, last = rows
    assert (first["error"], first["covered"], first["method"]) == (-5.0, True, "sentinel")
    assert second["covered"] is False and second["out_of_support"] is None
    assert last["low"] is None and last["covered"] is None and last["out_of_support"] is True
