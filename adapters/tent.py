"""`tent`: entropy minimisation on the BatchNorm affine parameters.

Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization" (ICLR 2021),
DequanWang/tent `tent.py`: BN layers normalise with test-batch statistics, only their gamma/beta
are trained, one SGD step per batch on the mean softmax entropy; the served prediction is the
output of the same forward, before the update (tent#3). ImageNet-C ResNet-50 defaults: SGD lr
2.5e-4, momentum 0.9 (plain; Nesterov is an option), batch 64.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ADAPTERS, Adapter, StepResult, entropy, norm_affine_parameters, use_batch_statistics


def configure_norm_adaptation(model: nn.Module) -> nn.Module:
    """Train mode, everything frozen except BN affine, BN on test-batch statistics."""
    model.train().requires_grad_(False)
    for bn in use_batch_statistics(model):
        if bn.affine:
            bn.weight.requires_grad_(True)
            bn.bias.requires_grad_(True)
    return model


class NormAffineAdapter(Adapter):
    """Adapters that train BN affine parameters on test-batch statistics (Tent, ETA, EATA, ...)."""

    def configure_model(self, model: nn.Module) -> nn.Module:
        return configure_norm_adaptation(model)

    def adapted_parameters(self, model: nn.Module):
        return norm_affine_parameters(model)


@ADAPTERS.register("tent", description="Entropy minimisation on the BatchNorm affine parameters "
                                  "(Wang et al., ICLR 2021)")
class Tent(NormAffineAdapter):
    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        logits = self.model(images)
        entropies = entropy(logits)
        loss = entropies.mean()
        grad_norm = self._update(loss)
        return StepResult(logits.detach(), entropies.detach().mean(),
                          torch.tensor(len(images), device=logits.device), loss.detach(), grad_norm,
                          torch.zeros((), dtype=torch.bool, device=logits.device))
