"""How a probe window becomes two numbers: the estimated source and online accuracy.

1. **Feeds.** Every step, the run loop hands the pipeline the served softmax outputs and, on the
   batches the evaluator scores, the frozen model's (`observe`); rows a diverged model made
   non-finite are dropped. A Duos sidekick's outputs of the same images and AETTA's dropout
   statistics come with them where the run has them.
2. **Readings.** Every registered window estimator (`ESTIMATORS`) runs on each feed it declares,
   with that feed's calibrated statistics from the run's `EstimationContext`. At a probe step the
   pipeline reads each one (`readings`): a `Reading` of the feed's accuracy, None where it is not
   computable. When the probe's flips arrive, Entropy Enigma's f turns them into two more readings
   of the source accuracy (`flips_readings`).
3. **Anchored estimate** (`derive`). The online accuracy as the source headline plus the accuracy
   gap that the nuclear norms' served-minus-frozen score gap maps to:

       online = source headline + slope * (NN(served) - NN(frozen)) + intercept,

   (slope, intercept) fitted on the full-range meta-set's windows of every adapter it holds and
   on the long held-out streams of the shipped adapter calibrations (the frozen file's
   `anchor_fit`; an older file: the frozen nuclear-norm line's slope, no intercept). A straight line of accuracy against one feed's score is wrong by what the stream
   does to that score; the gap of two feeds on the same images cancels most of it. This
   project's combination, not a published estimator (docs/headline-rule.md measures it on
   adapters the fit never saw).
4. **Headlines** (`derive`). Per target, the headline rule learned on the full-range meta-set
   (`headline.HeadlineRule`, in the calibration file) picks the estimator by its held-out error
   in the window's region (inside or outside the calibration's support) and gives the 90%
   interval; outside the support the window is flagged and only estimators that need no
   meta-set map may headline. A target without a rule (a calibration with no meta-set, like the
   paper's ResNet-50 f) takes the first estimator of a fixed preference (`headline_order`) with a
   value, and no interval: the source target prefers the frozen feed's Sentinel,
   its nuclear norm, then the flips; the online target prefers the anchored estimate, unless the
   served feed was calibrated on the adapter itself (`EstimationContext.adapter_calibrated`):
   then the served feed's own Sentinel and nuclear norm lead, since their maps know what
   adaptation does to the outputs and the frozen model's line does not. Average confidence, the
   one estimator always there, comes last.
5. **Gap.** Online minus source, what `online-below-source` reads: the anchored estimate's gap
   where there is one (both feeds through one line), else the online headline minus the frozen
   feed's reading of the same estimator where both go through one calibration (`source_paired`:
   the bias they share cancels), else the difference of the two headlines.
6. **No adaptation** (the `source` adapter, `EstimationContext.served_is_frozen`): the served
   model is the frozen one, so the online headline is the source headline (its interval and
   support flag too) and the gap is zero.

A live run and `stream-monitor eval`'s replay both end in `derive`; the replay starts from the
recorded readings (`reread` makes the calibrated ones again when eval is given another
calibration). The orders were chosen on the embedded CCC streams; `stream-monitor eval` and
benchmarks/estimator_table.py measure them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np

from .aetta import AETTA
from .base import ESTIMATORS
from .context import EstimationContext
from .readings import Feed, Reading, Target, find, value_of
from .window import WindowEstimator, scale

__all__ = ["ANCHORED", "ADAPTER_CALIBRATED", "DERIVED", "HEADLINE_ORDER", "META_FITTED", "EstimationPipeline",
           "WindowEstimate", "derive", "headline_order"]

#: The anchored online estimate's name (step 3 above).
ANCHORED = "anchored-nuclear-norm"
#: The flips estimators' names: the first-images reference set and the spread one.
WEIGHTED_FLIPS, SPREAD_FLIPS = "weighted-flips", "spread-flips"
#: The estimators that are not window estimators (not in ESTIMATORS): name -> (feed, target, description).
DERIVED: dict[str, tuple[Feed, Target, str]] = {
    WEIGHTED_FLIPS: (Feed.SERVED, Target.SOURCE, "Entropy Enigma (Press et al., ICML 2024): the probe's weighted "
                     "flips on the cycle's first images through a calibrated f"),
    SPREAD_FLIPS: (Feed.SERVED, Target.SOURCE, "the same on the spread reference set (uniform over the cycle so far)"),
    ANCHORED: (Feed.SERVED, Target.ONLINE, "the source headline plus the nuclear norm's served-minus-frozen gap "
               "through the frozen model's line (this project's; see estimation/pipeline.py)"),
}
#: target -> estimator names, most accurate first.
HEADLINE_ORDER: dict[Target, tuple[str, ...]] = {
    Target.SOURCE: ("sentinel", "nuclear-norm", SPREAD_FLIPS, WEIGHTED_FLIPS),
    Target.ONLINE: (ANCHORED, "nuclear-norm", "duo-agreement", "aetta", "sentinel", "average-confidence"),
}
#: The online order when the served feed was calibrated on the adapter itself.
ADAPTER_CALIBRATED: tuple[str, ...] = ("sentinel", "nuclear-norm", ANCHORED, "duo-agreement", "aetta",
                                       "average-confidence")
#: Served estimators whose reading goes through the served feed's own calibration: with an adapter
#: calibration their frozen-feed reading uses another map, so the two are not a pair.
SERVED_CALIBRATED = ("nuclear-norm", "sentinel")


def headline_order(target: Target, adapter_calibrated: bool = False) -> tuple[str, ...]:
    """`target`'s estimator names, most accurate first."""
    return ADAPTER_CALIBRATED if adapter_calibrated and target == Target.ONLINE else HEADLINE_ORDER[Target(target)]


#: Estimators whose value goes through a map fitted on meta-set windows (a line, a regressor, f):
#: outside the calibration's support they may not headline (`headline.HeadlineRule`).
META_FITTED = frozenset({"sentinel", "nuclear-norm", ANCHORED, WEIGHTED_FLIPS, SPREAD_FLIPS})


@dataclass(frozen=True)
class WindowEstimate:
    """A window's readings (the anchored one included), its two headlines (each with its interval
    where a learned rule gave one), whether each target's window lies outside its calibration's
    support (None: unknown), and the gap between the headlines."""

    readings: tuple[Reading, ...]
    source: Reading | None
    online: Reading | None
    source_paired: float | None
    gap: float | None
    source_out_of_support: bool | None = None
    online_out_of_support: bool | None = None

    def columns(self) -> dict[str, Any]:
        """The probe row's estimate columns (metrics.schema.PROBE_SCHEMA)."""
        source, online = self.source, self.online
        (source_lo, source_hi), (online_lo, online_hi) = ((r.interval if r is not None and r.interval else (None, None))
                                                          for r in (source, online))
        return {"est_source_acc": source and source.value, "est_source_method": source and source.estimator,
                "est_extrapolated": source and source.extrapolated,
                "est_online_acc": online and online.value, "est_online_method": online and online.estimator,
                "est_source_paired": self.source_paired, "est_online_gap": self.gap,
                "est_source_lo": source_lo, "est_source_hi": source_hi, "est_online_lo": online_lo,
                "est_online_hi": online_hi, "est_source_out_of_support": self.source_out_of_support,
                "est_online_out_of_support": self.online_out_of_support}


def derive(readings: Iterable[Reading], context: EstimationContext) -> WindowEstimate:
    """The anchored estimate, the headlines and the gap of one window (steps 3-5 above); pure."""
    readings = [r for r in readings if r.estimator != ANCHORED]
    source, source_out = _headline(readings, Target.SOURCE, context)
    anchored = _anchored(readings, source, context.anchor_line)
    readings.append(anchored)
    if context.served_is_frozen:
        online = None if source is None else replace(source, feed=Feed.SERVED, target=Target.ONLINE)
        return WindowEstimate(tuple(readings), source, online, source and source.value,
                              None if source is None else 0.0, source_out, source_out)
    online, online_out = _headline(readings, Target.ONLINE, context)
    paired = None
    if online is not None and not (context.adapter_calibrated and online.estimator in SERVED_CALIBRATED):
        paired = value_of(readings, online.estimator, Feed.FROZEN)
    gap = None
    if anchored.value is not None and source is not None:
        gap = anchored.value - source.value
    elif online is not None and (paired is not None or source is not None):
        gap = online.value - (paired if paired is not None else source.value)
    return WindowEstimate(tuple(readings), source, online, paired, gap, source_out, online_out)


def _headline(readings: Sequence[Reading], target: Target,
              context: EstimationContext) -> tuple[Reading | None, bool | None]:
    """The learned rule's pick with its interval and the support flag, else the fixed order's."""
    rule = context.rules.get(target)
    if rule is not None:
        picked, outside = rule.pick(readings)
        if picked is not None:
            return picked, outside
        # none of the rule's estimators has a value: the fixed order, still without a meta-set map outside
        return _pick(readings, target, context.adapter_calibrated, META_FITTED if outside else ()), outside
    return _pick(readings, target, context.adapter_calibrated), None


def _pick(readings: Sequence[Reading], target: Target, adapter_calibrated: bool,
          exclude: Iterable[str] = ()) -> Reading | None:
    exclude = set(exclude)
    found = {r.estimator: r for r in readings if r.target == target and r.value is not None
             and r.estimator not in exclude}
    return next((found[name] for name in headline_order(target, adapter_calibrated) if name in found), None)


def _anchored(readings: Sequence[Reading], source: Reading | None, line: tuple[float, float] | None) -> Reading:
    served, frozen = (find(readings, "nuclear-norm", feed) for feed in (Feed.SERVED, Feed.FROZEN))
    value = None
    if line is not None and source is not None and served is not None and frozen is not None \
            and served.score is not None and frozen.score is not None:
        value = float(np.clip(source.value + line[0] * (served.score - frozen.score) + line[1], 0.0, 100.0))
    return Reading(ANCHORED, Feed.SERVED, Target.ONLINE, value)


class EstimationPipeline:
    """Every registered window estimator on each of its feeds, for one run (steps 1-2 above).

    Args:
        context: the run's calibrated statistics and f.
        num_classes: of the model.
        sidekick: the Duos sidekick's name (estimation.duo_model); None: the duo estimators are off.
        dropout: AETTA's dropout statistics arrive with the steps (estimation.aetta_every > 0).
    """

    def __init__(self, context: EstimationContext, num_classes: int, sidekick: str | None = None,
                 dropout: bool = False) -> None:
        self.context = context
        available = {None, "sidekick" if sidekick else None, "dropout" if dropout else None}
        self.estimators: list[WindowEstimator] = [
            cls.create(context.stats(feed), feed, num_classes=num_classes, sidekick=sidekick)
            for feed in Feed for cls in (ESTIMATORS.get(name) for name in ESTIMATORS.names())
            if feed in cls.feeds and cls.requires in available]
        self._by_key = {e.key: e for e in self.estimators}
        self.dropout = next((e for e in self.estimators if isinstance(e, AETTA)), None)

    def observe(self, feed: Feed, probs: np.ndarray | None, sidekick_log_probs: np.ndarray | None = None) -> None:
        """One step's softmax outputs of `feed` (None where the feed has none this step), with the
        sidekick's log-softmax of the same images where the run has a sidekick."""
        if probs is None:
            return
        finite = np.isfinite(probs).all(1)  # a diverged model's rows say nothing about accuracy
        probs = probs[finite]
        sidekick = None if sidekick_log_probs is None else sidekick_log_probs[finite]
        for estimator in self.estimators:
            if estimator.feed == feed:
                estimator.update(probs)
                if sidekick is not None:
                    estimator.update_sidekick(probs, sidekick)

    def observe_dropout(self, agreement: float, marginal_entropy: float) -> float | None:
        """AETTA's dropout statistics of one step; its estimate for the step (None: AETTA is off)."""
        return None if self.dropout is None else self.dropout.update_dropout(agreement, marginal_entropy)

    def flag_errors(self, probs: np.ndarray | None) -> tuple[int, int] | None:
        """(flagged, seen): how many of one step's finite served outputs the label-free error proxy
        flags, their temperature-scaled max-softmax under the served feed's ATC threshold (the
        share of the clean domain it flags is the adapter's clean error: Garg et al.'s matching);
        None without the served feed's threshold or outputs."""
        stats = self.context.served
        if probs is None or stats is None or stats.atc_mc_threshold is None:
            return None
        probs = probs[np.isfinite(probs).all(1)]
        confidence = scale(probs, stats.temperature).max(1)
        return int((confidence < stats.atc_mc_threshold).sum()), len(probs)

    def reset(self) -> None:
        """A new probe window."""
        for estimator in self.estimators:
            estimator.reset()

    def readings(self) -> list[Reading]:
        """Every estimator's reading of the window so far."""
        return [estimator.reading() for estimator in self.estimators]

    def flips_readings(self, cycle_step: int, weighted_flips: float | None, probe_size: int | None,
                       spread_weighted_flips: float | None = None, spread_size: int | None = None) -> list[Reading]:
        """Entropy Enigma's f applied to a snapshot's weighted flips, for each reference set whose f
        the context has at this cycle step."""
        out = []
        for name, fits, flips, size in ((SPREAD_FLIPS, self.context.spread_flips, spread_weighted_flips, spread_size),
                                        (WEIGHTED_FLIPS, self.context.flips, weighted_flips, probe_size)):
            f = fits.get(cycle_step)
            if f is not None and flips is not None:
                value, extrapolated = f(flips, size)
                out.append(Reading(name, Feed.SERVED, Target.SOURCE, value, extrapolated=extrapolated))
        return out

    def reread(self, readings: Iterable[Reading]) -> list[Reading]:
        """Recorded window readings made again with this pipeline's calibration where they kept
        what that takes (a raw score, features); the others as recorded."""
        return [self._by_key[f"{r.feed}/{r.estimator}"].reread(r) if f"{r.feed}/{r.estimator}" in self._by_key else r
                for r in readings]

    def state_dict(self) -> dict[str, dict]:
        return {e.key: e.state_dict() for e in self.estimators}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        for estimator in self.estimators:
            if estimator.key not in state:
                raise KeyError(f"the checkpoint has no state of the estimator {estimator.key}; it was written with "
                               f"other estimation settings: resume with the run's own config")
            estimator.load_state_dict(state[estimator.key])
