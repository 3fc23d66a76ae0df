"""The sequential test's bounds (estimation/sequential.py): reference values from the research
note (risk_monitoring.md 1.7 and 2.4, checked there against confseq), and coverage by simulation:
on streams whose running mean stays at or below the truth, a lower bound crosses it in at most an
`alpha` share of runs, however long they are watched."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_monitor.estimation.sequential import (ConjugateMixtureEB, PredictablePlugInEB, Restarted,
                                                  clopper_pearson_upper, poly_stitching_bound)


@pytest.mark.parametrize("errors, n, expected", [(120, 500, 0.280), (240, 1000, 0.268), (1200, 5000, 0.252)])
def test_clopper_pearson_matches_the_notes_source_bounds(errors, n, expected):
    assert clopper_pearson_upper(errors, n, 0.025) == pytest.approx(expected, abs=5e-4)


def test_clopper_pearson_edges_and_errors():
    assert clopper_pearson_upper(10, 10, 0.05) == 1.0
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100))  # the rule of three's exact form
    with pytest.raises(ValueError, match="need 0 <= errors <= n and n >= 1, got errors=5, n=3"):
        clopper_pearson_upper(5, 3, 0.05)


def test_poly_stitching_matches_confseq():
    assert poly_stitching_bound(210.0, 0.025, m=100.0) == pytest.approx(57.8176, abs=1e-4)
    assert poly_stitching_bound(10.0, 0.025, m=100.0) == poly_stitching_bound(100.0, 0.025, m=100.0)  # flat below m


def test_observations_outside_the_unit_interval_and_bad_levels_are_refused():
    with pytest.raises(ValueError, match=r"observations must lie in \[0, 1\], got 1.5"):
        ConjugateMixtureEB(0.05).update([0.2, 1.5])
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 0"):
        PredictablePlugInEB(0.0)
    with pytest.raises(ValueError, match="every and keep must be at least 1"):
        Restarted(0.05, every=0)


def crossings(make, means: np.ndarray, truth: np.ndarray, runs: int, seed: int) -> float:
    """The share of runs in which the lower bound ever exceeds the running mean of the true means."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(runs):
        sequence = make()
        x = (rng.random(len(means)) < means).astype(float)
        for t, value in enumerate(x):
            if sequence.update((value,)) > truth[t] + 1e-12:
                hits += 1
                break
    return hits / runs


@pytest.mark.parametrize("make", [lambda: PredictablePlugInEB(0.1), lambda: ConjugateMixtureEB(0.1)],
                         ids=["prpl-eb", "cm-eb"])
def test_no_more_false_crossings_than_alpha_on_a_constant_null(make):
    means = np.full(1500, 0.3)
    assert crossings(make, means, np.cumsum(means) / np.arange(1, 1501), runs=200, seed=1) <= 0.1


def test_cm_eb_covers_the_running_mean_of_changing_conditional_means():
    # a model that changes at every step: the error probability drifts and jumps
    means = np.concatenate([np.linspace(0.1, 0.6, 800), np.full(700, 0.2)])
    running = np.cumsum(means) / np.arange(1, len(means) + 1)
    assert crossings(lambda: ConjugateMixtureEB(0.1), means, running, runs=200, seed=2) <= 0.1
    # the running intersection assumes one fixed mean: here it overshoots the falling running mean
    assert crossings(lambda: ConjugateMixtureEB(0.1, running_intersection=True), means, running, runs=50,
                     seed=2) > 0.1


def test_a_high_error_is_certified_within_a_few_hundred_observations():
    rng = np.random.default_rng(3)
    times = []
    for _ in range(20):
        sequence, t = ConjugateMixtureEB(0.025), 0
        while sequence.lower <= 0.318:
            t += 1
            sequence.update((float(rng.random() < 0.5),))
        times.append(t)
    assert np.median(times) < 400


def test_restarts_catch_a_late_collapse_that_the_whole_history_hides():
    rng = np.random.default_rng(4)
    healthy, collapsed = (rng.random(20_000) < 0.2).astype(float), (rng.random(3000) < 0.8).astype(float)
    whole, restarted = ConjugateMixtureEB(0.025), Restarted(0.025, every=512)
    for sequence in (whole, restarted):
        sequence.update(healthy)
    assert whole.lower < 0.3 and restarted.lower < 0.3  # no alarm while the model is healthy
    caught = {}
    for name, sequence in (("whole", whole), ("restarted", restarted)):
        for t, x in enumerate(collapsed, 1):
            if sequence.update((x,)) > 0.318:
                caught[name] = t
                break
    assert caught["restarted"] < 1200 and caught.get("whole", math.inf) > 2 * caught["restarted"]
    # the j-th restart spends alpha 6 / (pi^2 j^2): all of them together at most alpha
    assert sum(0.025 * 6 / (math.pi ** 2 * j ** 2) for j in range(1, 10_000)) < 0.025


def test_state_round_trips():
    a = ConjugateMixtureEB(0.05)
    a.update([0.0, 1.0, 1.0, 0.0, 1.0])
    b = ConjugateMixtureEB(0.05)
    b.load_state_dict(a.state_dict())
    assert b.update([1.0]) == a.update([1.0])
    with pytest.raises(KeyError, match="lacks .*sum_x"):
        ConjugateMixtureEB(0.05).load_state_dict({"alpha": 0.05})
