"""AETTA: the robust calibration by hand, the dropout passes, the recovery rule and a run with it."""

import math

import pytest
import torch
import torchvision
from torch import nn

from stream_monitor.config import load_config
from stream_monitor.estimation.aetta import AETTA, DropoutDisagreement, robust_error, stage_ends
from stream_monitor.estimation.base import NotComputableError
from stream_monitor.estimation.detectors import AETTAReset, DetectorSetup
from stream_monitor.metrics.sink import read_table
from stream_monitor.models.embedded import CifarResNet
from stream_monitor.runtime.runner import prepare_resume, run


def test_robust_error_by_hand():
    assert robust_error(0.9, 1.0, 10) == pytest.approx(0.1)  # a spread marginal: the raw disagreement
    assert robust_error(0.9, 0.5, 10) == pytest.approx(0.8)  # 0.1 / 0.5^3
    assert robust_error(0.9, 0.4, 10) == pytest.approx(0.9)  # 1.5625 clipped to 1 - 1/K
    assert robust_error(0.99, 0.0, 10) == pytest.approx(0.9)  # everything on one class
    assert robust_error(1.0, 0.7, 10) == 0.0


def test_smoothing_runs_over_the_stream_and_the_mean_over_the_window():
    est = AETTA(num_classes=10)
    with pytest.raises(NotComputableError, match="aetta_every"):
        est.compute()
    first = est.update_dropout(0.8, 1.0)  # err 0.2
    second = est.update_dropout(0.4, 1.0)  # err 0.6 0.2 + 0.4 0.6 = 0.36
    assert (first, second) == (pytest.approx(80.0), pytest.approx(64.0))
    assert est.compute() == pytest.approx(72.0)
    est.reset()  # a new window: the smoothing carries on
    assert est.update_dropout(0.4, 1.0) == pytest.approx(100 * (1 - (0.6 * 0.36 + 0.4 * 0.6)))
    restored = AETTA(10)
    restored.load_state_dict(est.state_dict())
    assert restored.compute() == est.compute() and restored.update_dropout(0.5, 1.0) == est.update_dropout(0.5, 1.0)


def test_stage_ends_of_the_embedded_and_torchvision_resnets():
    embedded = CifarResNet(20)
    assert stage_ends(embedded) == [embedded.layers[2], embedded.layers[5], embedded.layers[8]]
    r18 = torchvision.models.resnet18(num_classes=10)
    assert stage_ends(r18) == [r18.layer1, r18.layer2, r18.layer3, r18.layer4]
    with pytest.raises(ValueError, match="aetta_every=0"):
        stage_ends(nn.Linear(3, 2))


def test_dropout_passes_leave_the_model_and_the_global_rng_alone():
    torch.manual_seed(0)
    model = CifarResNet(20).train()  # BatchNorm updating its running statistics, the worst case
    x = torch.randn(16, 3, 32, 32)
    served = model(x).argmax(1)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    agreement, marginal = DropoutDisagreement(p=0.4, forwards=4, seed=1)(model, x, served)
    assert 0.0 <= agreement <= 1.0 and 0.0 < marginal <= 1.0
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    again = DropoutDisagreement(p=0.4, forwards=4, seed=1)(model, x, served)
    assert again == (agreement, marginal)  # same seed, same masks
    # with (almost) no dropout every pass agrees with the served prediction
    near, _ = DropoutDisagreement(p=1e-9, forwards=3)(model, x, served)
    assert near == 1.0
    with pytest.raises(ValueError, match="dropout rate"):
        DropoutDisagreement(p=0.0)


def test_aetta_reset_rule_fires_on_the_floor_and_on_a_drop_only():
    stable = AETTAReset()
    with pytest.raises(NotComputableError):
        stable.compute()
    for v in [60.0, 61.0, 59.5, 60.5, 60.0] * 4:
        stable.update_step({"aetta_acc": v})
        assert not stable.compute().firing
    drop = AETTAReset()
    for v in [60.0] * 5 + [58.0] * 4:
        drop.update_step({"aetta_acc": v})
        assert not drop.compute().firing
    drop.update_step({"aetta_acc": 50.0})  # last 5 mean 56.4 + 2 < 60
    verdict = drop.compute()
    assert verdict.firing and "56.4%" in verdict.evidence
    floor = AETTAReset()
    floor.update_step({"aetta_acc": 15.0})
    assert floor.compute().firing and "below 20%" in floor.compute().evidence
    floor.update_step({"aetta_acc": None})  # steps without dropout statistics change nothing
    assert floor.history == [15.0]



def test_the_warning_rule_ignores_a_few_points_of_noise_and_fires_on_a_fall():
    noise = [60.0, 52.0, 63.0, 55.0, 58.0] * 4 + [54.0] * 10  # noise, then 5 points lower
    warning = AETTAReset.for_model(DetectorSetup(10))  # as the fused warning builds it
    for v in noise:
        warning.update_step({"aetta_acc": v})
        assert not warning.compute().firing
    for v in [40.0] * 10:  # 14 points under the previous 10 estimates' mean
        warning.update_step({"aetta_acc": v})
    assert warning.compute().firing
    paper = AETTAReset()  # the paper's reset rule fires on the same noise
    fired = False
    for v in noise:
        paper.update_step({"aetta_acc": v})
        fired = fired or paper.compute().firing
    assert fired


TINY = ["runtime.threads=1", "probe.cycle=12", "probe.every=4", "probe.size=64", "source.batch_size=32",
        "runtime.use_ray=false", "runtime.max_images=640", "adapter.name=tent"]


def test_a_run_with_aetta_records_its_estimate_on_every_nth_batch(tmp_path):
    cfg = load_config(None, [*TINY, "estimation.aetta_every=2", "estimation.aetta_forwards=3"])
    assert run(cfg, tmp_path / "run").status == "finished"
    steps = read_table(tmp_path / "run", "steps").to_pylist()
    marked = [s["step"] for s in steps if s["aetta_acc"] is not None]
    assert marked == [s["step"] for s in steps if s["step"] % 2 == 0]
    assert all(0.0 <= s["aetta_acc"] <= 100.0 for s in steps if s["aetta_acc"] is not None)
    estimates = [e for e in read_table(tmp_path / "run", "estimates").to_pylist() if e["estimator"] == "aetta"]
    assert estimates and all(e["target"] == "online" for e in estimates)
    assert any(e["value"] is not None and math.isfinite(e["value"]) for e in estimates)
    off = load_config(None, TINY)
    assert run(off, tmp_path / "off").status == "finished"
    assert all(s["aetta_acc"] is None for s in read_table(tmp_path / "off", "steps").to_pylist())


@pytest.mark.slow
def test_a_resumed_run_continues_the_dropout_masks(tmp_path):
    """The dropout generator is in the checkpoint: a run stopped half way and resumed writes the
    same AETTA rows as the uninterrupted run, not a fresh mask sequence from the seed."""
    aetta = ["estimation.aetta_every=2", "estimation.aetta_forwards=2", "runtime.checkpoint_every=4"]
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert run(load_config(None, [*TINY, *aetta]), whole).status == "finished"
    assert run(load_config(None, [*TINY, *aetta, "runtime.max_images=320"]), half).status == "finished"
    resumed = run(prepare_resume(half, ["runtime.max_images=640"]), half, resume=True)
    assert resumed.status == "finished" and resumed.images == 320

    def aetta_rows(run_dir):
        steps = [(s["step"], s["aetta_acc"]) for s in read_table(run_dir, "steps").to_pylist()]
        values = [(e["step"], e["value"]) for e in read_table(run_dir, "estimates").to_pylist()
                  if e["estimator"] == "aetta"]
        return steps, values

    assert aetta_rows(half) == aetta_rows(whole)
