"""`em-inf`: inference-time entropy minimisation of each sample's logits; the weights never change.

Agarwal et al., "The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning"
(NeurIPS 2025), shivamag125/EM_PT `eval/utils/em_inf_utils.py`, applied to a classifier's logits
instead of next-token logits. The frozen source model (running BN statistics) gives z0; then,
per sample:

- `variant="logits"` (`ent_sample`): optimise a copy z of z0 with Adam (lr 0.1, betas 0.9/0.999)
  for up to 5 steps; before each step stop if H(softmax z) < 0.3, H = -sum p log(p + 1e-12);
  loss = H + 0.001 KL(p0 || p), KL as `kl_div(log p, p0)`.
- `variant="temperature"` (`AdaptiveTemperatureProcessor`, the paper's Algorithm 1): if
  H0 > delta (1e-6), bisect T in [0.01, 1] (at most 100 halvings) until |H(z / T) - target| < 0.1,
  target = max(delta, 0.2 H0), H with log(p + 1e-9); serve z / T. Argmax never changes.

The reference works on one token at a time and sums the entropy over the whole tensor. Here a
batch is optimised at once with per-sample entropies, per-sample early stops and per-sample
bisection brackets, so each row follows exactly the path it would follow alone. Adam is written
out because `torch.optim.Adam` cannot freeze rows that stopped early (its moments would keep
moving them); rows that stop never resume, so every active row shares the step count.
`num_used` counts the samples whose logits were changed. No host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ADAPTERS, Adapter, StepResult, no_update

VARIANTS = ("logits", "temperature")


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """float32 as the reference (it upcasts bf16 logits); float64 stays float64."""
    return logits.detach().to(torch.promote_types(logits.dtype, torch.float32))


def _entropy(probs: torch.Tensor, eps: float) -> torch.Tensor:
    return -(probs * torch.log(probs + eps)).sum(1)


def minimise_logit_entropy(logits: torch.Tensor, lr: float = 0.1, steps: int = 5, kl_weight: float = 0.001,
                           threshold: float = 0.3, betas: tuple[float, float] = (0.9, 0.999),
                           eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """EM-INF's logit optimisation, batched. Returns (optimised logits, samples changed mask)."""
    z0 = _at_least_float32(logits)
    p0 = z0.softmax(1)
    z = z0.clone().requires_grad_(True)
    m, v = torch.zeros_like(z0), torch.zeros_like(z0)
    active = torch.ones(len(z0), dtype=torch.bool, device=z0.device)
    changed = torch.zeros_like(active)
    for t in range(1, steps + 1):
        probs = z.softmax(1)
        h = _entropy(probs, 1e-12)
        active = active & (h.detach() >= threshold)
        kl = nn.functional.kl_div(probs.log(), p0, reduction="none").sum(1)
        (grad,) = torch.autograd.grad(((h + kl_weight * kl) * active).sum(), z)
        with torch.no_grad():
            rows = active[:, None]
            m = torch.where(rows, betas[0] * m + (1 - betas[0]) * grad, m)
            v = torch.where(rows, betas[1] * v + (1 - betas[1]) * grad * grad, v)
            denom = (v / (1 - betas[1] ** t)).sqrt() + eps
            z.sub_(torch.where(rows, lr * m / (1 - betas[0] ** t) / denom, torch.zeros_like(z)))
        changed |= active
    return z.detach(), changed


def adaptive_temperature(logits: torch.Tensor, t_min: float = 0.01, t_max: float = 1.0, max_iter: int = 100,
                         tol: float = 0.1, target_ratio: float = 0.2, target_threshold: float = 1e-6
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """EM-INF's adaptive temperature, batched. Returns (logits / T, per-sample T)."""
    z = _at_least_float32(logits)
    h0 = _entropy(z.softmax(1), 1e-9)
    target = torch.clamp(target_ratio * h0, min=target_threshold)
    low, high = torch.full_like(h0, t_min), torch.full_like(h0, t_max)
    searching = h0 > target_threshold
    temperature = torch.ones_like(h0)
    for _ in range(max_iter):
        mid = (low + high) / 2
        h = _entropy((z / mid[:, None]).softmax(1), 1e-9)
        temperature = torch.where(searching, mid, temperature)
        searching = searching & ((h - target).abs() >= tol)
        low = torch.where(searching & (h < target), mid, low)
        high = torch.where(searching & (h >= target), mid, high)
    return z / temperature[:, None], temperature


@ADAPTERS.register("em-inf", description="Inference-time entropy minimisation of each sample's logits; "
                                     "the weights never change (Agarwal et al., NeurIPS 2025)")
class EMInf(Adapter):
    def __init__(self, model: nn.Module, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
                 reset_every: int | None = None, variant: str = "logits", steps: int = 5, kl_weight: float = 0.001,
                 threshold: float = 0.3, **temperature_options) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"Unknown EM-INF variant {variant!r}. Valid variants: {', '.join(VARIANTS)}.")
        self.variant, self.logit_lr, self.steps, self.kl_weight = variant, lr, steps, kl_weight
        self.threshold, self.temperature_options = threshold, temperature_options
        super().__init__(model, lr, momentum, nesterov, reset_every)

    def configure_model(self, model: nn.Module) -> nn.Module:
        return model.eval().requires_grad_(False)

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        with torch.no_grad():
            logits = self.model(images)
        if self.variant == "logits":
            served, changed = minimise_logit_entropy(logits, self.logit_lr, self.steps, self.kl_weight, self.threshold)
        else:
            served, temperature = adaptive_temperature(logits, **self.temperature_options)
            changed = temperature != 1.0
        return no_update(served, changed.sum())
