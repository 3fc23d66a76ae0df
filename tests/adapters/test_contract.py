"""The adapter contract, for every registered adapter (bitwise on CPU)."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from stream_monitor.adapters import ADAPTERS


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).to(dtype)


def batches(n=6, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 8, 8, generator=g).to(dtype) * 2 for _ in range(n)]


def make(name, **kw):
    # A larger lr makes updates visible within a few steps; ETA's margin is relaxed for a random net.
    options = {"lr": 0.05, **kw}
    if name in ("eta", "rdumb", "eata", "lcotta"):
        options.update(e_margin_scale=1.0, d_margin=0.9)
    if name == "lcotta":
        options.update(w_num=3, n_components=2, batch_step=1)
    if name == "sar":
        options.update(e_margin_scale=1.0)
    if name == "eata":
        options.update(fisher_images=torch.cat(batches(2, seed=7)), fisher_alpha=50.0)
    return ADAPTERS.get(name)(tiny_model(), **options)


NAMES = ADAPTERS.names()


def flat(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_only_declared_parameters_change(name):
    adapter = make(name)
    before = flat(adapter.model)
    for x in batches():
        adapter.step(x)
    after = flat(adapter.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= set(adapter.params)
    if name not in ("source", "norm", "em-inf"):
        assert changed, "an adapting method should move its parameters"


@pytest.mark.parametrize("name", NAMES)
def test_reset_restores_the_initial_state_bitwise(name):
    adapter = make(name)
    initial = flat(adapter.model)
    first = adapter.step(batches()[0]).logits
    for x in batches():
        adapter.step(x)
    adapter.reset()
    assert all(torch.equal(initial[k], v) for k, v in flat(adapter.model).items())
    assert torch.equal(adapter.step(batches()[0]).logits, first)


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_is_numpy_only_and_pickles(name):
    adapter = make(name)
    adapter.step(batches()[0])
    snap = adapter.snapshot()
    assert all(isinstance(v, np.ndarray) for v in snap.values())
    assert set(snap) == set(adapter.params) | {k for k in adapter.model.state_dict() if k.endswith(("running_mean", "running_var"))}
    assert pickle.loads(pickle.dumps(snap)).keys() == snap.keys()


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_continues_bit_exactly(name, tmp_path):
    data = batches(8)
    whole = make(name)
    expected = [whole.step(x).logits for x in data]
    first = make(name)
    for x in data[:4]:
        first.step(x)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = make(name)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    got = [resumed.step(x).logits for x in data[4:]]
    assert all(torch.equal(a, b) for a, b in zip(expected[4:], got, strict=True))
    assert resumed.num_steps == 8


@pytest.mark.parametrize("name", NAMES)
def test_the_callers_model_is_untouched(name):
    model = tiny_model()
    before = flat(model)
    adapter = ADAPTERS.get(name)(model, lr=0.05)
    for x in batches(2):
        adapter.step(x)
    assert flat(model).keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in flat(model).items())


def test_batch_statistics_remove_running_buffers():
    adapter = make("tent")
    bns = [m for m in adapter.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.running_mean is None and bn.running_var is None for bn in bns)
    adapter.model.eval()  # even in eval mode the test batch's statistics are used
    x = batches(1)[0]
    assert not torch.allclose(adapter.model(x), adapter.model(x[:4]).repeat(4, 1))


def test_stats_are_numbers_and_unknown_adapter_lists_choices():
    stats = make("tent").step(batches(1)[0]).stats()
    assert set(stats.as_dict()) == {"mean_entropy", "num_used", "loss", "grad_norm", "skipped"}
    assert stats.num_used == 16 and not stats.skipped and stats.extras == {}
    assert all(isinstance(v, (int, float)) for v in stats.as_dict().values())
    with pytest.raises(KeyError, match="Valid adapters: " + ", ".join(NAMES)):
        ADAPTERS.get("tnet")


def test_stochastic_restore_is_a_policy_any_training_adapter_can_use(tmp_path):
    always = make("tent")
    always.enable_stochastic_restore(1.0)
    source = {k: v.clone() for k, v in always.params.items()}
    for x in batches(3):
        always.step(x)
    assert all(torch.equal(source[k], p) for k, p in always.params.items())

    def run(adapter, data):
        return [adapter.step(x).logits for x in data]

    data = batches(6)
    straight = make("eta")
    straight.enable_stochastic_restore(0.3, seed=4)
    run(straight, data)
    first = make("eta")
    first.enable_stochastic_restore(0.3, seed=4)
    run(first, data[:3])
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    second = make("eta")
    second.enable_stochastic_restore(0.3, seed=9)  # the checkpoint brings the generator's state
    second.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    run(second, data[3:])
    assert all(torch.equal(straight.params[k], second.params[k]) for k in straight.params)
    with pytest.raises(ValueError, match="adapts no parameters"):
        make("norm").enable_stochastic_restore(0.1)
