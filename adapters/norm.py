"""`norm`: test-batch BatchNorm statistics, no gradient updates.

Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation" (NeurIPS 2020), with N = 0 (the source statistics are not mixed in), as the
`batchnorm` method of oripress/CCC and Tent's BN baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ADAPTERS, Adapter, StepResult, no_update, use_batch_statistics


@ADAPTERS.register("norm", description="Test-batch BatchNorm statistics, no gradient updates "
                                  "(Schneider et al., NeurIPS 2020)")
class Norm(Adapter):
    def configure_model(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        use_batch_statistics(model)
        return model

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        with torch.no_grad():
            logits = self.model(images)
        return no_update(logits)
