"""Asymmetric Duos: aggregation and temperatures, the two estimators, and a run with a sidekick actor."""

import numpy as np
import pytest
import torch
import torchvision

from stream_monitor.calibrate import calibrate
from stream_monitor.config import load_config
from stream_monitor.estimation.base import NotComputableError
from stream_monitor.estimation.duo import (DuoAgreement, DuoConfidence, _duo_nll, duo_probabilities,
                                           fit_duo_temperatures)
from stream_monitor.estimation.sentinel import ALL_FEATURES
from stream_monitor.estimation.window import FeedStats
from stream_monitor.metrics.sink import read_table
from stream_monitor.runtime.runner import run


def log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)


def test_aggregation_is_the_softmax_of_the_mean_tempered_logits():
    large, small = np.array([[2.0, 0.0, 0.0]]), np.array([[0.0, 4.0, 0.0]])
    p = duo_probabilities(large, small)  # z = (1, 2, 0)
    expected = np.exp([1.0, 2.0, 0.0]) / np.exp([1.0, 2.0, 0.0]).sum()
    assert np.allclose(p, expected)
    p = duo_probabilities(large, small, 1.0, 4.0)  # z = (1, 0.5, 0)
    assert p[0].argmax() == 0
    # a per-image constant on either model's logits changes nothing (log-softmax is enough)
    assert np.allclose(duo_probabilities(large + 7.0, small - 3.0, 2.0, 0.5), duo_probabilities(large, small, 2.0, 0.5))


def test_joint_temperatures_beat_the_untempered_duo_and_the_grid():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 600)
    onehot = np.eye(5)[labels]
    large = log_softmax(8.0 * onehot + rng.normal(0, 2.0, (600, 5)))  # over-confident and sometimes wrong
    small = log_softmax(1.0 * onehot + rng.normal(0, 1.0, (600, 5)))  # weak
    t_l, t_s = fit_duo_temperatures(large, small, labels)
    nll = lambda a, b: float(_duo_nll(torch.from_numpy(large), torch.from_numpy(small),
                                       torch.from_numpy(labels), a, b))
    assert nll(t_l, t_s) < nll(1.0, 1.0)
    grid = np.arange(0.05, 5.05, 0.2)
    assert nll(t_l, t_s) <= min(nll(a, b) for a in grid for b in grid) + 1e-9
    assert min(t_l, t_s) >= 0.05


def test_agreement_and_confidence_by_hand():
    served = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    sidekick = np.log(np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]))
    agree = DuoAgreement()
    with pytest.raises(NotComputableError, match="duo_model"):
        agree.compute()
    agree.update(served)  # the softmax-only feed is not enough
    with pytest.raises(NotComputableError, match="duo_model"):
        agree.compute()
    agree.update_sidekick(served[:2], sidekick[:2])
    agree.update_sidekick(served[2:], sidekick[2:])
    assert agree.compute() == pytest.approx(75.0)  # 3 of 4 agree
    conf = DuoConfidence(FeedStats(duo={"model": "x", "temperatures": [2.0, 0.5]}))
    conf.update_sidekick(served, sidekick)
    duo = duo_probabilities(np.log(served), sidekick, 2.0, 0.5)
    assert conf.compute() == pytest.approx(100 * duo[np.arange(4), served.argmax(1)].mean())
    plain = DuoConfidence()  # no calibration: the unweighted average
    plain.update_sidekick(served, sidekick)
    assert plain.compute() == pytest.approx(100 * duo_probabilities(np.log(served), sidekick)[
        np.arange(4), served.argmax(1)].mean())
    restored = DuoAgreement()
    restored.load_state_dict(agree.state_dict())
    assert restored.compute() == agree.compute()


TINY = ["runtime.threads=1", "probe.cycle=12", "probe.every=4", "probe.size=64", "source.batch_size=32",
        "runtime.use_ray=false", "runtime.max_images=320", "adapter.name=tent"]


def test_a_run_with_a_sidekick_estimates_the_duo_on_every_probe_window(tmp_path):
    # the frozen source model served, and as its own sidekick: the two agree on every image
    frozen = [*TINY, "adapter.name=source", "estimation.duo_model=embedded"]
    cal = calibrate(load_config(None, frozen), cycles=0, log=lambda m: None)
    assert cal.served_stats["duo"]["model"] == "embedded" and len(cal.served_stats["duo"]["temperatures"]) == 2
    path = cal.save(tmp_path / "cal.json")
    cfg = load_config(None, [*frozen, f"estimation.calibration={path}"])
    assert run(cfg, tmp_path / "run").status == "finished"
    rows = [e for e in read_table(tmp_path / "run", "estimates").to_pylist() if e["estimator"].startswith("duo-")]
    assert {e["estimator"] for e in rows} == {"duo-agreement", "duo-confidence"}
    agreement = [e["value"] for e in rows if e["estimator"] == "duo-agreement" and e["value"] is not None]
    assert agreement and all(a == 100.0 for a in agreement)
    # the frozen feed's agreement estimates the source accuracy, on the probe windows where it scored
    assert {e["target"] for e in rows if e["estimator"] == "duo-agreement"} == {"online", "source"}
    # both Sentinels record the agreement as their last feature
    sentinel = [e["features"] for e in read_table(tmp_path / "run", "estimates").to_pylist()
                if e["estimator"] == "sentinel" and e["features"] is not None]
    assert sentinel and all(len(f) == len(ALL_FEATURES) and f[-1] == 1.0 for f in sentinel)


def test_a_sidekick_with_other_classes_is_refused_with_the_fix(tmp_path):
    weights = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict(), weights)
    cfg = load_config(None, [*TINY, "estimation.duo_model=mobilenet_v3_small", f"estimation.duo_weights={weights}"])
    with pytest.raises(ValueError, match="predicts 1000 classes and the model embedded 10.*same classes"):
        run(cfg, tmp_path / "run")
