"""The Entropy-Sentinel-style window estimator: features on hand-checkable windows, the meta-set
forest, the estimator contract and its checkpoint."""

import json
import math

import numpy as np
import pytest
import torch

from stream_monitor.estimation import ESTIMATORS, Feed, NotComputableError
from stream_monitor.estimation.sentinel import (ALL_FEATURES, FEATURES, MARGINAL_FEATURES, EntropySentinel,
                                                SentinelRegressor, fit_sentinel, leading, marginal_features, profile,
                                                window_features)
from stream_monitor.estimation.window import FeedStats

#: One forest for the tests that are not about the grid search: GRID's 9 points x 5 folds of
#: 100-tree forests made this file the slowest of the unit tests.
ONE_POINT = {"max_depth": (5,), "min_samples_split": (2,)}


def feature(values, name):
    return values[FEATURES.index(name)]


def test_seventeen_features_in_the_papers_order():
    assert len(FEATURES) == 17
    assert FEATURES[:10] == ("mean", "std", "max", "q10", "q25", "q50", "q75", "q90", "skewness", "kurtosis")
    assert ESTIMATORS.get("sentinel") is EntropySentinel


def test_uniform_softmax_has_the_entropy_and_perplexity_of_k_classes():
    k = 8
    h, nll = profile(np.full((50, k), 1.0 / k))
    assert np.allclose(h, math.log(k)) and np.allclose(nll, math.log(k))
    f = window_features(h, nll)
    for name in ("mean", "max", "q10", "q50", "q90", "se_sum", "nll_avg", "nll_max", "nll_sum"):
        assert feature(f, name) == pytest.approx(math.log(k))
    assert feature(f, "std") == pytest.approx(0.0, abs=1e-12)
    assert feature(f, "skewness") == 0.0 and feature(f, "kurtosis") == 0.0  # constant profile
    assert feature(f, "ppl") == pytest.approx(k)
    assert feature(f, "lntp") == pytest.approx(math.log(k) * math.log(math.log(k)))


def test_one_hot_windows_are_certain_and_the_nll_log_term_is_zero_there():
    h, nll = profile(np.eye(5)[[0, 1, 2, 3, 4, 0, 1]])
    f = window_features(h, nll)
    assert np.allclose(f[:8], 0.0, atol=1e-9)
    assert feature(f, "lntp") == pytest.approx(0.0, abs=1e-9) and feature(f, "ppl") == pytest.approx(1.0)


def test_two_valued_profile_by_hand():
    # half the images certain (H = 0), half uniform over 2 classes (H = ln 2)
    probs = np.array([[1.0, 0.0]] * 5 + [[0.5, 0.5]] * 5)
    h, nll = profile(probs)
    f = window_features(h, nll)
    ln2 = math.log(2)
    assert feature(f, "mean") == pytest.approx(ln2 / 2)
    assert feature(f, "std") == pytest.approx(ln2 / 2)
    assert feature(f, "q25") == pytest.approx(0.0, abs=1e-9) and feature(f, "q75") == pytest.approx(ln2)
    assert feature(f, "skewness") == pytest.approx(0.0, abs=1e-9)  # symmetric
    assert feature(f, "kurtosis") == pytest.approx(-2.0)  # two points: Fisher kurtosis 1 - 3
    assert feature(f, "nll_max") == pytest.approx(ln2)
    # -lp log(-lp): 0 on the certain half, ln2 ln(ln2) < 0 on the other, so the max is 0
    assert feature(f, "lntp") == pytest.approx(ln2 * math.log(ln2) / 2)
    assert feature(f, "mtp") == pytest.approx(0.0, abs=1e-9)


def synthetic_meta_set(rng, runs=6, windows=8, k=10):
    """Windows whose softmax sharpness sets their accuracy: accuracy falls as the entropy rises."""
    features, accuracy, groups = [], [], []
    for run in range(runs):
        for w in range(windows):
            sharpness = rng.uniform(0.5, 6.0)
            logits = rng.normal(size=(400, k)) * sharpness
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            h, nll = profile(probs)
            features.append(window_features(h, nll).tolist())
            accuracy.append(float(100 * np.exp(-h.mean())))
            groups.append(f"run{run}")
    return features, accuracy, groups


def test_the_forest_learns_a_meta_set_and_survives_a_json_round_trip():
    rng = np.random.default_rng(0)
    x, y, groups = synthetic_meta_set(rng)
    training = fit_sentinel(x[:40], y[:40], groups[:40], grid={"max_depth": (2, 10), "min_samples_split": (2,)})
    assert training["params"] in ({"max_depth": 2, "min_samples_split": 2}, {"max_depth": 10, "min_samples_split": 2})
    assert training["cv_mae"] is not None
    held_out = np.array([SentinelRegressor(training)(f) for f in x[40:]])
    assert np.abs(held_out - np.array(y[40:])).mean() < 5.0  # targets span ~5-60 points
    again = json.loads(json.dumps(training))
    assert [SentinelRegressor(again)(f) for f in x[40:]] == list(held_out)  # deterministic refit


def test_held_out_runs_choose_the_regressor_and_each_kind_refits_from_the_file():
    rng = np.random.default_rng(2)
    # accuracy linear in the features, and the last run's windows beyond every other run's range:
    # a forest cannot reach them, a line can
    x = rng.uniform(0, 1, (60, 17))
    x[50:, 0] += 1.0
    y = 10 + 30 * x[:, 0] + rng.normal(0, 0.5, 60)
    groups = [f"run{k // 10}" for k in range(60)]
    training = fit_sentinel(x.tolist(), y.tolist(), groups, grid=ONE_POINT)
    assert set(training["cv_maes"]) == {"forest", "ridge", "blend"}
    assert training["regressor"] == "ridge" and training["cv_mae"] == min(training["cv_maes"].values())
    window = [2.5] + [0.5] * 16  # beyond the training range (x0 <= 2, accuracy <= 70)
    values = {kind: SentinelRegressor({**training, "regressor": kind})(window) for kind in ("forest", "ridge", "blend")}
    assert abs(values["ridge"] - 85.0) < 3 and values["forest"] < 71  # the line reaches 10 + 30 x 2.5, the forest not
    assert values["blend"] == pytest.approx((values["forest"] + values["ridge"]) / 2)
    old = {k: v for k, v in training.items() if k != "regressor"}  # a calibration of another version
    with pytest.raises(ValueError, match="Unknown Sentinel regressor None.*Make the calibration again"):
        SentinelRegressor(old)
    with pytest.raises(ValueError, match="Unknown Sentinel regressor 'boosted'"):
        SentinelRegressor({**training, "regressor": "boosted"})


def test_the_forest_clips_to_a_percentage():
    training = {"features": [[0.0] * 17, [1.0] * 17] * 10, "accuracy": [150.0, -20.0] * 10, "regressor": "forest",
                "params": {"max_depth": 2, "min_samples_split": 2}, "seed": 0}
    forest = SentinelRegressor(training)
    assert forest([0.0] * 17) == 100.0 and forest([1.0] * 17) == 0.0


def test_no_window_reads_below_the_least_accurate_meta_set_window():
    x = np.linspace(0.0, 1.0, 20)
    training = {"features": [[v] * 17 for v in x], "accuracy": list(50.0 - 40.0 * x), "regressor": "ridge",
                "params": {"max_depth": 2, "min_samples_split": 2}, "seed": 0}
    line = SentinelRegressor(training)
    assert line.floor == 10.0
    assert line([2.0] * 17) == 10.0  # the line alone would say -30
    assert line([0.5] * 17) == pytest.approx(30.0, abs=0.5) and line([-0.5] * 17) > 50.0  # it still reaches up


def test_too_few_meta_set_runs_keep_the_default_grid_point():
    rng = np.random.default_rng(1)
    x, y, _ = synthetic_meta_set(rng, runs=1, windows=6)
    training = fit_sentinel(x, y, ["one"] * 6)
    assert training["cv_mae"] is None and training["params"] == {"max_depth": 5, "min_samples_split": 2}


def test_estimator_needs_a_calibration_and_enough_images():
    est = EntropySentinel()
    est.update(np.full((64, 4), 0.25))
    with pytest.raises(NotComputableError, match="sentinel"):
        est.compute()
    assert est.features() is not None  # features are recorded even without a calibration
    rng = np.random.default_rng(2)
    x, y, groups = synthetic_meta_set(rng, runs=3, windows=4)
    few = EntropySentinel(FeedStats(sentinel=fit_sentinel(x, y, groups, grid=ONE_POINT)))
    few.update(np.full((8, 4), 0.25))
    assert few.features() is None
    with pytest.raises(NotComputableError, match="32 images"):
        few.compute()


def test_estimate_is_the_forest_on_the_whole_window_and_reset_starts_a_new_one(tmp_path):
    rng = np.random.default_rng(3)
    x, y, groups = synthetic_meta_set(rng, runs=3, windows=5)
    stats = FeedStats(sentinel=fit_sentinel(x, y, groups, grid=ONE_POINT))
    est = EntropySentinel(stats, Feed.FROZEN)
    assert est.target == "source" and est.key == "frozen/sentinel"
    batches = [np.exp(l) / np.exp(l).sum(1, keepdims=True) for l in rng.normal(size=(5, 64, 10)) * 3]
    for b in batches:
        est.update(b)
    whole = np.concatenate(batches)
    counts = np.bincount(whole.argmax(1), minlength=10)
    expected = window_features(*profile(whole)).tolist() + marginal_features(counts)
    assert est.features() == pytest.approx(expected, rel=1e-5)
    assert est.compute() == SentinelRegressor(stats.sentinel)(est.features())
    torch.save(est.state_dict(), tmp_path / "s.pt")
    restored = EntropySentinel(stats, Feed.FROZEN)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored.compute() == est.compute()
    est.reset()
    assert est.features() is None


def test_marginal_features_by_hand():
    k = 4
    pile = marginal_features(np.array([12, 0, 0, 0]))  # every prediction on one class
    assert pile == pytest.approx([1.0, 0.0, 1.0 / k])  # the overlap bounds a balanced stream's accuracy by 1/K
    assert marginal_features(np.array([5, 5, 5, 5])) == pytest.approx([0.25, 1.0, 1.0])
    # q = (1/2, 1/2, 0, 0): entropy ln2 / ln4 = 1/2, overlap 1/4 + 1/4
    assert marginal_features(np.array([3, 3, 0, 0])) == pytest.approx([0.5, 0.5, 0.5])
    assert MARGINAL_FEATURES == ("top_share", "class_entropy", "prior_overlap")


def wide_meta_set(rng, runs=4, windows=8, k=10):
    """The synthetic meta-set with its marginal features and an agreement column that is the accuracy."""
    x, y, groups = synthetic_meta_set(rng, runs, windows, k)
    wide = [f + marginal_features(rng.multinomial(400, np.full(k, 1.0 / k))) + [a / 100] for f, a in zip(x, y)]
    return wide, y, groups


def test_a_forest_uses_the_columns_it_shares_with_the_window_and_the_same_sidekicks_agreement():
    x, y, groups = wide_meta_set(np.random.default_rng(4))
    training = fit_sentinel(x, y, groups, sidekick="small", grid=ONE_POINT)
    assert training["names"] == list(ALL_FEATURES) and training["sidekick"] == "small"
    forest = SentinelRegressor(training)
    window = x[0]
    assert forest.columns(window, "small") == len(ALL_FEATURES)
    assert forest.columns(window, "other") == forest.columns(window, None) == 20  # another sidekick's agreement
    assert forest.columns(window[:17], "small") == 17  # a window recorded before the extension
    # each width is a forest fitted on those leading columns alone
    for width, sidekick in ((21, "small"), (20, "other"), (17, "small")):
        alone = SentinelRegressor({**training, "features": [f[:width] for f in training["features"]]})
        assert forest(window[:width], sidekick) == alone(window[:width], sidekick)
    cut = leading(training, 20)  # the ablation: no agreement column, whatever the window has
    assert cut["names"] == list(ALL_FEATURES[:20]) and cut["sidekick"] is None
    assert SentinelRegressor(cut)(window, "small") == forest(window[:20])
    # a training set from before the extension scores a wide window on its 17
    old = SentinelRegressor(fit_sentinel([f[:17] for f in x], y, groups, grid=ONE_POINT))
    assert old.columns(window, "small") == 17 and old(window, "small") == old(window[:17])


def test_mixed_widths_train_on_the_shared_prefix_and_no_agreement_forgets_the_sidekick():
    x, y, groups = wide_meta_set(np.random.default_rng(5), runs=3, windows=4)
    mixed = [f[:17] if i % 2 else f for i, f in enumerate(x)]
    training = fit_sentinel(mixed, y, groups, sidekick="small", grid=ONE_POINT)
    assert len(training["features"][0]) == 17 and training["names"] == list(FEATURES)
    assert training["sidekick"] is None


def test_the_agreement_with_the_sidekick_is_the_last_feature_and_survives_a_checkpoint(tmp_path):
    rng = np.random.default_rng(6)
    probs = np.exp(rng.normal(size=(64, 5)) * 2)
    probs /= probs.sum(1, keepdims=True)
    sidekick = np.log(probs.copy())
    sidekick[:16] = np.log(np.roll(probs[:16], 1, axis=1))  # a quarter where the sidekick's class differs
    disagree = (probs[:16].argmax(1) != np.roll(probs[:16], 1, axis=1).argmax(1)).sum()
    est = EntropySentinel()
    est.update(probs)
    assert len(est.features()) == 20  # no sidekick fed: no agreement column
    est.update_sidekick(probs, sidekick)
    assert est.features()[-1] == pytest.approx(1 - disagree / 64) and len(est.features()) == len(ALL_FEATURES)
    torch.save(est.state_dict(), tmp_path / "s.pt")
    restored = EntropySentinel()
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert restored.features() == est.features()


def test_a_checkpoint_without_the_windows_counts_is_refused():
    est = EntropySentinel()
    est.update(np.full((64, 4), 0.25))
    state = est.state_dict()
    old = {"entropy": state["entropy"], "nll": state["nll"]}  # what a checkpoint of an older version held
    with pytest.raises(KeyError, match="served/sentinel lacks counts, agreed, paired.*without --resume"):
        EntropySentinel().load_state_dict(old)