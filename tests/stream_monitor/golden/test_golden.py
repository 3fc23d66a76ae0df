"""The golden run: a short recorded run's probe and estimate rows, as the code of the commit that
made `expected_rows.json` wrote them (make_golden.py, at 5b5c3da, before the estimation pipeline),
and the same again from `eval`'s replay.

That commit's estimates table named a feed by rewriting the target ("score", "source-score" for
the nuclear norm's raw score x100; "source" for the frozen feed); `current_rows` maps its rows to
today's (estimator, feed, target, value, score) and nothing else.

The module stays in the fast lane (about 40 s on 2 cores): it is the contract every estimation
change is checked against. Floats are compared to 1e-6 relative: a CPU with other vector units
rounds convolutions differently, and Tent carries that rounding through its steps; anything an
estimator or a headline rule changes moves them by far more.
"""

from __future__ import annotations

import json
import math

import pytest

from stream_monitor.config import load_config
from stream_monitor.runtime.runner import run

from . import make_golden

COLUMNS = ("est_source_acc", "est_source_method", "est_extrapolated", "est_online_acc", "est_online_method",
           "est_online_gap", "est_source_paired")


def same(actual, expected) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)
    return actual == expected


FLIPS_AND_DERIVED = ("weighted-flips", "spread-flips", "anchored-nuclear-norm")
#: Baselines added after the golden file (tested on their own values in estimation/test_baselines.py):
#: their rows are new, and no other row or headline may change.
ADDED_SINCE = ("mano", "cbpe")


def current_rows(rows: list[dict]) -> list[dict]:
    """Estimate rows of the expected file in today's schema, sorted as `by_reading` sorts."""
    if rows and "feed" in rows[0]:  # made again by today's make_golden.py
        return by_reading(rows)
    scores = {(r["step"], r["target"]): r["value"] for r in rows if r["estimator"] == "nuclear-norm-score"}
    out = []
    for r in rows:
        if r["estimator"] == "nuclear-norm-score":
            continue
        feed = "served" if r["target"] == "online" or r["estimator"] in FLIPS_AND_DERIVED else "frozen"
        score = None
        if r["estimator"] == "nuclear-norm":
            x100 = scores.get((r["step"], "score" if feed == "served" else "source-score"))
            score = None if x100 is None else x100 / 100.0
        out.append({**r, "feed": feed, "score": score, "interval_low": None, "interval_high": None})
    return by_reading(out)


def by_reading(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["step"], r["estimator"], r["feed"]))


def assert_rows(actual: list[dict], expected: list[dict], table: str) -> None:
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows, expected {len(expected)}"
    for a, e in zip(actual, expected, strict=True):
        wrong = {k: (a.get(k), e[k]) for k in e if not same(a.get(k), e[k])}
        assert not wrong and a.keys() == e.keys(), f"{table} row at step {e.get('step')}: (got, expected) {wrong}"


@pytest.fixture(scope="module", params=make_golden.VARIANTS)
def golden(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("golden") / request.param
    outcome = run(load_config(None, make_golden.overrides(request.param)), run_dir, log=lambda message: None)
    assert outcome.status == "finished", outcome.error
    expected = json.loads(make_golden.EXPECTED.read_text())[request.param]
    return run_dir, expected


def test_live_rows_are_the_golden_rows(golden):
    run_dir, expected = golden
    actual = make_golden.golden_rows(run_dir)
    assert_rows(actual["probes"], expected["probes"], "probes")
    added = [r for r in actual["estimates"] if r["estimator"] in ADDED_SINCE]
    assert {r["estimator"] for r in added} == set(ADDED_SINCE)
    assert_rows(by_reading([r for r in actual["estimates"] if r["estimator"] not in ADDED_SINCE]),
                current_rows(expected["estimates"]), "estimates")


def test_eval_replays_the_live_headlines(golden):
    from stream_monitor.evaluation import replayed_probes

    run_dir, expected = golden
    replayed = replayed_probes(run_dir)
    assert_rows([{k: r[k] for k in COLUMNS} for r in replayed],
                [{k: r[k] for k in COLUMNS} for r in expected["probes"]],
                "replayed probes")


def test_eval_with_the_files_again_rereads_the_same_estimates(golden):
    """`eval --calibration FILE` re-reads the flips, nuclear norms and Sentinels from what the run
    recorded; with the run's own file that gives the run's own estimates."""
    from stream_monitor.calibration import Calibration
    from stream_monitor.evaluation import replayed_probes

    run_dir, expected = golden
    given = {run_dir.name: Calibration.load(make_golden.CALIBRATION)}
    replayed = replayed_probes(run_dir, **given)
    assert_rows([{k: r[k] for k in COLUMNS} for r in replayed],
                [{k: r[k] for k in COLUMNS} for r in expected["probes"]],
                "re-read probes")
