"""Collapse detectors over label-free signals; a warning fires when any detector fires.

Each follows ignite's contract (`reset`, `update`, `compute`), returns a `Verdict` with its
evidence, and checkpoints only its running quantities (`_state_dict_all_req_keys`, as ignite's
`Serializable`): a resumed run takes its thresholds from the config it resumes with. Detectors
are registered by name (`DETECTORS`, `stream-monitor list detectors`) and a run uses those of
`estimation.detectors`. A warning fires when any of them fires (the fused warning); with
estimation.reset_on_warning it resets the adapter. `transitions` is the one place that turns
verdicts into warning and clear events, for a live run and for `stream-monitor eval --detectors`,
which replays them on a finished run's rows.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..metrics.schema import FUSED_ORIGIN
from ..registry import Registry
from .base import NotComputableError
from .sequential import Restarted, clopper_pearson_lower, clopper_pearson_upper

if TYPE_CHECKING:  # building a config checks detector names; that must not load torch (context -> window)
    from .context import EstimationContext

logger = logging.getLogger(__name__)

#: name -> detector class; `for_model(setup)` builds the detector as a warning uses it.
DETECTORS: Registry[type["CollapseDetector"]] = Registry("detector")
#: The fused warning's detectors unless estimation.detectors says otherwise
#: (benchmarks/estimator_table.py --detectors scores any set on recorded runs).
DEFAULT_DETECTORS = ("divergence", "entropy-ema", "top-class-share", "marginal-entropy", "chance-agreement",
                     "risk-test", "online-below-source", "aetta-drop")
#: Those of them that form the fused warning (`estimation.warning`); the rest are advisory. Chosen by
#: the rule of docs/warnings.md on benchmarks/collapse_warnings.py: no false alarm on the runs that do
#: not collapse and half the labelled collapses detected (the risk test detected none).
DEFAULT_WARNING = ("divergence", "entropy-ema", "top-class-share", "marginal-entropy", "chance-agreement")
#: The origin of the fused warning's events (its `detectors` column names those firing).
FUSED = FUSED_ORIGIN


@dataclass(frozen=True)
class DetectorSetup:
    """What building a run's detectors takes: the model's classes, the run's estimation context
    (the sequential test's source bound and error proxy), and the test's budget and tolerance
    (`estimation.risk_delta`, `estimation.risk_tolerance`, `estimation.risk_restart_every`)."""

    num_classes: int
    context: EstimationContext | None = None
    risk_delta: float = 0.05
    risk_tolerance: float = 0.05
    risk_restart_every: int = 512

    @classmethod
    def of(cls, config: Any, num_classes: int, context: EstimationContext | None) -> "DetectorSetup":
        """The setup of a run's config (`RunConfig`: its estimation.risk_* keys)."""
        est = config.estimation
        return cls(num_classes, context, est.risk_delta, est.risk_tolerance, est.risk_restart_every)


@dataclass(frozen=True)
class RiskBounds:
    """The sequential test's two bounds: the running error's lower bound and the alarm level (the
    clean error's upper bound plus the tolerance), its false-alarm budget and the precision
    bound applied (None: uncorrected, a flag-rate test)."""

    lower: float
    upper: float
    delta: float
    precision: float | None = None


@dataclass(frozen=True)
class Verdict:
    firing: bool
    evidence: str
    value: float
    bounds: RiskBounds | None = None  # the sequential test's, which its events carry


class CollapseDetector(ABC):
    name: str
    #: The running quantities (those `reset` sets) that `state_dict` saves and `load_state_dict`
    #: restores. Configuration (thresholds, margins, warmup) is left out: it comes from the
    #: constructor, so a run resumed with a changed threshold does not get the old one back.
    _state_dict_all_req_keys: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    @classmethod
    def for_model(cls, setup: DetectorSetup) -> "CollapseDetector":
        """The detector as the fused warning uses it, for a run's model and calibration."""
        return cls()

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
        # copies: the running lists and dicts go on changing after a checkpoint is taken
        return {key: copy.deepcopy(getattr(self, key)) for key in self._state_dict_all_req_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the running quantities; the configuration (thresholds, margins) stays the
        constructor's, so a resumed run judges with the config it was resumed with.

        Raises:
            ValueError: `state` lacks one of the state keys.
        """
        missing = [key for key in self._state_dict_all_req_keys if key not in state]
        if missing:
            raise ValueError(f"The {self.name} detector's state lacks {', '.join(map(repr, missing))} (its state "
                             f"keys: {', '.join(self._state_dict_all_req_keys)}): another detector's or an older "
                             f"version's checkpoint.")
        for key in self._state_dict_all_req_keys:
            setattr(self, key, copy.deepcopy(state[key]))


class _StepEMA(CollapseDetector):
    """An exponential moving average of one step column, judged after `warmup` finite values.

    The default warm-up is the average's own memory, 1 / (1 - decay) steps (10 at 0.9, 20 at
    0.95): by then the first value weighs about e^-1 of the average, as much as any later value
    can. The thresholds are absolute (not learned from the stream), so a longer warm-up only
    delays the warning: a collapse within the first 50 steps (Tent at a large lr) was caught only
    after it had happened.
    """

    column: str
    decay: float
    _state_dict_all_req_keys = ("ema", "count")

    def __init__(self, warmup: int | None = None) -> None:
        self.warmup = round(1 / (1 - self.decay)) if warmup is None else warmup
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


@DETECTORS.register("divergence", description="A non-finite loss, gradient or served logits: at once, no warm-up")
class Divergence(CollapseDetector):
    """The adapter diverged: a step with a non-finite loss, gradient norm or served logits (the step
    rows' `diverged`). It fires on the first such step, with no warm-up, and stays on until the
    detectors are re-armed (`estimation.reset_on_warning` resets the adapter to the source model):
    a diverged model's weights do not come back, while the other detectors, which skip non-finite
    values, fall silent on exactly this failure."""

    name = "divergence"
    _state_dict_all_req_keys = ("diverged_at",)

    def reset(self) -> None:
        self.diverged_at: int | None = None

    def update_step(self, row: dict[str, Any]) -> None:
        if row.get("diverged") and self.diverged_at is None:
            self.diverged_at = int(row.get("step") or 0)

    def compute(self) -> Verdict:
        if self.diverged_at is None:
            return Verdict(False, "loss, gradient and served logits finite", 0.0)
        return Verdict(True, f"the adapter diverged at step {self.diverged_at:,}: a non-finite loss, gradient or "
                       f"served logits (reset it, or lower its learning rate)", float(self.diverged_at))


@DETECTORS.register("risk-test", description=(
    "A sequential test (Podkopaev & Ramdas; Schirmer et al.): a lower confidence sequence on the running error "
    "above the clean error's upper bound plus a tolerance, with false alarms at most delta"))
class SequentialRiskTest(CollapseDetector):
    """The label-free risk-monitoring alarm (Podkopaev & Ramdas, ICLR 2022; Schirmer et al.,
    NeurIPS 2025): fires when a time-uniform lower bound on the running error of the served
    predictions exceeds an upper bound on the adapter's clean error plus `tolerance`.

    - The proxy flags a prediction whose temperature-scaled max-softmax is under the served feed's
      ATC threshold: on the calibration's clean images it flags exactly the clean error's share.
    - The source bound is Clopper-Pearson on the calibration's clean error (its `images`); the
      flag rate's lower bound is a restarted conjugate-mixture empirical-Bernstein confidence
      sequence (`sequential.Restarted`): one every `restart_every` images, so a late collapse is
      not averaged away by a long healthy stretch.
    - Precision correction (research/risk_monitoring.md 1.4): P(error) >= pi * P(flag), so with
      pi_L, a Clopper-Pearson lower bound on the flags' precision on the clean images
      (`FeedStats.flag_precision`), pi_L times the flag rate's lower bound is a lower bound on the
      running error. delta is split in three (source bound, sequence, precision). Guarantee: on a
      stream whose running error stays within `tolerance` of the clean error, the alarm fires with
      probability at most delta, however long it runs, provided the flags' precision on the stream
      is no lower than on the clean images (assumption A1, which only labels could check).
    - Without a precision (a calibration made before it was recorded) the test is the uncorrected
      one, at delta/2 + delta/2: its guarantee speaks of the flag rate, not of the error rate.
    Not computable without the served feed's calibration (its ATC threshold, clean accuracy and
    image count)."""

    name = "risk-test"
    _state_dict_all_req_keys = ("sequences", "observed", "flagged")

    def __init__(self, source_error: int | None = None, images: int | None = None, delta: float = 0.05,
                 tolerance: float = 0.05, restart_every: int = 512,
                 precision: tuple[int, int] | None = None) -> None:
        if not 0.0 < delta < 1.0 or not 0.0 <= tolerance < 1.0 or restart_every < 1:
            raise ValueError(f"the risk test needs 0 < delta < 1, 0 <= tolerance < 1 and restart_every >= 1, got "
                             f"delta={delta}, tolerance={tolerance}, restart_every={restart_every}")
        self.delta, self.tolerance, self.restart_every = delta, tolerance, restart_every
        corrected = precision is not None and precision[1] > 0
        self.share = delta / 3 if corrected else delta / 2  # each bound's part of the false-alarm budget
        self.precision_lower = clopper_pearson_lower(*precision, self.share) if corrected else None
        self.source_upper = None if images is None else clopper_pearson_upper(source_error, images, self.share)
        super().__init__()

    @classmethod
    def for_model(cls, setup: DetectorSetup) -> "SequentialRiskTest":
        stats = setup.context.served if setup.context is not None else None
        known = stats is not None and None not in (stats.accuracy, stats.images, stats.atc_mc_threshold)
        errors = round((1.0 - stats.accuracy / 100.0) * stats.images) if known else None
        if known and stats.flag_precision is None:
            logger.warning("risk-test: the served calibration records no precision of the error proxy (made before "
                           "it was recorded), so the test bounds the flag rate, not the error rate; make the "
                           "calibration again with `stream-monitor calibrate` for the corrected test")
        return cls(errors, stats.images if known else None, setup.risk_delta, setup.risk_tolerance,
                   setup.risk_restart_every, stats.flag_precision if known else None)

    def reset(self) -> None:
        self.sequences: Restarted | None = None  # started with the first served image
        self.observed = self.flagged = 0

    def update_step(self, row: dict[str, Any]) -> None:
        flagged, seen = row.get("proxy_flagged"), row.get("proxy_seen")
        if self.source_upper is None or flagged is None or not seen:
            return
        if self.sequences is None:
            self.sequences = Restarted(self.share, every=self.restart_every)
        self.sequences.update([1.0] * flagged + [0.0] * (seen - flagged))
        self.observed += seen
        self.flagged += flagged

    def bounds(self) -> RiskBounds | None:
        """The test's two bounds now (None while not computable)."""
        if self.source_upper is None or self.sequences is None:
            return None
        lower = self.sequences.lower * (self.precision_lower if self.precision_lower is not None else 1.0)
        return RiskBounds(lower, self.source_upper + self.tolerance, self.delta, self.precision_lower)

    def compute(self) -> Verdict:
        if self.source_upper is None:
            raise NotComputableError(f"{self.name} needs the served feed's calibration (ATC threshold, clean "
                                     f"accuracy and image count)")
        bounds = self.bounds()
        if bounds is None:
            raise NotComputableError(f"{self.name} has seen no served image yet")
        what = ("running error at least" if bounds.precision is not None else
                "flagged rate (no precision in the calibration) at least")
        precision = f", precision >= {bounds.precision:.2f}" if bounds.precision is not None else ""
        return Verdict(bounds.lower > bounds.upper,
                       f"{what} {100 * bounds.lower:.1f}% (lower bound{precision}) against the clean error's "
                       f"{100 * self.source_upper:.1f}% (upper bound) + {100 * self.tolerance:.0f} points; false-alarm "
                       f"budget delta {self.delta:g}", bounds.lower, bounds)

    def state_dict(self) -> dict[str, Any]:
        sequences = None if self.sequences is None else self.sequences.state_dict()
        return {"sequences": sequences, "observed": self.observed, "flagged": self.flagged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [key for key in self._state_dict_all_req_keys if key not in state]
        if missing:
            raise ValueError(f"The {self.name} detector's state lacks {', '.join(map(repr, missing))}")
        self.sequences = None
        if state["sequences"] is not None:
            self.sequences = Restarted(self.share, every=self.restart_every)
            self.sequences.load_state_dict(state["sequences"])
        self.observed, self.flagged = int(state["observed"]), int(state["flagged"])


@DETECTORS.register("entropy-ema", description="SAR's model-recovery signal: the mean entropy's EMA below a floor")
class EntropyCollapse(_StepEMA):
    """SAR's model-recovery signal (Niu et al., ICLR 2023, mr-eggplant/SAR): an EMA (0.9) of the
    mean entropy below 0.2 nats for 1,000 classes, here scaled to 0.2 / ln(1000) of ln K."""

    name, column, decay = "entropy-ema", "mean_entropy", 0.9

    def __init__(self, num_classes: int, warmup: int | None = None) -> None:
        self.threshold = 0.2 / math.log(1000) * math.log(num_classes)
        super().__init__(warmup)

    @classmethod
    def for_model(cls, setup: DetectorSetup) -> "EntropyCollapse":
        return cls(setup.num_classes)

    def judge(self, ema: float) -> Verdict:
        return Verdict(ema < self.threshold, f"entropy EMA {ema:.3f} nats (threshold {self.threshold:.3f})", ema)


@DETECTORS.register("top-class-share", description="Predictions piling onto one class")
class PredictionConcentration(_StepEMA):
    """Predictions piling onto one class: EMA (0.95) of the batch's top-class share above `share`
    (the degenerate solution of entropy minimisation; Press et al., RDumb, NeurIPS 2023), and,
    where the frozen model scores batches (`frozen_top_class_share`), more than `excess` above the
    same EMA of that model's share: noise can pile the frozen model's own predictions onto one
    class, and a model that does not adapt never collapses by definition (`stream-monitor eval
    --detectors` measures the false alarms of either rule on a run)."""

    name, column, decay = "top-class-share", "top_class_share", 0.95
    _state_dict_all_req_keys = _StepEMA._state_dict_all_req_keys + ("source_ema", "source_step", "on")

    def __init__(self, share: float = 0.5, excess: float = 0.2, hysteresis: float = 0.05, warmup: int | None = None) -> None:
        self.share, self.excess, self.hysteresis = share, excess, hysteresis
        super().__init__(warmup)

    def reset(self) -> None:
        super().reset()
        self.source_ema: float | None = None
        self.source_step = 0
        self.on = False

    def update_step(self, row: dict[str, Any]) -> None:
        super().update_step(row)
        value, step = row.get("frozen_top_class_share"), row.get("step") or 0
        if value is not None and math.isfinite(value):
            # the source model scores one batch in `evaluator.frozen_every`: decay by the steps since
            # its last one, so both EMAs forget at the same rate per step
            if self.source_ema is None:
                self.source_ema = value
            else:
                keep = self.decay ** max(1, step - self.source_step)
                self.source_ema = keep * self.source_ema + (1 - keep) * value
            self.source_step = step
        if self.ema is not None and self.count >= self.warmup:
            # a warning clears only `hysteresis` below the thresholds that raised it: a collapsed
            # model's share hovers around them, and each clear and re-fire is a new warning
            slack = self.hysteresis if self.on else 0.0
            self.on = self.ema > self.share - slack and (
                self.source_ema is None or self.ema - self.source_ema > self.excess - slack)

    def judge(self, ema: float) -> Verdict:
        evidence = f"top class takes {100 * ema:.0f}% of predictions (threshold {100 * self.share:.0f}%"
        if self.source_ema is not None:
            evidence += f"; the source model's {100 * self.source_ema:.0f}% + {100 * self.excess:.0f}"
        return Verdict(self.on, evidence + ")", ema)


@DETECTORS.register("marginal-entropy", description="Predictions spreading over ever fewer classes")
class MarginalEntropyCollapse(_StepEMA):
    """Predictions spreading over ever fewer classes: EMA (0.95) of the entropy of the batch's mean
    prediction, normalised by its largest possible value ln min(K, batch), below `fraction` (0.5:
    fewer than sqrt(min(K, batch)) effective classes). The marginal entropy that entropy
    minimisation drives to zero when it degenerates; SHOT and its successors maximise it to
    prevent exactly that (Liang et al., ICML 2020)."""

    name, column, decay = "marginal-entropy", "marginal_entropy", 0.95

    def __init__(self, num_classes: int, fraction: float = 0.5, warmup: int | None = None) -> None:
        self.num_classes, self.fraction = num_classes, fraction
        super().__init__(warmup)

    @classmethod
    def for_model(cls, setup: DetectorSetup) -> "MarginalEntropyCollapse":
        return cls(setup.num_classes)

    def update_step(self, row: dict[str, Any]) -> None:
        value, images = row.get(self.column), row.get("images") or 0
        ceiling = math.log(min(self.num_classes, images)) if images > 1 else 0.0
        if value is not None and ceiling > 0:  # a one-image batch says nothing about the marginal
            super().update_step({self.column: value / ceiling})

    def judge(self, ema: float) -> Verdict:
        return Verdict(ema < self.fraction, f"marginal entropy at {100 * ema:.0f}% of its maximum "
                       f"(threshold {100 * self.fraction:.0f}%)", ema)


@DETECTORS.register("online-below-source", description="Estimated online accuracy below estimated source accuracy")
class EstimateBelowSource(CollapseDetector):
    """The estimated online accuracy below the estimated source accuracy by `margin` points on
    `patience` consecutive probes: label-free form of the collapse definition (DESIGN.md 6). The gap
    is the probe row's `est_online_gap` (estimation.pipeline: read through one calibration where the
    window allows), which the live loop and `eval`'s replay both derive from the window's estimates."""

    name = "online-below-source"
    _state_dict_all_req_keys = ("below", "gap")

    def __init__(self, margin: float = 5.0, patience: int = 2) -> None:
        self.margin, self.patience = margin, patience
        super().__init__()

    def reset(self) -> None:
        self.below = 0
        self.gap: float | None = None

    def update_probe(self, row: dict[str, Any]) -> None:
        gap = row.get("est_online_gap")
        if gap is None:
            return
        self.gap = -gap
        self.below = self.below + 1 if self.gap > self.margin else 0

    def compute(self) -> Verdict:
        if self.gap is None:
            raise NotComputableError(f"{self.name} needs a source and an online estimate")
        return Verdict(self.below >= self.patience, f"estimated online accuracy {self.gap:.1f} points below "
                       f"the estimated source accuracy for {self.below} probes", self.gap)


@DETECTORS.register("aetta-drop", description="AETTA's recovery rule: its accuracy estimate low or dropping")
class AETTAReset(CollapseDetector):
    """AETTA's recovery rule (Lee et al., CVPR 2024, reset_function "aetta"): its accuracy estimate
    below `floor` %, or the mean of the last `span` estimates `drop` points under the mean of the
    `span` before; read from the step rows' `aetta_acc` (only with estimation.aetta_every > 0). The
    defaults are the paper's reset rule; the default warning (`for_model`) asks for more."""

    name = "aetta-drop"
    _state_dict_all_req_keys = ("history",)

    def __init__(self, floor: float = 20.0, drop: float = 2.0, span: int = 5) -> None:
        self.floor, self.drop, self.span = floor, drop, span
        super().__init__()

    def reset(self) -> None:
        self.history: list[float] = []

    def update_step(self, row: dict[str, Any]) -> None:
        value = row.get("aetta_acc")
        if value is not None and math.isfinite(value):
            self.history = (self.history + [float(value)])[-2 * self.span:]

    @classmethod
    def for_model(cls, setup: DetectorSetup) -> "AETTAReset":
        # AETTA's own drop rule (2 points over 5 estimates) is a cheap reset trigger, but as a warning
        # it fires on runs that never collapse; the warning asks for a 10-point drop over 10 estimates
        # (benchmarks/estimator_table.py --detectors aetta-drop replays both on recorded runs)
        return cls(drop=10.0, span=10)

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


@DETECTORS.register("flip-rate", description="The probe's flips rising far above their usual level")
class FlipRateRise(CollapseDetector):
    """The probe's flips rising far above their usual level: at each snapshot, the share of the
    reference set whose prediction changed since the cycle start, against the median share at the
    same cycle step over the last `history` cycles; fires when it is `factor` times that median
    and at least `rise` higher, on `patience` consecutive probes. A collapsing model rewrites its
    predictions on the reference set wholesale (most of them onto one class), long before a stable
    one does; comparing like cycle steps keeps the flips' natural growth within a cycle (Entropy
    Enigma, Press et al., ICML 2024) from counting as a rise."""

    name = "flip-rate"
    _state_dict_all_req_keys = ("shares", "latest", "above")

    def __init__(self, factor: float = 2.0, rise: float = 0.1, history: int = 5, patience: int = 2) -> None:
        self.factor, self.rise, self.history, self.patience = factor, rise, history, patience
        super().__init__()

    def reset(self) -> None:
        self.shares: dict[str, list[list[float]]] = {}  # cycle step -> [[cycle, share], ...], JSON-friendly keys
        self.latest: list | None = None  # [share, baseline] of the last probe
        self.above = 0

    def update_probe(self, row: dict[str, Any]) -> None:
        flips, size, step = row.get("flips"), row.get("probe_size"), row.get("cycle_step")
        if flips is None or not size or step is None:
            return
        share = flips / size
        seen = self.shares.setdefault(str(step), [])
        earlier = [s for cycle, s in seen if cycle != row.get("cycle")][-self.history:]
        baseline = statistics.median(earlier) if len(earlier) >= 2 else None
        self.latest = [share, baseline]
        high = baseline is not None and share > max(self.factor * baseline, baseline + self.rise)
        self.above = self.above + 1 if high else 0
        self.shares[str(step)] = (seen + [[row.get("cycle"), share]])[-(self.history + 1):]

    def compute(self) -> Verdict:
        if self.latest is None or self.latest[1] is None:
            raise NotComputableError(f"{self.name} needs two earlier cycles' flips at the same cycle step")
        share, baseline = self.latest
        return Verdict(self.above >= self.patience, f"{100 * share:.0f}% of the reference set flipped, against a "
                       f"median of {100 * baseline:.0f}% at this cycle step before ({self.above} probes above)",
                       share - baseline)


@DETECTORS.register("chance-agreement", description=(
    "Served predictions agreeing with the frozen model's no more than chance, and piling onto more of one class "
    "than its: no warm-up"))
class ChanceAgreement(CollapseDetector):
    """A collapsed model's predictions no longer depend on the image: on the batches the frozen
    model scores, they agree with the frozen model's no more than two predictors that ignore the
    image would, and they pile onto one class more than the frozen model's do.

    Two predictors that ignore the image, with class shares p and q, agree on a share sum_c p_c q_c
    of a batch, at most min(max p, max q) (the chance ceiling, from the step rows' top-class shares;
    the full histograms are not kept). A scored batch looks collapsed when its agreement
    1 - `frozen_flip_rate` is at most that ceiling and the served top-class share is above the
    frozen model's: the second condition keeps a healthy adapter quiet where the frozen model is
    itself near chance (harsh noise piles its predictions onto one class, and anything agrees with
    it only by chance), and a model that does not adapt agrees with itself on every image. The
    warning fires after `patience` consecutive collapsed-looking scored batches and clears after as
    many others: one batch of 64 images can cross the ceiling by chance.

    No warm-up and no learned threshold: the frozen model is the reference from its first scored
    batch on, so a collapse within the first steps (Tent at a large learning rate) is seen as soon
    as the frozen model has scored `patience` batches of it (`evaluator.frozen_every` sets how
    often). The label-flip view of Entropy Enigma (Press et al., ICML 2024) applied per batch, with
    Cohen's chance agreement (kappa = 0) as the line instead of a fitted one.
    """

    name = "chance-agreement"
    _state_dict_all_req_keys = ("latest", "streak", "on")

    def __init__(self, patience: int = 2) -> None:
        if patience < 1:
            raise ValueError(f"the chance-agreement detector needs patience >= 1 scored batches, got {patience}")
        self.patience = patience
        super().__init__()

    def reset(self) -> None:
        self.latest: list[float] | None = None  # [agreement, ceiling, served share, frozen share]
        self.streak = 0  # consecutive scored batches that looked collapsed (> 0) or did not (< 0)
        self.on = False

    def update_step(self, row: dict[str, Any]) -> None:
        values = [row.get(k) for k in ("frozen_flip_rate", "top_class_share", "frozen_top_class_share")]
        if any(v is None or not math.isfinite(v) for v in values):
            return  # a batch the frozen model did not score
        flips, served, frozen = (float(v) for v in values)
        agreement, ceiling = 1.0 - flips, min(served, frozen)
        self.latest = [agreement, ceiling, served, frozen]
        collapsed = agreement <= ceiling and served > frozen
        self.streak = max(self.streak, 0) + 1 if collapsed else min(self.streak, 0) - 1
        if self.streak >= self.patience:
            self.on = True
        elif -self.streak >= self.patience:
            self.on = False

    def compute(self) -> Verdict:
        if self.latest is None:
            raise NotComputableError(f"{self.name} needs a batch the frozen model scored (evaluator.frozen_every > 0)")
        agreement, ceiling, served, frozen = self.latest
        return Verdict(self.on, f"served predictions agree with the frozen model's on {100 * agreement:.0f}% of the "
                       f"batch, chance at most {100 * ceiling:.0f}%; top class {100 * served:.0f}% of them against the "
                       f"frozen model's {100 * frozen:.0f}% ({abs(self.streak)} scored batches in a row "
                       f"{'looked collapsed' if self.streak > 0 else 'did not look collapsed'})", agreement - ceiling)


@DETECTORS.register("asr", description=(
    "ASR's reset trigger (Lim et al., ICLR 2026): the marginal entropy below a baseline that rises toward it "
    "more slowly the more served predictions differ from the frozen model's"))
class ASRTrigger(CollapseDetector):
    """ASR's collapse-risk trigger (Lim, Hwang, Lee, "When and Where to Reset Matters for Long-Term
    Test-Time Adaptation", ICLR 2026; YonseiML/asr, `methods/base.py`): fires on a step whose
    marginal entropy H_t (the step rows' `marginal_entropy`) is under a baseline B. B starts at
    log(K·a0) and, on each step that does not fire, moves toward H_t with momentum
    m_t = m0·f_t + 1 − m0, where f_t is the share of the batch whose served prediction differs from
    the frozen model's: the more the adapter has moved away from the source model, the slower B
    follows, so a falling marginal entropy reaches it sooner.

    - f_t: the frozen model scores one batch in `evaluator.frozen_every` (`frozen_flip_rate`); the
      steps between use the latest known f_t, and before the first scored batch (or after a
      reset) f_t is taken as 0, since an adapter that has just left the source model has flipped
      nothing: B then follows H_t at its fastest, m = 1 − m0.
    - No warm-up, as in the paper: step 1 is compared with log(K·a0) (log(K/2)). The paper resets
      on it, harmless on a model that has not moved; as a warning it fires where the source model's
      own marginal entropy is under log(K/2).
    - B is not updated on a step that fires (the paper's rule), and the warning clears on the next
      step whose H_t is back at or above that B: the verdict is the last step's, as a dashboard
      reads it, not latched. `reset` (after the loop's `estimation.reset_on_warning` reset) puts B
      back to log(K·a0), as ASR does after each reset.
    - The paper's H_t is the entropy of the softmax of the batch-mean output, computed every step;
      here it is the entropy of the batch-mean softmax, with f_t from the scored batches only.
    """

    name = "asr"
    _state_dict_all_req_keys = ("baseline", "latest", "flip_rate")
    #: the paper's constants (its code's cfg.ASR.M0 and cfg.ASR.A0)
    M0, A0 = 0.15, 0.5

    def __init__(self, num_classes: int, m0: float = M0, a0: float = A0) -> None:
        if num_classes < 2 or not 0.0 <= m0 <= 1.0 or a0 <= 0.0:
            raise ValueError(f"the asr trigger needs num_classes >= 2, 0 <= m0 <= 1 and a0 > 0, got "
                             f"num_classes={num_classes}, m0={m0}, a0={a0}")
        self.m0, self.a0 = m0, a0
        self.start = math.log(num_classes * a0)
        super().__init__()

    @classmethod
    def for_model(cls, setup: DetectorSetup) -> "ASRTrigger":
        return cls(setup.num_classes)

    def reset(self) -> None:
        self.baseline: float | None = None  # None: at its start, log(K·a0) (configuration, not state)
        self.latest: list[float] | None = None  # [H_t, the B it was judged against] of the last step
        self.flip_rate: float | None = None  # the latest f_t; None: no scored batch since the reset

    def update_step(self, row: dict[str, Any]) -> None:
        flips = row.get("frozen_flip_rate")
        if flips is not None and math.isfinite(flips):
            self.flip_rate = float(flips)
        entropy = row.get("marginal_entropy")
        if entropy is None or not math.isfinite(entropy):
            return
        baseline = self.start if self.baseline is None else self.baseline
        self.latest = [float(entropy), baseline]
        if entropy >= baseline:
            momentum = self.m0 * (self.flip_rate or 0.0) + 1.0 - self.m0
            self.baseline = momentum * baseline + (1.0 - momentum) * entropy
        else:
            self.baseline = baseline

    def compute(self) -> Verdict:
        if self.latest is None:
            raise NotComputableError(f"{self.name} needs a step's marginal entropy")
        entropy, baseline = self.latest
        flips = "unknown, taken as 0" if self.flip_rate is None else f"{100 * self.flip_rate:.0f}%"
        relation = "under" if entropy < baseline else "at or above"
        return Verdict(entropy < baseline, f"marginal entropy {entropy:.3f} nats {relation} its baseline "
                       f"{baseline:.3f} (flip rate against the frozen model {flips})", entropy - baseline)


def build_detectors(names: Sequence[str], setup: DetectorSetup) -> list[CollapseDetector]:
    """The named detectors (DETECTORS) for a run (`setup`); unknown names raise UnknownNameError
    listing the valid ones."""
    return [DETECTORS.get(name).for_model(setup) for name in names]


def parse_detectors(text: str) -> tuple[str, ...]:
    """`estimation.detectors`: comma-separated names, each checked against DETECTORS."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        DETECTORS.get(name)
    return names


def transitions(detectors: Sequence[CollapseDetector], active: list[str]) -> Iterator[tuple[str, CollapseDetector, Verdict]]:
    """("warning" | "clear", detector, verdict) for each detector whose verdict changed against
    `active` (the names of the warnings on), which is updated as each one is yielded; detectors
    still warming up are skipped."""
    for detector in detectors:
        try:
            verdict = detector.compute()
        except NotComputableError:
            continue
        if verdict.firing and detector.name not in active:
            active.append(detector.name)
            yield "warning", detector, verdict
        elif not verdict.firing and detector.name in active:
            active.remove(detector.name)
            yield "clear", detector, verdict
