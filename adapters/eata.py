"""`eata`: ETA plus an anti-forgetting Fisher regulariser (EWC).

Niu et al., "Efficient Test-Time Model Adaptation without Forgetting" (ICML 2022),
mr-eggplant/EATA: the ETA loss plus alpha * sum_theta F_theta (theta - theta_0)^2 over the BN
affine parameters, where F is the diagonal Fisher of the pseudo-label cross-entropy: the squared
gradient of CE(f(x), argmax f(x)), summed over batches of 64 and divided by the number of batches,
in the adaptation mode (test-batch BN statistics), and theta_0 the source values.

Where the Fisher images come from is the caller's choice: the original uses 2,000 clean
in-distribution images (`--fisher_size 2000`); oripress/CCC's `eval.py` uses the first ~2,048
images of the test stream itself. `stream-monitor run` does the latter (no source data needed).
The whole term is vectorised: one fused sum over flat parameter and Fisher vectors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ADAPTERS
from .eta import ETA

FISHER_IMAGES = 2000  # the reference's --fisher_size; `stream-monitor run` takes them from the stream's start


@ADAPTERS.register("eata", description="ETA plus a Fisher-weighted anti-forgetting penalty (Niu et al., ICML 2022)",
                   fisher_images=FISHER_IMAGES)
class EATA(ETA):
    def __init__(self, model: nn.Module, fisher_images: torch.Tensor | None = None, fisher_alpha: float = 2000.0,
                 fisher_batch_size: int = 64, lr: float = 2.5e-4, momentum: float = 0.9, nesterov: bool = False,
                 reset_every: int | None = None, **eta_options) -> None:
        self.fisher_alpha = fisher_alpha
        self.fisher: torch.Tensor | None = None
        self.anchor: torch.Tensor | None = None
        super().__init__(model, lr, momentum, nesterov, reset_every, **eta_options)
        if fisher_images is not None and fisher_alpha > 0:
            self.fisher = self.compute_fisher(fisher_images, fisher_batch_size)
            self.anchor = torch.cat([p.detach().reshape(-1) for p in self.params.values()]).clone()
            self._initial = self._state()

    def compute_fisher(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Diagonal Fisher of the pseudo-label cross-entropy, as one flat vector."""
        if len(images) == 0:
            raise ValueError("EATA needs at least one image to estimate its Fisher information")
        total, batches = None, 0
        for lo in range(0, len(images), batch_size):
            x = images[lo:lo + batch_size]
            with torch.enable_grad():
                logits = self.model(x)
                loss = nn.functional.cross_entropy(logits, logits.argmax(1))
                grads = torch.autograd.grad(loss, list(self.params.values()))
            squared = torch.cat([g.reshape(-1) ** 2 for g in grads])
            total = squared if total is None else total + squared
            batches += 1
        return (total / batches).detach()

    def regulariser(self) -> torch.Tensor | None:
        if self.fisher is None:
            return None
        theta = torch.cat([p.reshape(-1) for p in self.params.values()])
        return self.fisher_alpha * (self.fisher * (theta - self.anchor) ** 2).sum()

    def extra_state(self) -> dict[str, Any]:
        # Fisher and anchor are fixed after construction; kept in checkpoints so a resumed run
        # does not need the Fisher images again.
        return {**super().extra_state(), "fisher": self.fisher, "anchor": self.anchor}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.fisher, self.anchor = state["fisher"], state["anchor"]
