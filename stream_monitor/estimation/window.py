"""Label-free accuracy estimates from the softmax outputs of a window.

Each estimator follows ignite's contract (`reset`, `update`, `compute`, NotComputableError) and
sees only probabilities (never labels), from one of two feeds:
- the outputs the adapter served: an estimate of the online accuracy (target "online");
- the frozen source model's outputs on the batches the evaluator scores: an estimate of the
  source accuracy on the window (target "source"), the baselines Entropy Enigma compares
  weighted flips with (AC, DoC, ATC, COT on the pre-trained model's outputs).
Those that need labelled statistics take them from the calibration (`SourceStats` of the served
adapter at its source state, or of the frozen model, fitted by `stream-monitor calibrate` on the
meta-set's clean domain); without one they are not computable. Written by hand because no
maintained library ships them (research/estimators.md 4.3).

- AC (Hendrycks & Gimpel, ICLR 2017): mean max-softmax.
- DoC (Guillory et al., ICCV 2021): Acc_S - (AC_S - AC_t).
- ATC (Garg et al., ICLR 2022), MC and NE scores: the share of the window scoring above the
  threshold t fitted on S so that P_S(s < t) = 1 - Acc_S.
- COT (Lu et al., NeurIPS 2023): 1 - W1 between the window's softmax vectors and one-hot labels
  drawn from the source label marginal (uniform here), cost = total variation; with equal
  sample counts and uniform weights the transport is an assignment (`linear_sum_assignment`).
- Nuclear norm (Deng et al., ICML 2023): ||P||_* / sqrt(m min(m, K)), mapped to accuracy by the
  line fitted on the meta-set.

AC, DoC and ATC use temperature-scaled probabilities when the calibration has a temperature.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from .base import NotComputableError

RESERVOIR = 1024  # the most recent served softmax vectors kept for COT and the nuclear norm


#: The target of an estimator class on the frozen model's feed, by its target on the served feed.
FROZEN_TARGETS = {"online": "source", "score": "source-score"}


@dataclass(frozen=True)
class SourceStats:
    """Labelled statistics of one feed's model (the served adapter at the source state, or the
    frozen model) on the meta-set's clean domain."""

    temperature: float = 1.0
    accuracy: float | None = None          # Acc_S, %
    mean_confidence: float | None = None   # AC_S, % (temperature-scaled)
    atc_mc_threshold: float | None = None
    atc_ne_threshold: float | None = None
    nuclear_fit: tuple[float, float] | None = None  # accuracy = slope * NN + intercept (meta-set line)
    sentinel: dict[str, Any] | None = None  # the Sentinel forest's meta-set training set (sentinel.fit_sentinel)
    duo: dict[str, Any] | None = None  # Asymmetric Duos: the sidekick's name and the joint (T_L, T_S)


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, None)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def negative_entropy(probs: np.ndarray) -> np.ndarray:
    return (probs * np.log(np.clip(probs, 1e-12, None))).sum(1)


def atc_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """t with P_S(s < t) = 1 - Acc_S (Garg et al.'s find_ATC_threshold, equivalently)."""
    errors = int(len(correct) - correct.sum())
    ordered = np.sort(scores)
    return float(ordered[errors]) if errors < len(ordered) else float(ordered[-1] + 1e-6)


def fit_source_stats(probs: np.ndarray, labels: np.ndarray) -> SourceStats:
    """Temperature (NLL, LBFGS as in gpleiss/temperature_scaling), Acc_S, AC_S and ATC thresholds."""
    log_p = torch.from_numpy(np.log(np.clip(probs, 1e-12, None))).double()
    target = torch.from_numpy(labels).long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_p / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    scaled = scale(probs, temperature)
    correct = scaled.argmax(1) == labels
    return SourceStats(temperature, float(100.0 * correct.mean()), float(100.0 * scaled.max(1).mean()),
                       atc_threshold(scaled.max(1), correct), atc_threshold(negative_entropy(scaled), correct))


class WindowEstimator(ABC):
    name: str
    target = "online"

    def __init__(self, stats: SourceStats | None = None, frozen: bool = False) -> None:
        """`frozen`: fed with the frozen source model's outputs (its target becomes FROZEN_TARGETS')."""
        self.stats = stats or SourceStats()
        self.frozen = frozen
        if frozen:
            self.target = FROZEN_TARGETS[type(self).target]
        self.reset()

    @property
    def key(self) -> str:
        """Unique among a loop's estimators: the name, and the feed."""
        return f"{self.name}@frozen" if self.frozen else self.name

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, probs: np.ndarray) -> None:
        """Served softmax outputs of one step, (N, K)."""

    @abstractmethod
    def compute(self) -> float:
        """Estimated accuracy (%) on the window so far."""

    def features(self) -> list[float] | None:
        """What a run records beside the estimate so a later calibration can redo it (None: nothing)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {k: (torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v)
                for k, v in vars(self).items() if k not in ("stats", "frozen", "target")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v.numpy() if isinstance(v, torch.Tensor) else v)

    def _need(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self.stats, f) is None]
        if missing:
            raise NotComputableError(f"{self.name} needs a calibration with {', '.join(missing)}")


class _Counting(WindowEstimator):
    """Estimators that are a mean over the window's samples."""

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, probs: np.ndarray) -> None:
        if not len(probs):
            return
        try:
            scores = self.score(scale(probs, self.stats.temperature))
        except NotComputableError:  # no calibration: nothing to count, compute() says why
            return
        self.total += float(scores.sum())
        self.count += len(probs)

    def mean(self) -> float:
        if not self.count:
            raise NotComputableError(f"{self.name} has seen no image yet")
        return 100.0 * self.total / self.count

    @abstractmethod
    def score(self, probs: np.ndarray) -> np.ndarray: ...


class AverageConfidence(_Counting):
    """AC (Hendrycks & Gimpel, ICLR 2017): the mean max-softmax."""

    name = "average-confidence"

    def score(self, probs):
        return probs.max(1)

    def compute(self) -> float:
        return self.mean()


class DifferenceOfConfidences(AverageConfidence):
    """DoC (Guillory et al., ICCV 2021): Acc_S - (AC_S - AC_t)."""

    name = "doc"

    def compute(self) -> float:
        self._need("accuracy", "mean_confidence")
        return self.stats.accuracy - (self.stats.mean_confidence - self.mean())


class ATCMaxConfidence(_Counting):
    """ATC-MC (Garg et al., ICLR 2022): the share above the source-fitted max-confidence threshold."""

    name = "atc-mc"

    def score(self, probs):
        self._need("atc_mc_threshold")
        return probs.max(1) >= self.stats.atc_mc_threshold

    def compute(self) -> float:
        self._need("atc_mc_threshold")
        return self.mean()


class ATCNegativeEntropy(_Counting):
    """ATC-NE (Garg et al., ICLR 2022): the share above the source-fitted negative-entropy threshold."""

    name = "atc-ne"

    def score(self, probs):
        self._need("atc_ne_threshold")
        return negative_entropy(probs) >= self.stats.atc_ne_threshold

    def compute(self) -> float:
        self._need("atc_ne_threshold")
        return self.mean()


class _Reservoir(WindowEstimator):
    """Keeps the window's most recent RESERVOIR softmax vectors in a ring buffer, so a step costs
    one write of its own rows (not a copy of the reservoir: 4 MB a step at K = 1000)."""

    def reset(self) -> None:
        self.ring = np.zeros((0, 0), np.float32)
        self.filled = 0
        self.next = 0  # where the next row goes

    def update(self, probs: np.ndarray) -> None:
        probs = probs[-RESERVOIR:]
        if not len(probs):
            return
        if not self.ring.size:
            self.ring = np.zeros((RESERVOIR, probs.shape[1]), np.float32)
        rows = (self.next + np.arange(len(probs))) % RESERVOIR
        self.ring[rows] = probs
        self.next = int(rows[-1] + 1) % RESERVOIR
        self.filled = min(RESERVOIR, self.filled + len(probs))

    @property
    def recent(self) -> np.ndarray:
        """The kept rows, oldest first."""
        if self.filled < RESERVOIR:
            return self.ring[:self.filled]
        return np.concatenate([self.ring[self.next:], self.ring[:self.next]])

    def _probs(self) -> np.ndarray:
        if len(self.recent) < 2:
            raise NotComputableError(f"{self.name} needs a few images")
        return self.recent.astype(np.float64)


class OptimalTransport(_Reservoir):
    """COT (Lu et al., NeurIPS 2023): 1 - W1 to one-hot labels of the (uniform) source marginal."""

    name = "cot"

    def compute(self) -> float:
        from scipy.optimize import linear_sum_assignment

        probs = self._probs()
        m, k = probs.shape
        labels = np.arange(m) % k  # the uniform source label marginal, as evenly as m allows
        # TV cost between e_y and p: 1/2 (1 - p_y + sum_{c != y} p_c) = 1 - p_y
        cost = 1.0 - probs[:, labels]
        rows, cols = linear_sum_assignment(cost)
        return 100.0 * (1.0 - cost[rows, cols].mean())


class NuclearNormScore(_Reservoir):
    """The raw score x100 (target "score", not an accuracy): what calibrate maps to accuracy."""

    name, target = "nuclear-norm-score", "score"

    def score(self) -> float:
        probs = self._probs()
        m, k = probs.shape
        return float(np.linalg.svd(probs, compute_uv=False).sum() / np.sqrt(m * min(m, k)))

    def compute(self) -> float:
        return 100.0 * self.score()


class NuclearNorm(NuclearNormScore):
    """Nuclear norm (Deng et al., ICML 2023): accuracy = slope * NN + intercept, a meta-set line.

    The line is the calibration's, fitted on the meta-set's windows for this feed's target."""

    name, target = "nuclear-norm", "online"

    def compute(self) -> float:
        self._need("nuclear_fit")
        return nuclear_accuracy(self.score(), self.stats.nuclear_fit)


def nuclear_accuracy(score: float, line: tuple[float, float]) -> float:
    """The meta-set line applied to a raw nuclear-norm score (in [0, 1]), clipped to [0, 100]."""
    slope, intercept = line
    return float(np.clip(slope * score + intercept, 0.0, 100.0))


ESTIMATORS = (AverageConfidence, DifferenceOfConfidences, ATCMaxConfidence, ATCNegativeEntropy, OptimalTransport,
              NuclearNorm, NuclearNormScore)


def with_source_line(served: SourceStats | None, frozen: SourceStats | None) -> SourceStats | None:
    """The served feed's statistics, with the frozen source model's nuclear-norm line where the
    served adapter's calibration has none. The adapter starts as that model, and on the embedded
    CCC streams the source line read the served outputs of Tent within 7.6 points (10.1 once it had
    collapsed), where average confidence was 45-79 points off (README, "Measured")."""
    if frozen is None or frozen.nuclear_fit is None or (served is not None and served.nuclear_fit is not None):
        return served
    return replace(served or SourceStats(), nuclear_fit=frozen.nuclear_fit)


def calibrated_on_adapter(served: SourceStats | None) -> bool:
    """Whether the served feed's statistics carry a nuclear-norm line or a Sentinel regressor fitted
    on the served adapter's own meta-set windows (then its estimators headline: headline.py)."""
    return served is not None and (served.nuclear_fit is not None or bool(served.sentinel))


def stats_to_dict(stats: SourceStats) -> dict[str, Any]:
    return asdict(stats)


def stats_from_dict(data: dict[str, Any] | None) -> SourceStats | None:
    if not data:
        return None
    data = dict(data)
    if data.get("nuclear_fit") is not None:
        data["nuclear_fit"] = tuple(data["nuclear_fit"])
    return SourceStats(**data)
