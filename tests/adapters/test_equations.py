"""Tent, ETA and RDumb against straightforward implementations of the papers' equations.

The reference here is written without nn.Module: a functional forward of the test network with
BatchNorm on batch statistics, and SGD with momentum written out by hand.
"""

import math

import pytest
import torch
from torch import nn

from stream_monitor.adapters import ADAPTERS

from .test_contract import batches, tiny_model

D = torch.float64


def functional_forward(model, bn_params, x):
    """The tiny network with BN normalising by the batch's mean and biased variance."""
    conv1, bn1, _, conv2, bn2, _, _, _, fc = model
    (g1, b1), (g2, b2) = bn_params

    def bn(h, g, b, eps):
        mean = h.mean((0, 2, 3), keepdim=True)
        var = h.var((0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + eps) * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)

    h = torch.relu(bn(conv1(x), g1, b1, bn1.eps))
    h = torch.relu(bn(conv2(h), g2, b2, bn2.eps))
    return fc(h.mean((2, 3)))


def bn_params_of(model):
    return [[model[i].weight.detach().clone().requires_grad_(True), model[i].bias.detach().clone().requires_grad_(True)]
            for i in (1, 4)]


def sgd(params, grads, buffers, lr, momentum):
    """PyTorch's SGD: buf = momentum * buf + g (buf = g at the first step); p -= lr * buf."""
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            buffers[i] = g.clone() if buffers[i] is None else momentum * buffers[i] + g
            p -= lr * buffers[i]


def H(logits):
    p = logits.softmax(1)
    return -(p * p.log()).sum(1)


def confident_model():
    """Peaked, varied predictions, so ETA's filters keep some samples and drop others."""
    model = tiny_model(dtype=D)
    with torch.no_grad():
        model[8].weight.copy_(torch.randn(10, 8, generator=torch.Generator().manual_seed(3), dtype=D) * 4)
        model[8].bias.zero_()
    return model


def diverse_batches(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=g) + 4 * torch.randn(16, 3, 1, 1, generator=g)).to(D)
            for _ in range(n)]


def reference_fisher(model, params, images, batch_size=64):
    """EATA's diagonal Fisher: squared pseudo-label CE gradients, summed, / number of batches."""
    flat = [p for pair in params for p in pair]
    sums = [torch.zeros_like(p) for p in flat]
    chunks = images.split(batch_size)
    for x in chunks:
        logits = functional_forward(model, params, x)
        loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
        for s, g in zip(sums, torch.autograd.grad(loss, flat), strict=True):
            s += g ** 2
    return [s / len(chunks) for s in sums]


def reference_run(name, data, lr, reset_every=None, e_scale=0.4, d_margin=0.05, fisher_images=None, alpha=0.0):
    model = tiny_model(dtype=D) if name == "tent" else confident_model()
    source_bn = bn_params_of(model)
    params = bn_params_of(model)
    flat = [p for pair in params for p in pair]
    fisher = reference_fisher(model, params, fisher_images) if fisher_images is not None else None
    anchor = [p.detach().clone() for p in flat]
    buffers = [None] * len(flat)
    mean_probs, outputs = None, []
    for step, x in enumerate(data, start=1):
        logits = functional_forward(model, params, x)
        outputs.append(logits.detach())
        h = H(logits)
        if name == "tent":
            loss = h.mean()
            update = True
        else:
            e0 = e_scale * math.log(logits.shape[1])
            keep = h < e0
            p = logits.softmax(1).detach()
            if mean_probs is not None:
                keep &= torch.nn.functional.cosine_similarity(mean_probs[None], p, dim=1).abs() < d_margin
            update = bool(keep.any())
            if update:
                new = p[keep].mean(0)
                mean_probs = new if mean_probs is None else 0.9 * mean_probs + 0.1 * new
                loss = (h[keep] * torch.exp(e0 - h[keep].detach())).mean()
                if fisher is not None:
                    loss = loss + alpha * sum((f * (p - a) ** 2).sum()
                                              for f, p, a in zip(fisher, flat, anchor, strict=True))
        if update:
            grads = torch.autograd.grad(loss, flat)
            sgd(flat, grads, buffers, lr, 0.9)
        if reset_every and step % reset_every == 0:
            params = [[g.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)] for g, b in source_bn]
            flat = [p for pair in params for p in pair]
            buffers, mean_probs = [None] * len(flat), None
    return outputs, [p.detach() for p in flat]


def adapter_run(name, data, lr, **kw):
    model = tiny_model(dtype=D) if name == "tent" else confident_model()
    adapter = ADAPTERS.get(name)(model, lr=lr, **kw)
    outputs = [adapter.step(x).logits for x in data]
    return outputs, [p.detach() for p in adapter.params.values()], adapter


def assert_close(a, b):
    """Elementwise closeness of two equally long lists: an adapter adapting fewer parameters fails."""
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_tent_matches_the_equations():
    data = batches(10, dtype=D)
    ref_out, ref_params = reference_run("tent", data, lr=0.05)
    out, params, _ = adapter_run("tent", data, lr=0.05)
    assert_close(out, ref_out)
    assert_close(params, ref_params)


@pytest.mark.parametrize("e_scale,d_margin", [(0.6, 0.3), (0.8, 0.5)])
def test_eta_matches_the_equations_including_filters(e_scale, d_margin):
    data = diverse_batches()
    ref_out, ref_params = reference_run("eta", data, lr=0.05, e_scale=e_scale, d_margin=d_margin)
    adapter = ADAPTERS.get("eta")(confident_model(), lr=0.05, e_margin_scale=e_scale, d_margin=d_margin)
    used = []
    for x, expected in zip(data, ref_out, strict=True):
        result = adapter.step(x)
        used.append(int(result.num_used))
        torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-6)
    assert_close([p.detach() for p in adapter.params.values()], ref_params)
    # The filters really filtered: some batches partly kept, some skipped entirely.
    assert any(0 < u < 16 for u in used) and 0 in used


def test_rdumb_resets_like_the_equations():
    data = diverse_batches(9)
    ref_out, ref_params = reference_run("rdumb", data, lr=0.05, reset_every=4, e_scale=0.8, d_margin=0.5)
    out, params, adapter = adapter_run("rdumb", data, lr=0.05, reset_every=4, e_margin_scale=0.8, d_margin=0.5)
    assert_close(out, ref_out)
    assert_close(params, ref_params)
    assert adapter.num_steps == 9


def test_eta_skips_when_every_sample_is_filtered():
    adapter = ADAPTERS.get("eta")(tiny_model(), e_margin_scale=1e-6)  # nothing is that confident
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    result = adapter.step(batches(1)[0])
    stats = result.stats()
    assert stats.skipped and stats.num_used == 0 and math.isfinite(stats.loss)
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())


def test_rdumb_defaults_follow_the_reference():
    adapter = ADAPTERS.get("rdumb")(tiny_model())
    assert adapter.reset_every == 1000 and adapter.e_margin_scale == 0.4
    assert adapter.redundancy_margin(1000) == pytest.approx(0.05) and adapter.redundancy_margin(10) == pytest.approx(0.5)
    group = adapter.optimizer.param_groups[0]
    assert group["lr"] == 2.5e-4 and group["momentum"] == 0.9 and group["nesterov"] is False


def test_eata_matches_the_equations_with_its_fisher_term():
    data = diverse_batches(10)
    fisher_images = torch.cat(diverse_batches(9, seed=5))  # 144 images: batches of 64, 64, 16
    ref_out, ref_params = reference_run("eata", data, lr=0.05, e_scale=0.8, d_margin=0.5,
                                        fisher_images=fisher_images, alpha=300.0)
    adapter = ADAPTERS.get("eata")(confident_model(), fisher_images=fisher_images, fisher_alpha=300.0,
                                   lr=0.05, e_margin_scale=0.8, d_margin=0.5)
    assert_close([adapter.step(x).logits for x in data], ref_out)
    assert_close([p.detach() for p in adapter.params.values()], ref_params)
    # The penalty matters: without it the parameters end elsewhere.
    _, eta_params = reference_run("eta", data, lr=0.05, e_scale=0.8, d_margin=0.5)
    assert max(float((a - b).abs().max()) for a, b in zip(eta_params, ref_params, strict=True)) > 1e-4
