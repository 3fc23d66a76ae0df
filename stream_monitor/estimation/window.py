"""Label-free accuracy estimates from the softmax outputs of a window.

Each estimator follows ignite's contract (`reset`, `update`, `compute`, NotComputableError) and
sees only probabilities (never labels), from one feed (`readings.Feed`):
- the outputs the adapter served: an estimate of the online accuracy;
- the frozen model's outputs on the batches the evaluator scores: an estimate of the source
  accuracy on the window, the baselines Entropy Enigma compares weighted flips with (AC, DoC,
  ATC, COT on the pre-trained model's outputs).
Those that need labelled statistics take them from the calibration (`FeedStats` of the served
adapter at its initial state, or of the frozen model, fitted by `stream-monitor calibrate` on the
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

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from .base import ESTIMATORS, NotComputableError
from .readings import TARGET_OF, Feed, Reading, Target

RESERVOIR = 1024  # the most recent softmax vectors of a feed kept for COT and the nuclear norm


@dataclass(frozen=True)
class FeedStats:
    """Labelled statistics of one feed's model (the served adapter at its initial state, or the
    frozen model) on the meta-set's clean domain, with the meta-set maps of its estimators."""

    temperature: float = 1.0
    accuracy: float | None = None          # Acc_S, %
    mean_confidence: float | None = None   # AC_S, % (temperature-scaled)
    atc_mc_threshold: float | None = None
    atc_ne_threshold: float | None = None
    nuclear_fit: tuple[float, float] | None = None  # accuracy = slope * NN + intercept (meta-set line)
    sentinel: dict[str, Any] | None = None  # the Sentinel forest's meta-set training set (sentinel.fit_sentinel)
    duo: dict[str, Any] | None = None  # Asymmetric Duos: the sidekick's name and the joint (T_L, T_S)
    images: int | None = None  # clean images behind accuracy and the ATC thresholds (the source error's bound)
    # (errors, flagged): of the clean images the max-softmax ATC threshold flags, how many are wrong;
    # the risk test's precision lower bound pi_L (research/risk_monitoring.md 1.4). None: an older file
    flag_precision: tuple[int, int] | None = None
    # the frozen feed's only: online minus source accuracy = slope * (NN served - NN frozen) + intercept,
    # fitted on the meta-set windows of every calibrated adapter (the anchored estimate's map; None:
    # an older file, whose anchored estimate uses the nuclear-norm line's slope)
    anchor_fit: tuple[float, float] | None = None


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


def fit_feed_stats(probs: np.ndarray, labels: np.ndarray) -> FeedStats:
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
    mc_threshold = atc_threshold(scaled.max(1), correct)
    flagged = scaled.max(1) < mc_threshold  # the risk test's error proxy (pipeline.flag_errors)
    return FeedStats(temperature, float(100.0 * correct.mean()), float(100.0 * scaled.max(1).mean()),
                     mc_threshold, atc_threshold(negative_entropy(scaled), correct), images=len(labels),
                     flag_precision=(int((flagged & ~correct).sum()), int(flagged.sum())))


class WindowEstimator(ABC):
    """An estimator of one feed's accuracy on the probe window, from that feed's softmax outputs.

    Subclasses register in `ESTIMATORS` with a description (what `stream-monitor list estimators`
    prints) and set `name`, the feeds they run on, and `state_keys`: the running quantities a checkpoint keeps (ignite's
    `_state_dict_all_req_keys`), so a resumed run rebuilds its configuration from the calibration
    and restores only what the window accumulated."""

    name: ClassVar[str]
    feeds: ClassVar[tuple[Feed, ...]] = (Feed.SERVED, Feed.FROZEN)
    #: what the run must provide beyond the feed: "sidekick" (a Duos model) or "dropout" (AETTA's passes)
    requires: ClassVar[str | None] = None
    state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, stats: FeedStats | None = None, feed: Feed = Feed.SERVED) -> None:
        if feed not in self.feeds:
            raise ValueError(f"{self.name} runs on the {', '.join(map(str, self.feeds))} feed, not {feed}")
        self.stats = stats or FeedStats()
        self.feed = Feed(feed)
        self.reset()

    @classmethod
    def create(cls, stats: FeedStats | None, feed: Feed, *, num_classes: int,
               sidekick: str | None = None) -> "WindowEstimator":
        """The estimator as a run builds it (the pipeline's one constructor call)."""
        return cls(stats, feed)

    @property
    def target(self) -> Target:
        return TARGET_OF[self.feed]

    @property
    def key(self) -> str:
        """Unique among a run's estimators: the feed and the name."""
        return f"{self.feed}/{self.name}"

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, probs: np.ndarray) -> None:
        """The feed's softmax outputs of one step, (N, K)."""

    def update_sidekick(self, probs: np.ndarray, sidekick_log_probs: np.ndarray) -> None:
        """The feed's softmax and the Duos sidekick's log-softmax of the same images."""

    @abstractmethod
    def compute(self) -> float:
        """Estimated accuracy (%) on the window so far."""

    def reading(self) -> Reading:
        """What the window gives now; a value of None where it is not computable."""
        return Reading(self.name, self.feed, self.target, self._value())

    def _value(self) -> float | None:
        try:
            value = self.compute()
        except NotComputableError:
            return None
        return float(value) if math.isfinite(value) else None

    def reread(self, reading: Reading) -> Reading:
        """A recorded reading of this estimator made again with this estimator's calibration, from
        what the reading kept (its raw score or features); unchanged where it kept nothing to redo."""
        return reading

    def state_dict(self) -> dict[str, Any]:
        return {k: _to_state(getattr(self, k)) for k in self.state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        for k in self.state_keys:
            setattr(self, k, _from_state(state[k]))

    def _check_state(self, state: dict[str, Any]) -> None:
        missing = [k for k in self.state_keys if k not in state]
        if missing:
            raise KeyError(f"the checkpoint's state of {self.key} lacks {', '.join(missing)}; it was written by "
                           f"another version of stream-monitor: start the run again without --resume")

    def _need(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self.stats, f) is None]
        if missing:
            raise NotComputableError(f"{self.name} needs a calibration with {', '.join(missing)}")


def _to_state(value: Any) -> Any:
    return torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) else value


def _from_state(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else value


class _Counting(WindowEstimator):
    """Estimators that are a mean over the window's samples."""

    state_keys = ("total", "count")

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


@ESTIMATORS.register("average-confidence", description="AC (Hendrycks & Gimpel, ICLR 2017): the mean max-softmax")
class AverageConfidence(_Counting):
    """AC (Hendrycks & Gimpel, ICLR 2017): the mean max-softmax."""

    name = "average-confidence"

    def score(self, probs):
        return probs.max(1)

    def compute(self) -> float:
        return self.mean()


@ESTIMATORS.register("doc", description="DoC (Guillory et al., ICCV 2021): Acc_S - (AC_S - AC_t)")
class DifferenceOfConfidences(AverageConfidence):
    """DoC (Guillory et al., ICCV 2021): Acc_S - (AC_S - AC_t)."""

    name = "doc"

    def compute(self) -> float:
        self._need("accuracy", "mean_confidence")
        return self.stats.accuracy - (self.stats.mean_confidence - self.mean())


@ESTIMATORS.register("atc-mc", description=(
    "ATC-MC (Garg et al., ICLR 2022): the share above the clean-fitted max-confidence threshold"))
class ATCMaxConfidence(_Counting):
    """ATC-MC (Garg et al., ICLR 2022): the share above the clean-fitted max-confidence threshold."""

    name = "atc-mc"

    def score(self, probs):
        self._need("atc_mc_threshold")
        return probs.max(1) >= self.stats.atc_mc_threshold

    def compute(self) -> float:
        self._need("atc_mc_threshold")
        return self.mean()


@ESTIMATORS.register("atc-ne", description=(
    "ATC-NE (Garg et al., ICLR 2022): the share above the clean-fitted negative-entropy threshold"))
class ATCNegativeEntropy(_Counting):
    """ATC-NE (Garg et al., ICLR 2022): the share above the clean-fitted negative-entropy threshold."""

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

    state_keys = ("ring", "filled", "next")

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


@ESTIMATORS.register("cot", description=(
    "COT (Lu et al., NeurIPS 2023): 1 - W1 to one-hot labels of the uniform label marginal"))
class OptimalTransport(_Reservoir):
    """COT (Lu et al., NeurIPS 2023): 1 - W1 to one-hot labels of the (uniform) label marginal."""

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


@ESTIMATORS.register("nuclear-norm", description=(
    "Nuclear norm (Deng et al., ICML 2023): ||P||_* / sqrt(m min(m, K)) through a meta-set line"))
class NuclearNorm(_Reservoir):
    """Nuclear norm (Deng et al., ICML 2023): accuracy = slope * NN + intercept, a meta-set line.

    The line is the feed's calibration's, fitted on the meta-set's windows; the reading keeps the
    raw score NN = ||P||_* / sqrt(m min(m, K)) beside it, so a later calibration can map it again
    and the anchored estimate can compare both feeds' scores through one line."""

    name = "nuclear-norm"

    def score(self) -> float:
        probs = self._probs()
        m, k = probs.shape
        return float(np.linalg.svd(probs, compute_uv=False).sum() / np.sqrt(m * min(m, k)))

    def compute(self) -> float:
        self._need("nuclear_fit")
        return nuclear_accuracy(self.score(), self.stats.nuclear_fit)

    def reading(self) -> Reading:
        try:
            score = self.score()
        except NotComputableError:
            score = math.nan
        if not math.isfinite(score):
            return Reading(self.name, self.feed, self.target, None)
        return self.reread(Reading(self.name, self.feed, self.target, None, score=score))

    def reread(self, reading: Reading) -> Reading:
        """The recorded raw score through this feed's line (no value without a line)."""
        line = self.stats.nuclear_fit
        return reading.with_value(None if reading.score is None or line is None else
                                  nuclear_accuracy(reading.score, line))


def nuclear_accuracy(score: float, line: tuple[float, float]) -> float:
    """The meta-set line applied to a raw nuclear-norm score (in [0, 1]), clipped to [0, 100]."""
    slope, intercept = line
    return float(np.clip(slope * score + intercept, 0.0, 100.0))


def with_frozen_line(served: FeedStats | None, frozen: FeedStats | None) -> FeedStats | None:
    """The served feed's statistics, with the frozen model's nuclear-norm line where the served
    adapter's calibration has none: the adapter starts as that model, so its line is the nearest
    one there is (benchmarks/estimator_table.py measures how near)."""
    if frozen is None or frozen.nuclear_fit is None or (served is not None and served.nuclear_fit is not None):
        return served
    return replace(served or FeedStats(), nuclear_fit=frozen.nuclear_fit)


def calibrated_on_adapter(served: FeedStats | None) -> bool:
    """Whether the served feed's statistics carry a nuclear-norm line or a Sentinel regressor fitted
    on the served adapter's own meta-set windows (then its estimators headline: headline.py)."""
    return served is not None and (served.nuclear_fit is not None or bool(served.sentinel))


def stats_from_dict(data: dict[str, Any] | None) -> FeedStats | None:
    """FeedStats from a calibration file's mapping (None: the file has none for that feed)."""
    if not data:
        return None
    data = dict(data)
    for key in ("nuclear_fit", "flag_precision", "anchor_fit"):  # JSON lists
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    return FeedStats(**data)
