"""MaNo (Xie et al., NeurIPS 2024, "MaNo: Exploiting Matrix Norm for Unsupervised Accuracy
Estimation Under Distribution Shifts"; repo Renchunzi-Xie/MaNo, src/mano/mano.py), a baseline.

- Criterion Phi = -(1/(N K)) sum_i sum_k log softmax(z_i)_k (cross-entropy to the uniform).
- Normalisation: softmax if Phi > 5, else the second-order Taylor softmax
  v = 1 + z + z^2 / 2, minus its row minimum, divided by its row sum.
- Score S = ((1/(N K)) sum_ik Q_ik^p)^(1/p), p = 4: an entrywise norm, a sum over images, so a
  window keeps two numbers.
- The score correlates with accuracy; the map to accuracy is a line fitted on the calibration's
  labelled held-out domains, one per normalisation (`baseline_maps.py`).

Two choices of this project: the normalisation is decided once per run, on the feed's first
`SWITCH_IMAGES` images (the frozen feed: the source model; the served feed: the first 10 batches,
while adaptation has barely begun) and then frozen, since under entropy minimisation Phi rises and
would move the switch exactly where the model is over-confident (research/risk_monitoring.md 3);
and estimators see softmax outputs, not logits, so the logits are the row-centred log-probabilities
(the logits up to a per-image constant, which the softmax ignores but the Taylor expansion does not).
"""

from __future__ import annotations

import numpy as np

from .base import ESTIMATORS, NotComputableError
from .baseline_maps import maps_for
from .readings import Feed, Reading
from .window import FeedStats, WindowEstimator

P = 4
THRESHOLD = 5.0
SWITCH_IMAGES = 640  # the official code's 5 batches of 128 (its slip aside); the frozen feed sees them by step 80
SOFTMAX, TAYLOR = "softmax", "taylor"
BRANCHES = (SOFTMAX, TAYLOR)


def centred_logits(probs: np.ndarray) -> np.ndarray:
    log_p = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None))
    return log_p - log_p.mean(1, keepdims=True)


def uniform_cross_entropy(logits: np.ndarray) -> float:
    """Phi of a set of images: the mean over images and classes of -log softmax."""
    z = logits - logits.max(1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_softmax.mean())


def normalise(logits: np.ndarray, branch: str) -> np.ndarray:
    """Q: softmax rows, or the Taylor softmax's (MaNo's SoftTrun)."""
    if branch == SOFTMAX:
        z = np.exp(logits - logits.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)
    v = 1.0 + logits + logits ** 2 / 2.0
    v -= v.min(1, keepdims=True)
    return v / np.maximum(v.sum(1, keepdims=True), 1e-12)  # torch's F.normalize(p=1) eps


def mano_score(probs: np.ndarray, branch: str) -> float:
    """S on one set of images (what the estimator accumulates over a window)."""
    q = normalise(centred_logits(probs), branch)
    return float((q ** P).mean() ** (1.0 / P))


@ESTIMATORS.register("mano", description=(
    "MaNo (Xie et al., NeurIPS 2024): the L4 norm of softmax or Taylor-normalised logits through a "
    "calibration line; baseline"))
class MaNo(WindowEstimator):
    """MaNo (Xie et al., NeurIPS 2024), p = 4, the normalisation frozen on the run's first images."""

    name = "mano"
    #: switch: -1 while undecided, else an index into BRANCHES; pending: the logits the switch is
    #: decided on, the last `pending_here` of them this window's
    state_keys = ("total", "count", "switch", "pending", "pending_here")

    def __init__(self, stats: FeedStats | None = None, feed: Feed = Feed.SERVED,
                 lines: dict[str, tuple[float, float]] | None = None) -> None:
        self.switch = -1
        self.pending = np.zeros((0, 0))
        self.pending_here = 0
        self.lines = lines or {}
        super().__init__(stats, feed)

    @classmethod
    def create(cls, stats, feed, *, num_classes, sidekick=None):
        maps = maps_for(num_classes)
        return cls(stats, feed, maps.mano_lines if maps else None)

    @property
    def branch(self) -> str | None:
        """The normalisation, once decided."""
        return None if self.switch < 0 else BRANCHES[self.switch]

    def reset(self) -> None:  # a new window; the switch and what decides it stay
        self.total = 0.0
        self.count = 0
        self.pending_here = 0

    def update(self, probs: np.ndarray) -> None:
        if not len(probs):
            return
        logits = centred_logits(probs)
        if self.branch is None:
            self.pending = logits if not self.pending.size else np.concatenate([self.pending, logits])
            self.pending_here += len(logits)
            if len(self.pending) < SWITCH_IMAGES:
                return
            self.switch = BRANCHES.index(SOFTMAX if uniform_cross_entropy(self.pending) > THRESHOLD else TAYLOR)
            logits = self.pending[len(self.pending) - self.pending_here:]
            self.pending, self.pending_here = np.zeros((0, 0)), 0
        self.total += float((normalise(logits, self.branch) ** P).sum())
        self.count += logits.size

    def score(self) -> float:
        if self.branch is None:
            raise NotComputableError(f"mano decides its normalisation on the run's first {SWITCH_IMAGES} images")
        if not self.count:
            raise NotComputableError("mano has seen no image of this window yet")
        return (self.total / self.count) ** (1.0 / P)

    def compute(self) -> float:
        score = self.score()
        line = self.lines.get(self.branch)
        if line is None:
            raise NotComputableError("mano needs a line fitted on the calibration's domains (baseline_maps.py)")
        return float(np.clip(line[0] * score + line[1], 0.0, 100.0))

    def reading(self) -> Reading:
        try:
            score = self.score()
        except NotComputableError:
            return Reading(self.name, self.feed, self.target, None)
        return Reading(self.name, self.feed, self.target, self._value(), score=score)
