"""`source`: no adaptation; the frozen model with its running BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn

from .base import ADAPTERS, Adapter, StepResult, no_update


@ADAPTERS.register("source", description="No adaptation: the frozen model with its running BatchNorm statistics",
                   adapts=False)
class Source(Adapter):
    def configure_model(self, model: nn.Module) -> nn.Module:
        return model.eval().requires_grad_(False)

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        with torch.no_grad():
            logits = self.model(images)
        return no_update(logits)
