"""LCoTTA against its equations: ETA's loss, a FIFO gradient buffer, PCA projection of the update."""

import math

import numpy as np
import pytest
import torch

from stream_monitor.adapters import ADAPTERS

from .test_contract import tiny_model
from .test_cotta import sgd_nesterov
from .test_equations import H, assert_close, bn_params_of, confident_model, diverse_batches, functional_forward


def reference_lcotta(data, lr, e_scale, d_margin, w_num, k, batch_step):
    model = confident_model()
    flat = [p for pair in bn_params_of(model) for p in pair]
    params = [flat[0:2], flat[2:4]]
    buffers, mean_probs, W, outputs, projected_steps = [None] * 4, None, [], [], []
    for step, x in enumerate(data):
        logits = functional_forward(model, params, x)
        outputs.append(logits.detach())
        h = H(logits)
        e0 = e_scale * math.log(10)
        p = logits.softmax(1).detach()
        keep = h < e0
        if mean_probs is not None:
            keep &= torch.nn.functional.cosine_similarity(mean_probs[None], p, dim=1).abs() < d_margin
        if not keep.any():
            continue
        mean_probs = p[keep].mean(0) if mean_probs is None else 0.9 * mean_probs + 0.1 * p[keep].mean(0)
        loss = (h[keep] * torch.exp(e0 - h[keep].detach())).mean()
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, flat)])
        if step > 0 and step % batch_step == 0:
            W = (W + [g.numpy().copy()])[-w_num:]
        if len(W) >= k:
            # Principal directions from the eigenvectors of the centred buffer's scatter matrix.
            centred = np.array(W) - np.mean(W, axis=0)
            values, vectors = np.linalg.eigh(centred.T @ centred)
            top = np.argsort(values)[::-1][:k]
            top = top[values[top] > values[top[0]] * 1e-12]  # zero-variance directions are arbitrary
            P = torch.from_numpy(vectors[:, top].T.copy())
            g = P.T @ (P @ g)
            projected_steps.append(step)
        sgd_nesterov(flat, list(g.split([t.numel() for t in flat])), buffers, lr)
    return outputs, [t.detach() for t in flat], projected_steps


def test_lcotta_matches_the_equations_with_projection():
    data = diverse_batches(14)
    options = dict(e_scale=0.8, d_margin=0.5, w_num=3, k=2, batch_step=2)
    ref_out, ref_params, projected = reference_lcotta(data, lr=0.05, **options)
    assert projected and projected[0] == 4  # appends at steps 2 and 4: projection from step 4
    adapter = ADAPTERS.get("lcotta")(confident_model(), lr=0.05, e_margin_scale=0.8, d_margin=0.5, w_num=3,
                                     n_components=2, batch_step=2)
    results = [adapter.step(x) for x in data]
    assert_close([r.logits for r in results], ref_out)
    assert_close([p.detach() for p in adapter.params.values()], ref_params)
    assert len(adapter.buffer) == 3
    residuals = [float(r.extras["projection_residual"]) for r in results]
    assert all(r == 0 for r in residuals[:4]) and all(0 < r < 1 for r in residuals[4:] if r)


def test_lcotta_defaults_follow_the_resnet50_config():
    adapter = ADAPTERS.get("lcotta")(tiny_model())
    assert (adapter.w_num, adapter.n_components, adapter.batch_step) == (100, 25, 50)
    group = adapter.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (1.5e-4, 0.9, True)
    with pytest.raises(ValueError, match="n_components must be between 1 and w_num"):
        ADAPTERS.get("lcotta")(tiny_model(), n_components=200)
