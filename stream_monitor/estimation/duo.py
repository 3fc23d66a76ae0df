"""Asymmetric Duos (Zhou, Shelhamer & Pleiss, NeurIPS 2025; repo timgzhou/asymmetric-duos): a
small frozen sidekick beside the large model, for uncertainty and, here, label-free accuracy.

- Temperature-weighted aggregation (evaluate/5_evaluate_duo_predictions.py, "temperature_weighted"):
  z = (z_L / T_L + z_S / T_S) / 2, with (T_L, T_S) fitted jointly on labelled source data by a
  25 x 25 grid over [0.05, 5.05) in steps of 0.2 minimising the NLL, then joint LBFGS (lr 0.01,
  50 iterations) from the grid optimum (evaluate/3_duo_temp_scale.py).
- Duo uncertainty of an image: 1 - p_duo[y_L], the duo's probability of the large model's class
  (indexed at y_L as in the repository's code); `duo-confidence` is its complement averaged over
  the window, an estimate of the online accuracy.
- Duo disagreement: the share of the window where the two models' classes differ;
  `duo-agreement` is its complement, the GDE-style estimate (Jiang et al., ICLR 2022) of the
  large model's accuracy from the agreement of two models.

In stream-monitor the large model is the model behind a feed, served or frozen (its softmax, whose
logs are the logits up to a per-image constant that the softmax ignores), and the sidekick is a
frozen smaller model served by its own actor (`estimation.duo_model`). Written by hand: no maintained library
implements Duos.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from .base import ESTIMATORS, NotComputableError
from .readings import Feed
from .window import WindowEstimator

GRID = np.arange(0.05, 5.05, 0.2)


def _duo_nll(log_l: torch.Tensor, log_s: torch.Tensor, labels: torch.Tensor, t_l, t_s) -> torch.Tensor:
    return torch.nn.functional.cross_entropy((log_l / t_l + log_s / t_s) / 2, labels)


def fit_duo_temperatures(log_large: np.ndarray, log_small: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(T_L, T_S) of the duo by the repository's grid then joint LBFGS on the NLL."""
    log_l = torch.from_numpy(np.asarray(log_large, dtype=np.float64))
    log_s = torch.from_numpy(np.asarray(log_small, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    best = min(((float(_duo_nll(log_l, log_s, y, a, b)), a, b) for a in GRID for b in GRID))
    t = torch.tensor([best[1], best[2]], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([t], lr=0.01, max_iter=50)

    def closure():
        optimiser.zero_grad()
        loss = _duo_nll(log_l, log_s, y, t[0].clamp_min(0.05), t[1].clamp_min(0.05))
        loss.backward()
        return loss

    optimiser.step(closure)
    t_l, t_s = (max(0.05, float(v)) for v in t.detach())
    if not np.isfinite([t_l, t_s]).all() or float(_duo_nll(log_l, log_s, y, t_l, t_s)) > best[0]:
        return float(best[1]), float(best[2])  # LBFGS went astray: the grid point
    return t_l, t_s


def duo_probabilities(log_large: np.ndarray, log_small: np.ndarray, t_large: float = 1.0,
                      t_small: float = 1.0) -> np.ndarray:
    """softmax((z_L / T_L + z_S / T_S) / 2)."""
    z = (np.asarray(log_large, np.float64) / t_large + np.asarray(log_small, np.float64) / t_small) / 2
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


class _Duo(WindowEstimator):
    """Shared by the duo estimators: fed with a feed's softmax and the sidekick's log-softmax of
    the same images (`update_sidekick`); the softmax-only feed is ignored."""

    requires = "sidekick"
    state_keys = ("total", "count")

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, probs: np.ndarray) -> None:
        """A duo reads the feed together with the sidekick's outputs (`update_sidekick`)."""

    def update_sidekick(self, probs: np.ndarray, sidekick_log_probs: np.ndarray) -> None:
        if not len(probs):
            return
        self.total += float(self.score(np.asarray(probs), np.asarray(sidekick_log_probs)).sum())
        self.count += len(probs)

    @abstractmethod
    def score(self, probs: np.ndarray, sidekick: np.ndarray) -> np.ndarray: ...

    def compute(self) -> float:
        if not self.count:
            raise NotComputableError(f"{self.name} needs a sidekick (estimation.duo_model) and images in the window")
        return 100.0 * self.total / self.count


@ESTIMATORS.register("duo-agreement", description=(
    "Asymmetric Duos (Zhou et al., NeurIPS 2025): the share where the sidekick's class agrees"))
class DuoAgreement(_Duo):
    """Asymmetric Duos' disagreement (Zhou et al., NeurIPS 2025): the share where sidekick and feed class agree.

    On the frozen feed it is GDE's agreement of two frozen models (Jiang et al., ICLR 2022)."""

    name = "duo-agreement"

    def score(self, probs, sidekick):
        return probs.argmax(1) == sidekick.argmax(1)


@ESTIMATORS.register("duo-confidence", description=(
    "Asymmetric Duos (Zhou et al., NeurIPS 2025): the duo's mean probability of the served class"))
class DuoConfidence(_Duo):
    """Asymmetric Duos' uncertainty (Zhou et al., NeurIPS 2025): mean p_duo of the served class, temperature-weighted.

    The temperatures are the calibration's (fitted on the meta-set's clean domain with this
    sidekick); without them T_L = T_S = 1 (the repository's unweighted logit average)."""

    name = "duo-confidence"
    feeds = (Feed.SERVED,)

    @classmethod
    def create(cls, stats, feed: Feed, *, num_classes: int, sidekick: str | None = None) -> "DuoConfidence":
        # temperatures fitted with another sidekick mean nothing for this one
        return cls(stats if stats is not None and (stats.duo or {}).get("model") == sidekick else None, feed)

    def score(self, probs, sidekick):
        t_l, t_s = (self.stats.duo or {}).get("temperatures", (1.0, 1.0))
        duo = duo_probabilities(np.log(np.clip(probs, 1e-12, None)), sidekick, t_l, t_s)
        return duo[np.arange(len(probs)), probs.argmax(1)]
