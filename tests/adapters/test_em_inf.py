"""EM-INF, batched, against the reference's one-sample loops (shivamag125/EM_PT em_inf_utils.py)."""

import pytest
import torch
import torch.nn.functional as F

from stream_monitor.adapters import ADAPTERS
from stream_monitor.adapters.em_inf import adaptive_temperature, minimise_logit_entropy

from .test_contract import batches, tiny_model

D = torch.float64


def reference_ent_sample(z0, lr=0.1, n_grad_steps=5, kl_weight=0.001, threshold=0.3):
    """`ent_sample`'s inner loop for one (1, K) row, with torch's own Adam."""
    original_probs = F.softmax(z0, dim=-1).detach()
    param = torch.nn.Parameter(z0.clone())
    optimizer = torch.optim.Adam([param], lr=lr)
    for _ in range(n_grad_steps):
        optimizer.zero_grad()
        probs = F.softmax(param, dim=-1)
        h = -torch.sum(probs * torch.log(probs + 1e-12))
        if h < threshold:
            break
        loss = kl_weight * F.kl_div(input=probs.log(), target=original_probs, reduction="batchmean") + h
        loss.backward()
        optimizer.step()
    return param.detach()


def reference_temperature(z, t_min=0.01, t_max=1.0, max_iter=100, tol=0.1, ratio=0.2, delta=1e-6):
    """`AdaptiveTemperatureProcessor.__call__` for one row."""
    def H(p):
        return -(p * torch.log(p + 1e-9)).sum()

    h = H(torch.softmax(z, -1))
    target = max(delta, ratio * h)
    final = 1
    if h > delta:
        for _ in range(max_iter):
            mid = (t_max + t_min) / 2
            h = H(torch.softmax(z / mid, -1))
            if abs(h - target) < tol:
                final = mid
                break
            elif h < target:
                t_min = mid
            else:
                t_max = mid
            final = mid
    return z / final


def logits_with_spread(n=32, seed=0):
    """Rows from nearly uniform to very peaked, so some stop at once and some never."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1.3, n, dtype=D)[:, None]
    return torch.randn(n, 10, generator=g, dtype=D) * scale


@pytest.mark.parametrize("threshold,steps", [(0.3, 5), (0.8, 3)])
def test_logit_minimisation_matches_the_reference_row_by_row(threshold, steps):
    z0 = logits_with_spread()
    z, changed = minimise_logit_entropy(z0, steps=steps, threshold=threshold)
    expected = torch.cat([reference_ent_sample(row[None], n_grad_steps=steps, threshold=threshold) for row in z0])
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)
    assert 0 < int(changed.sum()) < len(z0)
    assert torch.equal(changed, (z != z0).any(1))


def test_adaptive_temperature_matches_the_reference_row_by_row():
    z0 = logits_with_spread(seed=1)
    z, temperature = adaptive_temperature(z0, target_ratio=0.5)
    expected = torch.stack([reference_temperature(row, ratio=0.5) for row in z0])
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)
    assert torch.equal(z.argmax(1), z0.argmax(1)) and bool((temperature <= 1).all())


@pytest.mark.parametrize("variant", ["logits", "temperature"])
def test_em_inf_leaves_the_weights_alone_and_sharpens(variant):
    adapter = ADAPTERS.get("em-inf")(tiny_model(), variant=variant)
    x = batches(1)[0]
    with torch.no_grad():
        plain = tiny_model().eval()(x)
    result = adapter.step(x)
    assert torch.equal(result.logits.argmax(1), plain.argmax(1))
    assert float(result.mean_entropy) < float(-(plain.softmax(1) * plain.log_softmax(1)).sum(1).mean())
    assert adapter.params == {} and bool(result.skipped)


def test_em_inf_names_its_variants():
    with pytest.raises(ValueError, match="Valid variants: logits, temperature"):
        ADAPTERS.get("em-inf")(tiny_model(), variant="temp")
