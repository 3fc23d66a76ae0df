"""Label-free window estimators (AC, DoC, ATC-MC/NE, COT, nuclear norm), their source statistics,
and the merge of calibrations that refits the nuclear-norm line."""

import itertools
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from stream_monitor.calibration import Calibration, CalibrationMismatch, fit_flips, merge
from stream_monitor.calibration.fit import nuclear_line
from stream_monitor.estimation.base import ESTIMATORS, NotComputableError
from stream_monitor.estimation.window import (
    RESERVOIR, ATCMaxConfidence, ATCNegativeEntropy, AverageConfidence, DifferenceOfConfidences,
    NuclearNorm, OptimalTransport, FeedStats, atc_threshold, fit_feed_stats, negative_entropy, scale,
    stats_from_dict,
)


def rows(*maxima, k=4):
    """Softmax rows whose max (class j % k for row j) is the given value, the rest spread evenly."""
    out = np.full((len(maxima), k), 0.0)
    for j, top in enumerate(maxima):
        out[j] = (1.0 - top) / (k - 1)
        out[j, j % k] = top
    return out


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# --------------------------------------------------------------------------- AC and DoC

def test_average_confidence_is_the_mean_max_softmax_over_all_updates():
    ac = AverageConfidence()
    with pytest.raises(NotComputableError, match="no image"):
        ac.compute()
    ac.update(rows(0.9, 0.5))
    assert ac.compute() == pytest.approx(70.0)
    ac.update(rows(0.7))
    ac.update(np.zeros((0, 4)))  # an empty step counts nothing
    assert ac.compute() == pytest.approx(100 * (0.9 + 0.5 + 0.7) / 3)
    ac.reset()
    with pytest.raises(NotComputableError):
        ac.compute()
    ac.update(rows(0.4))
    assert ac.compute() == pytest.approx(40.0)


def test_doc_shifts_the_source_accuracy_by_the_drop_in_confidence():
    doc = DifferenceOfConfidences(FeedStats(accuracy=90.0, mean_confidence=95.0))
    doc.update(rows(0.8, 0.6))  # AC_t = 70
    assert doc.compute() == pytest.approx(90.0 - (95.0 - 70.0))


def test_doc_without_source_stats_names_the_missing_fields():
    doc = DifferenceOfConfidences()
    doc.update(rows(0.8))
    with pytest.raises(NotComputableError, match=r"doc needs a calibration with accuracy, mean_confidence"):
        doc.compute()
    only_acc = DifferenceOfConfidences(FeedStats(accuracy=90.0))
    only_acc.update(rows(0.8))
    with pytest.raises(NotComputableError, match=r"with mean_confidence$"):
        only_acc.compute()


# --------------------------------------------------------------------------- ATC

def test_atc_threshold_leaves_exactly_the_error_share_below_it():
    scores = np.array([0.55, 0.91, 0.30, 0.72, 0.10, 0.88, 0.64, 0.47, 0.99, 0.20])
    correct = np.ones(10, bool)
    correct[[1, 4, 7]] = False  # 3 wrong: Acc_S = 70%
    t = atc_threshold(scores, correct)
    assert t == 0.47  # the 4th smallest score
    assert np.mean(scores < t) == pytest.approx(1 - correct.mean())
    assert atc_threshold(scores, np.ones(10, bool)) == 0.10  # no error: nothing below t
    all_wrong = atc_threshold(scores, np.zeros(10, bool))
    assert all_wrong > scores.max() and np.mean(scores < all_wrong) == 1.0


def test_atc_mc_is_the_share_of_the_window_at_or_above_the_threshold():
    atc = ATCMaxConfidence(FeedStats(atc_mc_threshold=0.6))
    atc.update(rows(0.9, 0.5, 0.6))  # 0.9 and 0.6 count
    atc.update(rows(0.3, 0.75))     # 0.75 counts
    assert atc.compute() == pytest.approx(100 * 3 / 5)


def test_atc_ne_thresholds_the_negative_entropy():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2]])
    by_hand = [0.0, math.log(0.5), 0.9 * math.log(0.9) + 0.1 * math.log(0.1), 0.8 * math.log(0.8) + 0.2 * math.log(0.2)]
    assert negative_entropy(probs) == pytest.approx(by_hand, abs=1e-9)
    # -0.325 (p = 0.9) is above -0.4; -0.500 (p = 0.8) and -0.693 are below
    atc = ATCNegativeEntropy(FeedStats(atc_ne_threshold=-0.4))
    atc.update(probs)
    assert atc.compute() == pytest.approx(50.0)


@pytest.mark.parametrize("cls, field", [(ATCMaxConfidence, "atc_mc_threshold"), (ATCNegativeEntropy, "atc_ne_threshold")])
def test_atc_without_a_threshold_updates_but_is_not_computable(cls, field):
    atc = cls()
    atc.update(rows(0.9, 0.5))
    with pytest.raises(NotComputableError, match=field):
        atc.compute()


# --------------------------------------------------------------------------- temperature and source stats

def test_scale_identity_at_one_and_flattens_above():
    probs = softmax(np.random.default_rng(0).normal(size=(6, 5)) * 2)
    assert np.array_equal(scale(probs, 1.0), probs)
    flat = scale(probs, 2.5)
    assert np.allclose(flat.sum(1), 1.0)
    assert (flat.max(1) < probs.max(1)).all()
    assert np.array_equal(flat.argmax(1), probs.argmax(1))
    sharp = scale(probs, 0.5)
    assert (sharp.max(1) > probs.max(1)).all() and np.allclose(sharp.sum(1), 1.0)


def test_fit_source_stats_recovers_over_confidence():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 10)) * 1.5
    labels = (rng.random((4000, 1)) < softmax(logits).cumsum(1)).argmax(1)  # drawn from softmax(logits)
    probs = softmax(3.0 * logits).astype(np.float32)  # three times too confident
    stats = fit_feed_stats(probs, labels)
    assert 2.4 < stats.temperature < 3.6
    scaled = scale(probs, stats.temperature)
    assert stats.accuracy == pytest.approx(100 * np.mean(scaled.argmax(1) == labels))
    assert stats.mean_confidence == pytest.approx(100 * scaled.max(1).mean())
    assert 0 < stats.accuracy < 100 and 0 < stats.mean_confidence < 100
    assert stats.mean_confidence < 100 * probs.max(1).mean()  # calibrated confidence is lower
    for value in (stats.temperature, stats.accuracy, stats.mean_confidence, stats.atc_mc_threshold,
                  stats.atc_ne_threshold):
        assert type(value) is float
    assert stats_from_dict(json.loads(json.dumps(asdict(stats)))) == stats
    # the risk test's precision: of the images under the ATC threshold, how many are wrong
    flagged = scaled.max(1) < stats.atc_mc_threshold
    wrong = scaled.argmax(1) != labels
    assert stats.flag_precision == (int((flagged & wrong).sum()), int(flagged.sum()))
    assert 0 < stats.flag_precision[0] < stats.flag_precision[1]
    older = {k: v for k, v in json.loads(json.dumps(asdict(stats))).items() if k != "flag_precision"}
    assert stats_from_dict(older).flag_precision is None  # a file made before it was recorded still loads
    # calibrated on S, ATC-MC reproduces Acc_S on S itself
    atc = ATCMaxConfidence(stats)
    atc.update(probs)
    assert atc.compute() == pytest.approx(stats.accuracy, abs=0.1)


# --------------------------------------------------------------------------- COT

def test_cot_one_hot_predictions_spread_over_the_classes_are_fully_accurate():
    cot = OptimalTransport()
    cot.update(np.eye(5)[np.arange(20) % 5][::-1].copy())
    assert cot.compute() == pytest.approx(100.0)


def test_cot_uniform_softmax_is_one_over_k():
    cot = OptimalTransport()
    cot.update(np.full((12, 4), 0.25))
    assert cot.compute() == pytest.approx(25.0)


def test_cot_matches_a_brute_force_assignment():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = [0, 1, 0, 1]
    best = min(np.mean([1 - probs[i, labels[j]] for i, j in enumerate(perm)])
               for perm in itertools.permutations(range(4)))
    cot = OptimalTransport()
    cot.update(probs)
    assert cot.compute() == pytest.approx(100 * (1 - best), abs=1e-4)  # the reservoir is float32


def test_reservoir_estimators_need_two_images():
    for cls in (OptimalTransport, NuclearNorm):
        est = cls(FeedStats(nuclear_fit=(100.0, 0.0)))
        with pytest.raises(NotComputableError, match="a few images"):
            est.compute()
        est.update(rows(0.9))
        with pytest.raises(NotComputableError):
            est.compute()


# --------------------------------------------------------------------------- nuclear norm

def test_nuclear_norm_score_of_a_one_hot_permutation_is_one():
    nn = NuclearNorm()
    nn.update(np.eye(6)[[3, 0, 5, 1, 4, 2]])
    assert nn.score() == pytest.approx(1.0)


def test_nuclear_norm_score_of_identical_rows():
    p = np.array([0.6, 0.3, 0.1])
    probs = np.tile(p, (5, 1))
    nn = NuclearNorm()
    nn.update(probs)
    m, k = probs.shape
    from_definition = np.linalg.svd(probs, compute_uv=False).sum() / np.sqrt(m * min(m, k))
    assert nn.score() == pytest.approx(from_definition, rel=1e-5)
    assert nn.score() == pytest.approx(np.linalg.norm(p) / np.sqrt(min(m, k)), rel=1e-5)  # rank one


def test_nuclear_norm_compute_maps_through_the_line_and_clips():
    probs = softmax(np.random.default_rng(2).normal(size=(30, 8)) * 2)
    nn = NuclearNorm(FeedStats(nuclear_fit=(120.0, -10.0)))
    nn.update(probs)
    score = nn.score()
    assert 0 < score < 1
    assert nn.compute() == pytest.approx(120.0 * score - 10.0)
    high = NuclearNorm(FeedStats(nuclear_fit=(1000.0, 50.0)))
    high.update(probs)
    assert high.compute() == 100.0
    low = NuclearNorm(FeedStats(nuclear_fit=(-1000.0, 0.0)))
    low.update(probs)
    assert low.compute() == 0.0
    without = NuclearNorm()
    without.update(probs)
    with pytest.raises(NotComputableError, match="nuclear_fit"):
        without.compute()


def test_reservoir_keeps_only_the_most_recent_rows():
    probs = softmax(np.random.default_rng(3).normal(size=(RESERVOIR + 300, 3)))
    cot = OptimalTransport()
    cot.update(probs[:700])
    cot.update(probs[700:])
    assert cot.recent.shape == (RESERVOIR, 3) and cot.recent.dtype == np.float32
    assert np.allclose(cot.recent, probs[-RESERVOIR:])
    cot.reset()
    assert len(cot.recent) == 0


# --------------------------------------------------------------------------- checkpoints

FULL = FeedStats(temperature=1.5, accuracy=80.0, mean_confidence=85.0, atc_mc_threshold=0.6,
                   atc_ne_threshold=-0.8, nuclear_fit=(110.0, -5.0))


#: The softmax estimators that need nothing but a calibration's statistics (the Sentinel: test_sentinel.py;
#: MaNo, which needs its line and 640 images first: estimation/test_baselines.py).
SOFTMAX = [ESTIMATORS.get(n) for n in ESTIMATORS.names()
           if ESTIMATORS.get(n).requires is None and n not in ("sentinel", "mano")]


@pytest.mark.parametrize("cls", SOFTMAX, ids=lambda c: c.name)
def test_state_dict_round_trip_through_a_weights_only_checkpoint(cls, tmp_path):
    rng = np.random.default_rng(4)
    est = cls(FULL)
    for _ in range(3):
        est.update(softmax(rng.normal(size=(16, 6)) * 2))
    state = est.state_dict()
    assert all(isinstance(v, (torch.Tensor, int, float)) for v in state.values()), state
    assert set(state) == set(cls.state_keys)  # what the window accumulated, never the calibration
    torch.save(state, tmp_path / "est.pt")
    restored = cls(FULL)
    restored.load_state_dict(torch.load(tmp_path / "est.pt", weights_only=True))
    assert restored.compute() == est.compute()
    # and both go on identically
    more = softmax(rng.normal(size=(8, 6)))
    est.update(more)
    restored.update(more)
    assert restored.compute() == est.compute()


# --------------------------------------------------------------------------- calibration merge

def calibration(**changes):
    base = dict(model="embedded_resnet20", model_sha256="ab" * 32, adapter="rdumb",
                hyperparameters={"lr": 0.00025, "reset_every": 1000}, probe_size=1000, probe_every=100, cycle=1000,
                domains=["clean"], fits={})
    base.update(changes)
    return Calibration(**base)


def point(domain, wf, nn_score, step=990):
    # accuracy on a known line in WF (acc = 90 - 0.5 WF) and in NN (online acc = 0.8 * NN% + 10)
    return {"domain": domain, "cycle_step": step, "weighted_flips": wf, "true_source_acc": 90.0 - 0.5 * wf,
            "true_online_acc": 0.8 * nn_score + 10.0, "nuclear_norm_score": nn_score}


def test_merge_concatenates_and_refits_over_all_points():
    a_points = [point("clean", 2.0, 95.0), point("spatter:3", 10.0, 80.0)]
    b_points = [point("speckle_noise:3", 40.0, 50.0), point("speckle_noise:5", 80.0, 20.0),
                {**point("gaussian_blur:5", 60.0, 30.0), "nuclear_norm_score": None}]
    stats = asdict(FeedStats(temperature=1.2, accuracy=91.0, mean_confidence=93.0, atc_mc_threshold=0.5,
                               atc_ne_threshold=-1.0, nuclear_fit=None))
    a = calibration(domains=["clean", "spatter:3"], points=a_points, fits=fit_flips(a_points), served_stats=stats)
    b = calibration(domains=["speckle_noise:3", "speckle_noise:5", "gaussian_blur:5"], points=b_points,
                    fits=fit_flips(b_points), served_stats={**stats, "temperature": 9.0})
    assert a.fits == {} and b.fits == {}  # neither alone has enough domains
    merged = merge([a, b])
    assert merged.domains == a.domains + b.domains and merged.points == a_points + b_points
    assert set(merged.fits) == {990}  # five domains: a line
    assert np.allclose(merged.fits[990]["coefficients"], [0.0, -0.5, 90.0], atol=1e-9)
    assert merged.fits[990]["domains"] == 5 and merged.fits[990]["range"] == [2.0, 80.0]
    slope, intercept = merged.served_stats["nuclear_fit"]
    assert slope == pytest.approx(80.0) and intercept == pytest.approx(10.0)  # NN in [0, 1] -> accuracy %
    assert merged.served_stats["temperature"] == 1.2  # the rest from the first calibration
    assert merged.window_stats().nuclear_fit == (slope, intercept)
    assert a.served_stats["nuclear_fit"] is None  # the inputs are left alone
    # the refitted line applies to the estimator's own [0, 1] score
    nn = NuclearNorm(merged.window_stats())
    nn.update(np.eye(4))
    assert nn.compute() == pytest.approx(90.0)


def test_merge_keeps_the_sidekicks_agreement_column_beside_a_file_without_sentinel_features():
    from stream_monitor.estimation.sentinel import ALL_FEATURES

    rng = np.random.default_rng(0)
    featured = [{**point(f"heldout-ccc/s{k % 4}#cycle{k}", 10.0 + k, 50.0 + k),
                 "sentinel_features": list(rng.random(len(ALL_FEATURES)))} for k in range(8)]
    with_duo = asdict(FeedStats(duo={"model": "embedded-small", "temperatures": [1.0, 1.0]}))
    new = calibration(domains=["heldout-ccc/s0"], points=featured, served_stats=with_duo)
    old = calibration(domains=["clean"], points=[point("clean", 2.0, 95.0)], served_stats=asdict(FeedStats()))
    for merged in (merge([new, old]), merge([old, new])):
        sentinel = merged.served_stats["sentinel"]
        assert sentinel["sidekick"] == "embedded-small" and len(sentinel["features"][0]) == len(ALL_FEATURES)
    other = calibration(domains=["heldout-ccc/s9"], points=featured,
                        served_stats=asdict(FeedStats(duo={"model": "resnet18", "temperatures": [1.0, 1.0]})))
    assert merge([new, other]).served_stats["sentinel"]["sidekick"] is None  # two sidekicks: no agreement column


def test_nuclear_line_needs_three_spread_points():
    assert nuclear_line([point("a", 0, 50.0), point("b", 0, 60.0)]) is None
    assert nuclear_line([point("a", 0, 50.0), point("b", 0, 50.0), point("c", 0, 50.0)]) is None
    assert nuclear_line([{"nuclear_norm_score": 50.0, "true_online_acc": None}] * 3) is None


def test_merge_refuses_calibrations_with_different_adapters():
    a = calibration(domains=["clean"], points=[point("clean", 2.0, 95.0)])
    b = calibration(adapter="tent", domains=["spatter:3"], points=[point("spatter:3", 10.0, 80.0)])
    with pytest.raises(CalibrationMismatch, match="adapter: calibration has 'tent', the run has 'rdumb'"):
        merge([a, b])
