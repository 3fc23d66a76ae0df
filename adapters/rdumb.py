"""`rdumb`: ETA with a full reset every 1000 steps.

Press et al., "RDumb: A simple approach that questions our progress in continual test-time
adaptation" (NeurIPS 2023), oripress/CCC `models/rdumb.py`: ETA (E0 = 0.4 ln K, d_margin 0.05,
EMA 0.9, SGD lr 2.5e-4 momentum 0.9) whose weights, optimiser state and probability average are
reset to the source state every 1000 steps (64,000 images at batch 64).
"""

from __future__ import annotations

from torch import nn

from .base import ADAPTERS
from .eta import ETA


@ADAPTERS.register("rdumb", description="ETA with a full reset every 1000 steps (Press et al., NeurIPS 2023)")
class RDumb(ETA):
    def __init__(self, model: nn.Module, lr: float = 2.5e-4, momentum: float = 0.9, nesterov: bool = False,
                 reset_every: int | None = 1000, **eta_options) -> None:
        super().__init__(model, lr, momentum, nesterov, reset_every, **eta_options)
