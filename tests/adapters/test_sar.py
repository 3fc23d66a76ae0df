"""SAR against its equations: reliable filter, SAM ascent, second filtered pass, SGD, recovery."""

import math

import pytest
import torch
from torch import nn

from stream_monitor.adapters import ADAPTERS
from stream_monitor.adapters.sar import sar_parameters

from .test_contract import batches, tiny_model
from .test_equations import H, assert_close, bn_params_of, confident_model, diverse_batches, functional_forward, sgd


def reference_sar(data, lr, e_scale, rho=0.05, e_m=0.2):
    model = confident_model()
    source = [p.detach().clone() for pair in bn_params_of(model) for p in pair]
    flat = [p.clone().requires_grad_(True) for p in source]
    params = [flat[0:2], flat[2:4]]
    buffers, ema, outputs, resets = [None] * 4, None, [], 0
    for x in data:
        logits = functional_forward(model, params, x)
        outputs.append(logits.detach())
        e0 = e_scale * math.log(10)
        h = H(logits)
        keep = h < e0
        if not keep.any():
            continue
        g1 = torch.autograd.grad(h[keep].mean(), flat)
        norm = torch.sqrt(sum((g ** 2).sum() for g in g1))
        eps = [rho * g / (norm + 1e-12) for g in g1]
        perturbed = [p + e for p, e in zip(flat, eps, strict=True)]
        h2 = H(functional_forward(model, [perturbed[0:2], perturbed[2:4]], x))[keep]
        keep2 = h2 < e0
        if not keep2.any():
            continue
        loss2 = h2[keep2].mean()
        value = float(loss2.detach())
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        g2 = torch.autograd.grad(loss2, perturbed)
        sgd(flat, g2, buffers, lr, 0.9)
        if ema < e_m:
            resets += 1
            flat = [p.clone().requires_grad_(True) for p in source]
            params = [flat[0:2], flat[2:4]]
            buffers = [None] * 4  # the ema is kept, as in the reference
    return outputs, [p.detach() for p in flat], ema, resets


def run_adapter(data, **kw):
    adapter = ADAPTERS.get("sar")(confident_model(), **kw)
    results = [adapter.step(x) for x in data]
    return adapter, results


def test_sar_matches_the_equations_with_filters():
    data = diverse_batches(10)
    ref_out, ref_params, ref_ema, resets = reference_sar(data, lr=0.05, e_scale=0.6)
    adapter, results = run_adapter(data, lr=0.05, e_margin_scale=0.6)
    assert_close([r.logits for r in results], ref_out)
    assert_close([p.detach() for p in adapter.params.values()], ref_params)
    assert adapter.ema == pytest.approx(ref_ema, abs=1e-6) and resets == 0
    used = [int(r.num_used) for r in results]
    assert any(0 < u < 16 for u in used)


def test_sar_recovery_resets_to_source_and_keeps_the_ema():
    data = diverse_batches(6)
    # e_m = 5 nats is above any entropy of 10 classes: every update is followed by a recovery.
    ref_out, ref_params, ref_ema, resets = reference_sar(data, lr=0.05, e_scale=0.8, e_m=5.0)
    adapter, results = run_adapter(data, lr=0.05, e_margin_scale=0.8, reset_constant_em=5.0)
    assert resets > 0
    assert_close([r.logits for r in results], ref_out)
    assert_close([p.detach() for p in adapter.params.values()], ref_params)
    assert adapter.ema == pytest.approx(ref_ema, abs=1e-6)


def test_sar_skips_when_every_sample_is_filtered():
    adapter = ADAPTERS.get("sar")(tiny_model(), e_margin_scale=1e-6)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    stats = adapter.step(batches(1)[0]).stats()
    assert stats.skipped and stats.num_used == 0 and math.isfinite(stats.loss)
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())
    assert adapter.ema is None


def test_sar_leaves_the_top_block_alone():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer3 = nn.BatchNorm2d(4)
            self.layer4 = nn.BatchNorm2d(4)
            self.ln = nn.LayerNorm(4)
            self.norm = nn.LayerNorm(4)

    names = [n for n, _ in sar_parameters(Net())]
    assert names == ["layer3.weight", "layer3.bias", "ln.weight", "ln.bias"]


def test_sar_defaults_follow_the_reference():
    adapter = ADAPTERS.get("sar")(tiny_model())
    assert (adapter.rho, adapter.reset_constant_em, adapter.e_margin_scale) == (0.05, 0.2, 0.4)
    group = adapter.optimizer.param_groups[0]
    assert group["lr"] == 2.5e-4 and group["momentum"] == 0.9 and group["nesterov"] is False
