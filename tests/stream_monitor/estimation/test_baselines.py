"""The MaNo and CBPE baselines against values worked out by hand on small logits."""

import math

import numpy as np
import pytest
import torch

from stream_monitor.estimation import ESTIMATORS
from stream_monitor.estimation.base import NotComputableError
from stream_monitor.calibration.baselines import expected_calibration_error, fit_baseline_maps
from stream_monitor.estimation.baseline_maps import BaselineMaps
from stream_monitor.estimation.cbpe import CBPE, calibrated_confidence
from stream_monitor.estimation.mano import SOFTMAX, SWITCH_IMAGES, TAYLOR, MaNo, mano_score, uniform_cross_entropy
from stream_monitor.estimation.readings import Feed, Target


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


UNSURE = [[1.0, -1.0], [0.0, 0.0]]  # row-centred logits
# Taylor: 1 + z + z^2/2 = [2.5, 0.5] and [1, 1]; less the row minimum, L1-normalised: [1, 0] and [0, 0]
TAYLOR_SCORE = (1.0 / 4) ** 0.25
A = math.e ** 2 / (1 + math.e ** 2)  # softmax of [2, 0]
SOFTMAX_SCORE = ((A ** 4 + (1 - A) ** 4 + 2 * 0.5 ** 4) / 4) ** 0.25


def test_mano_scores_by_hand():
    assert mano_score(softmax(UNSURE), TAYLOR) == pytest.approx(TAYLOR_SCORE)
    assert mano_score(softmax([[2.0, 0.0], [0.0, 0.0]]), SOFTMAX) == pytest.approx(SOFTMAX_SCORE)


def test_criterion_is_the_cross_entropy_to_the_uniform():
    # -mean log softmax: row [1, -1] gives log(e + 1/e), row [0, 0] gives log 2
    expected = (math.log(math.e + 1 / math.e) + math.log(2)) / 2
    assert uniform_cross_entropy(np.array(UNSURE)) == pytest.approx(expected)


def test_mano_freezes_the_branch_chosen_on_the_first_images():
    mano = MaNo(feed=Feed.FROZEN, lines={TAYLOR: (100.0, -20.0), SOFTMAX: (10.0, 0.0)})
    unsure = np.tile(softmax(UNSURE), (SWITCH_IMAGES // 2, 1))  # the two rows by turns
    mano.update(unsure[:10])
    assert mano.branch is None and mano.reading().value is None  # no value before the switch is set
    mano.update(unsure[10:])
    assert mano.branch == TAYLOR
    reading = mano.reading()
    assert reading.target == Target.SOURCE and reading.score == pytest.approx(TAYLOR_SCORE)
    assert reading.value == pytest.approx(100 * TAYLOR_SCORE - 20)
    mano.reset()  # a new window of confident images: Phi > 5 now, but the branch stays Taylor
    confident = softmax([[20.0, -20.0]] * 4)
    assert uniform_cross_entropy(np.log(confident)) > 5
    mano.update(confident)
    assert mano.branch == TAYLOR
    assert mano.score() == pytest.approx(mano_score(confident, TAYLOR))


def test_a_window_before_the_switch_counts_only_its_own_images():
    mano = MaNo(lines={TAYLOR: (100.0, 0.0)})
    mano.update(softmax([[3.0, -3.0]] * (SWITCH_IMAGES - 240)))  # the first window's
    mano.reset()
    assert mano.reading().value is None
    mano.update(softmax(UNSURE * 120))  # the switch falls here, on all the images so far
    assert mano.branch == TAYLOR and mano.count == 240 * 2
    assert mano.score() == pytest.approx(TAYLOR_SCORE)


def test_mano_picks_softmax_on_confident_first_images_and_restores_from_a_checkpoint(tmp_path):
    mano = MaNo(lines={SOFTMAX: (100.0, 0.0)})
    mano.update(softmax([[20.0, -20.0]] * (SWITCH_IMAGES - 1)))
    torch.save(mano.state_dict(), tmp_path / "mano.pt")  # undecided: the pending images go too
    again = MaNo(lines={SOFTMAX: (100.0, 0.0)})
    again.load_state_dict(torch.load(tmp_path / "mano.pt", weights_only=True))
    for estimator in (mano, again):
        estimator.update(softmax([[20.0, -20.0]]))
    assert again.branch == mano.branch == SOFTMAX and again.compute() == pytest.approx(mano.compute())


def test_mano_without_a_line_has_a_score_but_no_value():
    mano = MaNo(lines={})
    assert mano.reading().value is None and mano.reading().score is None  # nothing seen
    mano.update(softmax(UNSURE * (SWITCH_IMAGES // 2)))
    reading = mano.reading()
    assert reading.value is None and reading.score == pytest.approx(TAYLOR_SCORE)
    with pytest.raises(NotComputableError, match="line"):
        mano.compute()


def test_cbpe_reads_the_isotonic_map_or_the_raw_max_softmax():
    rows = np.array([[0.75, 0.25], [0.4, 0.6]])  # max-softmax 0.75 and 0.6
    knots = ((0.5, 1.0), (0.2, 0.9))
    # 0.75 -> 0.2 + 0.25 / 0.5 * 0.7 = 0.55; 0.6 -> 0.2 + 0.1 / 0.5 * 0.7 = 0.34
    assert calibrated_confidence(rows, knots) == pytest.approx([0.55, 0.34])
    assert calibrated_confidence(np.array([[0.3, 0.3, 0.4]]), knots) == pytest.approx([0.2])  # clipped below
    cbpe = CBPE(isotonic=knots)
    cbpe.update(rows)
    assert cbpe.compute() == pytest.approx(100 * (0.55 + 0.34) / 2)
    raw = CBPE(feed=Feed.FROZEN)
    raw.update(rows)
    assert raw.reading().value == pytest.approx(100 * (0.75 + 0.6) / 2)
    assert CBPE().reading().value is None  # no image: no value, not zero


def test_expected_calibration_error_over_equal_mass_bins():
    # bins [0.6, 0.6] (both right: |1 - 0.6|) and [0.9, 0.9] (one right: |0.5 - 0.9|), each half the mass
    confidence, correct = np.array([0.9, 0.6, 0.9, 0.6]), np.array([1.0, 1.0, 0.0, 1.0])
    assert expected_calibration_error(confidence, correct, bins=2) == pytest.approx(40.0)


def test_isotonic_map_is_kept_only_where_it_lowers_held_out_ece():
    rng = np.random.default_rng(0)
    n = 2000
    # over-confident: max-softmax 0.6-1.0 (a band per window) but right half the time
    top = np.concatenate([rng.uniform(lo, lo + 0.1, 500) for lo in (0.6, 0.7, 0.8, 0.9)])
    probs = np.column_stack([top, 0.7 * (1 - top), 0.3 * (1 - top)])  # unequal runners-up: else the Taylor score is constant
    labels = np.where(rng.random(n) < 0.5, 0, 1)
    windows = [(probs[i:i + 500], labels[i:i + 500]) for i in range(0, n, 500)]
    maps = fit_baseline_maps(windows, {})
    assert maps.ece_calibrated < maps.ece_raw and maps.cbpe_isotonic is not None
    assert calibrated_confidence(probs, maps.cbpe_isotonic).mean() == pytest.approx(0.5, abs=0.05)
    assert set(maps.mano_lines) == {SOFTMAX, TAYLOR}


def test_maps_round_trip_through_their_file(tmp_path):
    maps = BaselineMaps({SOFTMAX: (1.0, 2.0), TAYLOR: (3.0, 4.0)}, ((0.1, 0.9), (0.2, 0.8)), 5.0, 4.0, {"model": "m"})
    maps.save(tmp_path / "m.json")
    assert BaselineMaps.load(tmp_path / "m.json") == maps


def test_both_baselines_are_registered_on_both_feeds():
    for name in ("mano", "cbpe"):
        cls = ESTIMATORS.get(name)
        assert set(cls.feeds) == {Feed.SERVED, Feed.FROZEN} and cls.requires is None
