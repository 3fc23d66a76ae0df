"""`lcotta`: ETA whose updates are projected onto a tracked low-dimensional gradient subspace.

"Lifelong Test-Time Adaptation via Online Learning in Tracked Low-Dimensional Subspace"
(LCoTTA, NeurIPS 2025), ThunderDavid/LCoTTA `classification/methods/subspace_plus.py`. The loss
is ETA's (reliable, non-redundant, re-weighted entropy on the norm-layer affine parameters, with
test-batch BN statistics). Confident-but-wrong samples have scattered gradients while the useful
ones share a low-dimensional subspace, so:
1. every `batch_step` steps (not at step 0) the flat gradient of the batch is appended to a FIFO
   buffer of the last `w_num` gradients;
2. once the buffer holds `n_components` gradients, P (k x d, orthonormal rows) = the top-k
   principal directions of the centred buffer, and every step's gradient g becomes P^T P g
   before the optimiser step; before that, plain steps.
ResNet-50/ImageNet-C configuration: SGD lr 1.5e-4, momentum 0.9, Nesterov (the framework's
default), w_num 100, k 25, batch_step 50, so projection starts at step 1,250.

Deviations, all deterministic improvements of the same maths: P comes from an exact SVD in torch
on the model's device (the reference calls sklearn's PCA, whose `auto` solver is randomised for
a 100 x 53k buffer), and it is recomputed when the buffer changes instead of every batch (the
buffer, hence P, only changes every `batch_step` steps). A step whose samples are all filtered
takes no update and appends nothing (the reference appends the zero gradient of a NaN loss).
The thresholds follow our ETA (0.4 ln K, redundancy margin scaled to K); the reference hard-codes
ImageNet's 2.763 and 0.05. Directions of zero variance are dropped from P (see
`_principal_directions`). `StepResult.extras["projection_residual"]` is ||g - P^T P g|| / ||g||,
a cheap per-step signal of how much of the gradient lies outside the subspace.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ADAPTERS, StepResult
from .eta import ETA


@ADAPTERS.register("lcotta", description="ETA whose updates are projected onto a tracked low-dimensional "
                                    "gradient subspace (LCoTTA, NeurIPS 2025)")
class LCoTTA(ETA):
    def __init__(self, model: nn.Module, lr: float = 1.5e-4, momentum: float = 0.9, nesterov: bool = True,
                 reset_every: int | None = None, w_num: int = 100, n_components: int = 25, batch_step: int = 50,
                 **eta_options) -> None:
        if not 1 <= n_components <= w_num:
            raise ValueError(f"n_components must be between 1 and w_num ({w_num}), got {n_components}")
        self.w_num, self.n_components, self.batch_step = w_num, n_components, batch_step
        self.buffer: list[torch.Tensor] = []
        self.basis: torch.Tensor | None = None
        self._residual: torch.Tensor | None = None
        super().__init__(model, lr, momentum, nesterov, reset_every, **eta_options)

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        self._residual = None
        result = super().forward_and_adapt(images)
        result.extras["projection_residual"] = self._residual if self._residual is not None \
            else result.loss.new_zeros(())
        return result

    def transform_gradients(self) -> None:
        params = [p for p in self.params.values() if p.grad is not None]
        g = torch.cat([p.grad.reshape(-1) for p in params])
        if self.num_steps > 0 and self.num_steps % self.batch_step == 0:
            self.buffer = (self.buffer + [g.detach().clone()])[-self.w_num:]
            self.basis = self._principal_directions() if len(self.buffer) >= self.n_components else None
        if self.basis is None:
            return
        projected = self.basis.T @ (self.basis @ g)
        self._residual = torch.linalg.vector_norm(g - projected) / torch.linalg.vector_norm(g).clamp_min(1e-12)
        for p, chunk in zip(params, projected.split([p.numel() for p in params])):
            p.grad.copy_(chunk.view_as(p.grad))

    def _principal_directions(self) -> torch.Tensor:
        W = torch.stack(self.buffer)
        _, singular, vh = torch.linalg.svd(W - W.mean(0), full_matrices=False)
        # Centring costs a rank: with k gradients the k-th direction has zero variance and is an
        # arbitrary unit vector (random in the reference's randomised PCA); leave such ones out.
        informative = singular > singular[0] * 1e-6
        return vh[:self.n_components][informative[:self.n_components]]

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "buffer": [g.clone() for g in self.buffer],
                "basis": None if self.basis is None else self.basis.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.buffer, self.basis = list(state["buffer"]), state["basis"]
