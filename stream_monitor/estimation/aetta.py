"""AETTA (Lee et al., CVPR 2024; repo taeckyung/AETTA, learner/dnn.py): label-free accuracy of an
adapting model from the disagreement of its dropout predictions, with the robust calibration
that keeps it honest when the adaptation collapses.

- Prediction disagreement with dropouts (PDD): N forward passes of the adapted model with dropout
  (rate p) after each ResNet stage; the batch's estimated accuracy is the mean share of passes
  that agree with the served prediction, a = mean_j (1/N) sum_n 1[y_j = y_j^(n)].
- Robust calibration: with H the entropy of the batch-mean dropout softmax (the marginal),
  err' = (1 - a) / (H / ln K)^3 clipped to [0, 1 - 1/K], smoothed err_t = 0.6 err_{t-1} + 0.4 err';
  the estimate is 100 (1 - err_t). Predictions that pile onto a few classes drive H to 0 and the
  error up, which is what makes it robust to collapse.
- The recovery rule (AETTA's reset_function "aetta") is `detectors.AETTAReset`.

The dropout forwards run in the adapter actor, on the model it serves, every `estimation.aetta_every`
batches; they cost N extra forwards of that batch, so they are off by default. Written by hand: no
maintained library implements AETTA.
"""

from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from .base import ESTIMATORS, NotComputableError
from .readings import Feed
from .window import WindowEstimator

SMOOTHING = 0.6  # err_t = 0.6 err_{t-1} + 0.4 err'


def stage_ends(model: nn.Module) -> list[nn.Module]:
    """The modules after which AETTA applies dropout: torchvision ResNets' layer1..layer4, or the
    last block of each stage of the embedded CIFAR ResNet (where the next block strides)."""
    named = [getattr(model, f"layer{i}") for i in range(1, 5) if isinstance(getattr(model, f"layer{i}", None), nn.Module)]
    if named:
        return named
    blocks = getattr(model, "layers", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and all(hasattr(b, "conv1") for b in blocks):
        return [b for i, b in enumerate(blocks) if i + 1 == len(blocks) or tuple(blocks[i + 1].conv1.stride) != (1, 1)]
    raise ValueError(f"AETTA puts dropout after each ResNet stage, and {type(model).__name__} has no stages "
                     f"stream-monitor can find (layer1..layer4, or the embedded ResNet's blocks); "
                     f"set estimation.aetta_every=0 for this model.")


class DropoutDisagreement:
    """PDD of one batch: `forwards` dropout passes of `model` (rate `p` after each stage) against the
    served predictions. The model's BatchNorm buffers are restored afterwards, so the passes leave
    the adapter exactly as they found it."""

    def __init__(self, p: float = 0.4, forwards: int = 10, seed: int = 0) -> None:
        if not 0.0 < p < 1.0 or forwards < 1:
            raise ValueError(f"AETTA needs a dropout rate in (0, 1) and at least one forward, got p={p}, "
                             f"forwards={forwards}")
        self.p, self.forwards = p, forwards
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: torch.Tensor, predictions: torch.Tensor) -> tuple[float, float]:
        """(agreement a in [0, 1], entropy of the mean dropout softmax / ln K) for the batch."""
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        hooks = [m.register_forward_hook(lambda _, __, out: nn.functional.dropout(out, self.p, training=True))
                 for m in stage_ends(model)]
        # the dropout masks come from a forked RNG seeded by our own generator: reproducible, and the
        # adapter's own randomness (CoTTA's augmentations, stochastic restore) is left untouched
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=self.generator)))
            return self._passes(model, images, predictions, buffers, hooks)

    def _passes(self, model, images, predictions, buffers, hooks) -> tuple[float, float]:
        try:
            agree = torch.zeros(len(images), device=images.device)
            mean_probs = None
            for _ in range(self.forwards):
                probs = model(images).float().softmax(1)
                agree += (probs.argmax(1) == predictions).float()
                mean_probs = probs if mean_probs is None else mean_probs + probs
        finally:
            for hook in hooks:
                hook.remove()
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        marginal = (mean_probs / self.forwards).mean(0)
        k = marginal.numel()
        entropy = float(-(marginal * marginal.clamp_min(1e-12).log()).sum()) / math.log(k)
        return float(agree.mean()) / self.forwards, entropy


def robust_error(agreement: float, marginal_entropy: float, num_classes: int) -> float:
    """AETTA's calibrated batch error err' = (1 - a) / (H / ln K)^3, clipped to [0, 1 - 1/K]."""
    ceiling = 1.0 - 1.0 / num_classes
    if marginal_entropy <= 0.0:
        return ceiling  # every prediction on one class: the collapse the calibration exists for
    return float(np.clip((1.0 - agreement) / marginal_entropy ** 3, 0.0, ceiling))


@ESTIMATORS.register("aetta", description=(
    "AETTA (Lee et al., CVPR 2024): dropout disagreement of the served model, robustly calibrated"))
class AETTA(WindowEstimator):
    """AETTA (Lee et al., CVPR 2024): dropout disagreement, robustly calibrated (estimation.aetta_every).

    The window's online accuracy is the mean over its PDD batches of the smoothed 100 (1 - err_t).
    The smoothing runs over the whole stream (as AETTA's), the mean over the probe window; `last`
    is the latest batch's estimate (the step rows' `aetta_acc`)."""

    name = "aetta"
    feeds = (Feed.SERVED,)
    requires = "dropout"
    state_keys = ("error", "last", "total", "count")

    def __init__(self, num_classes: int, feed: Feed = Feed.SERVED) -> None:
        self.num_classes = num_classes
        self.error: float | None = None
        self.last: float | None = None
        super().__init__(None, feed)

    @classmethod
    def create(cls, stats, feed: Feed, *, num_classes: int, sidekick: str | None = None) -> "AETTA":
        return cls(num_classes, feed)

    def reset(self) -> None:
        """A new window (the stream-long smoothing carries on)."""
        self.total, self.count = 0.0, 0

    def update(self, probs: np.ndarray) -> None:
        """AETTA reads the dropout statistics (`update_dropout`), not the softmax feed."""

    def update_dropout(self, agreement: float, marginal_entropy: float) -> float:
        """One batch's PDD; returns its smoothed estimate (%)."""
        raw = robust_error(agreement, marginal_entropy, self.num_classes)
        self.error = raw if self.error is None else SMOOTHING * self.error + (1.0 - SMOOTHING) * raw
        self.last = 100.0 * (1.0 - self.error)
        self.total += self.last
        self.count += 1
        return self.last

    def compute(self) -> float:
        if not self.count:
            raise NotComputableError("aetta needs dropout statistics (estimation.aetta_every > 0) in the window")
        return self.total / self.count
