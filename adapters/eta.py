"""`eta`: Tent with reliable, non-redundant sample selection and entropy weighting.

Niu et al., "Efficient Test-Time Model Adaptation without Forgetting" (ICML 2022),
mr-eggplant/EATA `eata.py` with the Fisher term off (alpha = 0), which is ETA:
1. keep samples with entropy H_i < E0 = 0.4 ln K (`--e_margin`; 2.763 for ImageNet, 0.921 for
   the embedded model's 10 classes);
2. among them, once a moving average p_bar of predicted probabilities exists, keep those with
   |cos(p_bar, p_i)| < d_margin (cosine against p_bar before this batch updates it). The paper's
   0.05 is for 1000 classes: a confident prediction's cosine with a spread-out p_bar is about
   1/sqrt(K) (0.03 for ImageNet, 0.32 for 10 classes), so with 10 classes 0.05 rejects 99.8% of
   samples (`benchmarks/eta_selection.py`). The default scales it: d_margin = 0.05 sqrt(1000 / K),
   exactly 0.05 for ImageNet and 0.5 for the embedded model;
3. p_bar <- 0.9 p_bar + 0.1 mean(p_i over the kept samples), initialised from the first kept batch;
4. loss = mean over kept samples of H_i / exp(H_i - E0) (weights without gradient).
When no sample survives, there is no backward and no step (and no NaN loss).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import ADAPTERS, StepResult, entropy, no_update
from .tent import NormAffineAdapter


@ADAPTERS.register("eta", description="Tent with reliable, non-redundant sample selection and entropy "
                                 "weighting (Niu et al., ICML 2022)")
class ETA(NormAffineAdapter):
    def __init__(self, model: nn.Module, lr: float = 2.5e-4, momentum: float = 0.9, nesterov: bool = False,
                 reset_every: int | None = None, e_margin_scale: float = 0.4, d_margin: float | None = None,
                 ema: float = 0.9) -> None:
        self.e_margin_scale, self.d_margin, self.ema = e_margin_scale, d_margin, ema
        self.mean_probs: torch.Tensor | None = None
        super().__init__(model, lr, momentum, nesterov, reset_every)

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        logits = self.model(images)
        entropies = entropy(logits)
        e_margin = self.e_margin_scale * math.log(logits.shape[1])
        keep = entropies < e_margin
        probs = logits.softmax(1).detach()
        if self.mean_probs is not None:
            cosine = nn.functional.cosine_similarity(self.mean_probs[None], probs, dim=1)
            keep &= cosine.abs() < self.redundancy_margin(logits.shape[1])
        kept = keep.sum()
        # The only host sync: whether anything is left to learn from decides the backward.
        if int(kept) == 0:
            return no_update(logits, kept, entropies.detach().mean())
        batch_mean = probs[keep].mean(0)
        self.mean_probs = batch_mean if self.mean_probs is None else self.ema * self.mean_probs + (1 - self.ema) * batch_mean
        weights = torch.exp(e_margin - entropies.detach())
        loss = (entropies * weights)[keep].mean()
        extra = self.regulariser()
        if extra is not None:
            loss = loss + extra
        grad_norm = self._update(loss)
        return StepResult(logits.detach(), entropies.detach().mean(), kept, loss.detach(), grad_norm,
                          torch.zeros((), dtype=torch.bool, device=logits.device))

    def redundancy_margin(self, num_classes: int) -> float:
        """d_margin, or the paper's 0.05 scaled from 1000 classes to `num_classes`."""
        return self.d_margin if self.d_margin is not None else 0.05 * math.sqrt(1000 / num_classes)

    def regulariser(self) -> torch.Tensor | None:
        """An extra loss term (EATA's Fisher penalty); none for ETA."""
        return None

    def extra_state(self) -> dict[str, Any]:
        return {"mean_probs": None if self.mean_probs is None else self.mean_probs.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.mean_probs = state["mean_probs"]
