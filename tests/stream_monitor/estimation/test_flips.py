"""Entropy Enigma's flip counting (estimation/flips.py): percentile ranks, weighted flips, the
per-cycle position hash, and the flips calibration f."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_monitor.calibration import SHIPPED, Calibration
from stream_monitor.estimation.flips import FlipsCalibration, count_flips, percentile_ranks, position_hash

#: The paper's ResNet-50 f, as it ships (a calibration file like the others).
PAPER_RESNET50 = Calibration.load(SHIPPED / "resnet50_rdumb_entropy_enigma_paper.json").flips_calibrations()[990]


# ---- counting ------------------------------------------------------------------------------------
def test_percentile_ranks_are_pandas_average_pct_ranks():
    values = np.array([0.9, 0.5, 0.5, 0.7, 0.1, 0.3, 0.9, 0.8])
    # ranks 7.5, 3.5, 3.5, 5, 1, 2, 7.5, 6 (ties averaged), over 8
    assert percentile_ranks(values).tolist() == [x / 8 for x in (7.5, 3.5, 3.5, 5, 1, 2, 7.5, 6)]
    ranks = percentile_ranks(np.array([np.nan, 0.2, 0.4]))  # pandas keeps NaN, ranks the rest among themselves
    assert math.isnan(ranks[0]) and ranks[1:].tolist() == [0.5, 1.0]


def test_count_flips_weighs_each_flip_by_its_reference_confidence_rank():
    reference = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    confidences = np.array([0.9, 0.5, 0.5, 0.7, 0.1, 0.3, 0.9, 0.8])
    predictions = np.array([0, 9, 2, 3, 9, 5, 9, 7])  # positions 1, 4 and 6 flipped
    flips, weighted = count_flips(reference, confidences, predictions)
    assert flips == 3 and weighted == pytest.approx((3.5 + 1 + 7.5) / 8)
    assert count_flips(reference, confidences, reference) == (0, 0.0)
    # a NaN confidence (a diverged model) weighs nothing rather than making the sum NaN
    nan_first = np.array([np.nan, 0.2, 0.4])
    assert count_flips(np.zeros(3), nan_first, np.ones(3)) == (3, pytest.approx(0.5 + 1.0))


def test_position_hash_is_a_fixed_key_per_position_and_a_new_permutation_per_cycle():
    positions = np.arange(1000)
    keys = position_hash(positions, 2)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == 1000
    assert np.array_equal(keys[500:], position_hash(positions[500:], 2))  # however the stream is cut
    assert np.array_equal(keys, position_hash(positions, 2))
    assert not np.array_equal(np.argsort(keys), np.argsort(position_hash(positions, 3)))
    assert np.argsort(keys)[:100].max() > 500  # the smallest keys spread over the positions


# ---- FlipsCalibration ----------------------------------------------------------------------------
def test_paper_calibration_values():
    cal = PAPER_RESNET50
    assert cal.cycle_step == 990 and cal.model == "resnet50" and cal.probe_size == 1000
    assert [round(cal(wf, 1000)[0], 1) for wf in (0, 100, 200)] == [75.7, 47.1, 25.6]
    assert round(cal(0, 1000)[0], 2) == 75.66


def test_paper_calibration_holds_the_vertex_value_above_it():
    cal = PAPER_RESNET50
    a, b, c = cal.coefficients
    vertex = -b / (2 * a)
    assert 451 < vertex < 453
    at_vertex = cal(vertex, 1000)[0]
    assert at_vertex == pytest.approx(c - b * b / (4 * a)) and 2.9 < at_vertex < 3.1
    assert cal(600, 1000)[0] == at_vertex and cal(1000, 1000)[0] == at_vertex  # the parabola would rise again
    assert cal(400, 1000)[0] > at_vertex


def test_calibration_clips_to_percent():
    assert PAPER_RESNET50(-100, 1000)[0] == 100.0
    falling = FlipsCalibration("m", (0.0, -1.0, 50.0), (0.0, 100.0), cycle_step=10)
    assert falling(80, 1000) == (0.0, False) and falling(20, 1000) == (30.0, False)


def test_calibration_scales_by_probe_size():
    cal = PAPER_RESNET50
    assert cal(10, 100) == cal(100, 1000)  # the paper's 100-image setting: x10
    assert cal(50, 500) == cal(100, 1000)
    assert round(cal(20, 100)[0], 1) == 25.6


@pytest.mark.parametrize("wf, size, extrapolated", [
    (12.9, 1000, True), (13, 1000, False), (265, 1000, False), (265.1, 1000, True), (0, 1000, True),
    (1.2, 100, True), (1.3, 100, False), (26.5, 100, False), (27, 100, True),
])
def test_calibration_flags_extrapolation_outside_the_fitted_range(wf, size, extrapolated):
    assert PAPER_RESNET50(wf, size)[1] is extrapolated
