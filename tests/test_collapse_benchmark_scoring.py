"""benchmarks/collapse_warnings.py: the table's arithmetic (recall, lead, false alarms per million,
the probe drop and the fused spans) on synthetic rows."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "collapse_warnings.py"
sys.path.insert(0, str(_PATH.parent))  # its `from _record import git_sha`
_SPEC = importlib.util.spec_from_file_location("collapse_warnings", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["collapse_warnings"] = bench  # dataclasses look their module up
_SPEC.loader.exec_module(bench)


def test_a_warning_before_the_event_within_the_horizon_detects_it_with_a_positive_lead():
    s = bench.score([(8_000, 9_000), (12_000, math.inf)], [(10_000, 20_000)], images=100_000, horizon=5_000)
    assert (s.events, s.detected, s.leads, s.false_alarms) == (1, 1, (2_000,), 0)


def test_a_warning_during_the_event_has_a_negative_lead_and_a_long_early_one_is_capped_at_the_horizon():
    late = bench.score([(13_000, 14_000)], [(10_000, 20_000)], images=50_000, horizon=5_000)
    assert late.leads == (-3_000,) and late.false_alarms == 0
    early = bench.score([(1_000, math.inf)], [(10_000, 20_000)], images=50_000, horizon=5_000)
    assert early.leads == (5_000,) and early.false_alarms == 1  # on from before the horizon: counted, and a false alarm


def test_warnings_outside_every_event_are_false_alarms_and_missed_events_lower_recall():
    s = bench.score([(1_000, 2_000), (30_000, 31_000)], [(10_000, 20_000), (40_000, 45_000)],
                    images=250_000, horizon=5_000)
    assert (s.events, s.detected, s.false_alarms) == (2, 0, 2)
    summary = bench.summarise("d", [s], [], [bench.score([(5, 6)], [], images=500_000, horizon=5_000),
                                            bench.score([], [], images=500_000, horizon=5_000)])
    assert summary.recall == 0.0 and summary.false_alarms == 1
    assert summary.false_alarms_per_million == pytest.approx(1.0)  # one in 1,000,000 quiet images
    assert (summary.runs_with_false_alarm, summary.quiet_runs) == (1, 2)


def test_summaries_pool_leads_over_runs_median_and_worst():
    runs = [bench.Score(1, 1, (4_000,), 0, 10_000), bench.Score(2, 1, (-1_000,), 0, 10_000),
            bench.Score(1, 1, (500,), 0, 10_000)]
    summary = bench.summarise("d", runs, runs[:1], [])
    assert summary.events == 4 and summary.recall == pytest.approx(0.75)
    assert summary.median_lead == 500 and summary.worst_lead == -1_000
    assert (summary.drop_events, summary.drop_recall, summary.drop_median_lead) == (1, 1.0, 4_000)
    assert summary.false_alarms_per_million == 0.0 and summary.quiet_runs == 0


def step(k, correct, images=100):
    return {"step": k, "stop": k * images, "images": images, "correct": correct}


def test_the_probe_drop_is_the_first_probe_interval_below_the_one_before_by_the_margin():
    steps = [step(k, 80) for k in range(1, 11)] + [step(k, 77) for k in range(11, 21)] + \
            [step(k, 60) for k in range(21, 31)]
    assert bench.probe_drop(steps, [10, 20, 30], margin=5.0) == 3_000  # 80 -> 77 is within it, 77 -> 60 is not
    assert bench.probe_drop(steps, [10, 20, 30], margin=25.0) is None
    unlabelled = [dict(r, correct=None) for r in steps]
    assert bench.probe_drop(unlabelled, [10, 20, 30], margin=5.0) is None


def test_the_fused_warning_is_on_while_any_of_its_detectors_is():
    intervals = {"a": [(100, 300), (900, math.inf)], "b": [(200, 500)], "c": [(50, 60)]}
    assert bench.fuse(intervals, ["a", "b"]) == [(100, 500), (900, math.inf)]
    assert bench.fuse(intervals, ["missing"]) == []
