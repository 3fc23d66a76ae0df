"""Collapse detectors over label-free signals; a warning fires when any detector fires.

Each follows ignite's contract (`reset`, `update`, `compute`), returns a `Verdict` with its
evidence, and keeps its state in a plain dict for checkpoints. A warning fires when any detector
fires (the fused warning); with estimation.reset_on_warning it resets the adapter.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .base import NotComputableError


@dataclass(frozen=True)
class Verdict:
    firing: bool
    evidence: str
    value: float


class CollapseDetector(ABC):
    name: str

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def reset(self) -> None: ...

    def update_step(self, row: dict[str, Any]) -> None:
        """A step row (schema.STEP_SCHEMA); label columns are never read."""

    def update_probe(self, row: dict[str, Any]) -> None:
        """A probe row's label-free columns."""

    @abstractmethod
    def compute(self) -> Verdict:
        """The current verdict; NotComputableError while warming up."""

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


class _StepEMA(CollapseDetector):
    """An exponential moving average of one step column, after `warmup` finite values."""

    column: str
    decay: float

    def __init__(self, warmup: int = 50) -> None:
        self.warmup = warmup
        super().__init__()

    def reset(self) -> None:
        self.ema: float | None = None
        self.count = 0

    def update_step(self, row: dict[str, Any]) -> None:
        value = row.get(self.column)
        if value is None or not math.isfinite(value):
            return
        self.ema = value if self.ema is None else self.decay * self.ema + (1 - self.decay) * value
        self.count += 1

    def compute(self) -> Verdict:
        if self.ema is None or self.count < self.warmup:
            raise NotComputableError(f"{self.name} needs {self.warmup} steps")
        return self.judge(self.ema)

    @abstractmethod
    def judge(self, ema: float) -> Verdict: ...


class EntropyCollapse(_StepEMA):
    """SAR's model-recovery signal (Niu et al., ICLR 2023, mr-eggplant/SAR): an EMA (0.9) of the
    mean entropy below 0.2 nats for 1,000 classes, here scaled to 0.2 / ln(1000) of ln K."""

    name, column, decay = "entropy-ema", "mean_entropy", 0.9

    def __init__(self, num_classes: int, warmup: int = 50) -> None:
        self.threshold = 0.2 / math.log(1000) * math.log(num_classes)
        super().__init__(warmup)

    def judge(self, ema: float) -> Verdict:
        return Verdict(ema < self.threshold, f"entropy EMA {ema:.3f} nats (threshold {self.threshold:.3f})", ema)


class PredictionConcentration(_StepEMA):
    """Predictions piling onto one class: EMA (0.95) of the batch's top-class share above `share`
    (the degenerate solution of entropy minimisation; Press et al., RDumb, NeurIPS 2023)."""

    name, column, decay = "top-class-share", "top_class_share", 0.95

    def __init__(self, share: float = 0.5, warmup: int = 50) -> None:
        self.share = share
        super().__init__(warmup)

    def judge(self, ema: float) -> Verdict:
        return Verdict(ema > self.share, f"top class takes {100 * ema:.0f}% of predictions "
                       f"(threshold {100 * self.share:.0f}%)", ema)


class EstimateBelowSource(CollapseDetector):
    """The estimated online accuracy below the estimated source accuracy by `margin` points on
    `patience` consecutive probes: label-free form of the collapse definition (DESIGN.md 6)."""

    name = "online-below-source"

    def __init__(self, margin: float = 5.0, patience: int = 2) -> None:
        self.margin, self.patience = margin, patience
        super().__init__()

    def reset(self) -> None:
        self.below = 0
        self.gap: float | None = None

    def update_probe(self, row: dict[str, Any]) -> None:
        online, source = row.get("est_online_acc"), row.get("est_source_acc")
        if online is None or source is None:
            return
        self.gap = source - online
        self.below = self.below + 1 if self.gap > self.margin else 0

    def compute(self) -> Verdict:
        if self.gap is None:
            raise NotComputableError(f"{self.name} needs a source and an online estimate")
        return Verdict(self.below >= self.patience, f"estimated online accuracy {self.gap:.1f} points below "
                       f"the estimated source accuracy for {self.below} probes", self.gap)


class AETTAReset(CollapseDetector):
    """AETTA's recovery rule (Lee et al., CVPR 2024, reset_function "aetta"): its accuracy estimate
    below `floor` %, or the mean of the last `span` estimates `drop` points under the mean of the
    `span` before; read from the step rows' `aetta_acc` (only with estimation.aetta_every > 0). The
    defaults are the paper's reset rule; the default warning (`default_detectors`) asks for more."""

    name = "aetta-drop"

    def __init__(self, floor: float = 20.0, drop: float = 2.0, span: int = 5) -> None:
        self.floor, self.drop, self.span = floor, drop, span
        super().__init__()

    def reset(self) -> None:
        self.history: list[float] = []

    def update_step(self, row: dict[str, Any]) -> None:
        value = row.get("aetta_acc")
        if value is not None and math.isfinite(value):
            self.history = (self.history + [float(value)])[-2 * self.span:]

    def compute(self) -> Verdict:
        if not self.history:
            raise NotComputableError(f"{self.name} needs AETTA estimates (estimation.aetta_every > 0)")
        last = self.history[-1]
        if last < self.floor:
            return Verdict(True, f"AETTA estimates {last:.1f}% (below {self.floor:g}%)", last)
        if len(self.history) < 2 * self.span:
            return Verdict(False, f"AETTA estimates {last:.1f}%", last)
        before = sum(self.history[:self.span]) / self.span
        recent = sum(self.history[self.span:]) / self.span
        return Verdict(recent + self.drop < before, f"AETTA's mean estimate of the last {self.span} batches "
                       f"{recent:.1f}% against {before:.1f}% before", recent - before)


def default_detectors(num_classes: int) -> list[CollapseDetector]:
    # AETTA's own drop rule (2 points over 5 estimates) is a cheap reset trigger, but as a warning it
    # fired 22, 22 and 10 times on three 300k Tent runs that never collapsed; 10 points over 10
    # estimates fired 0, 0 and 2 times and still caught all 5 collapse events of the lr 5e-3 run
    # (README, "Measured")
    return [EntropyCollapse(num_classes), PredictionConcentration(), EstimateBelowSource(),
            AETTAReset(drop=10.0, span=10)]
