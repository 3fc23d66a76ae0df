"""The driver's run loop, written against small ports (`ports.py`) so it runs in-process or on Ray.

Ray's patterns (style_anchors.md 2), applied:
- the driver is the only submitter to the adapter and the probe, so each runs its calls in the
  order the driver chose: a snapshot is always "after step k";
- adapter steps are kept in a bounded in-flight window (`runtime.max_in_flight`), and batches
  are pulled from the source actors only when there is room, so backpressure reaches the source;
- batch and snapshot handles go from source to adapter and from adapter to probe without a
  `get` in the driver; the driver only fetches the small step summaries, truths and flip counts.

Every decision (probe schedule, cycles, checkpoints) is a function of the step count, and every
row is emitted in step order, so a run resumed from a checkpoint writes exactly the rows an
uninterrupted run writes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..config import RunConfig
from ..estimation.detectors import (FUSED, CollapseDetector, DetectorSetup, RiskBounds, SequentialRiskTest,
                                    build_detectors, parse_detectors, transitions)
from ..estimation.pipeline import EstimationPipeline, WindowEstimate, derive
from ..estimation.readings import Feed, Reading
from ..metrics.schema import EVENT_SCHEMA, PROBE_SCHEMA, STEP_SCHEMA, empty_row
from ..schedule import ProbeSchedule
from .messages import ProbeResult, StepSummary, Truth
from .observer import RunObserver, notify_health
from .ports import Workers


logger = logging.getLogger(__name__)
SLOW_AFTER_S = 30.0  # an adapter step result this late marks the adapter "slow" on the dashboard


class WorkerFailed(RuntimeError):
    """A worker raised or died; the run directory stays resumable from its last checkpoint."""


@dataclass
class _CycleWindow:
    """Label-free and ground-truth sums over the current probe cycle."""

    start: int = 0            # stream position of the cycle start
    images: int = 0
    labelled: int = 0         # images whose served prediction was scored against a label
    correct: int = 0
    frozen_correct: int = 0
    frozen_seen: int = 0


@dataclass
class LoopState:
    """Everything the driver needs to continue exactly; saved in every checkpoint."""

    step: int = 0             # adapter steps whose results were processed
    position: int = 0         # stream position reached
    cycle: int = 0
    cycle_start: int = 0      # step at which the current cycle began
    reference_fed: int = 0    # images sent to the probe's reference set this cycle
    window: _CycleWindow = field(default_factory=_CycleWindow)
    active_warnings: list[str] = field(default_factory=list)
    detectors: dict[str, dict] = field(default_factory=dict)
    estimators: dict[str, dict] = field(default_factory=dict)
    resets: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["window"] = dict(vars(self.window))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoopState":
        data = dict(data)
        data["window"] = _CycleWindow(**data["window"])
        return cls(**data)


@dataclass
class _PendingStep:
    step: int                 # steps done after it
    summary: Any
    truth: Any
    start: int
    stop: int
    sidekick: Any = None      # the Duos sidekick's log-softmax of the batch (estimation.duo_model)


@dataclass
class _PendingProbe:
    step: int
    result: Any  # the probe's flips (a handle), None at a snapshot that counts none (probe.flips_every)
    row: dict[str, Any] | None = None  # the window columns, filled when step `step` is processed
    readings: list[Reading] = field(default_factory=list)  # the window estimators' readings at that step


class RunLoop:
    """Runs [state.position, stop) of the stream through adapter and probe; reports rows.

    Args:
        config: the resolved run config.
        workers: the port to the started workers (`ports.Executor`), the stream workers' names
            (used round-robin) and what the workers described (classes, the adapter's reset period).
        observers: sinks of rows (Parquet, dashboard, log lines).
        estimation: every label-free estimator of the run, with its calibration.
        stop: stream position to end at.
        checkpoint: called with (state, adapter_state, probe_state) at every checkpoint, after
            the observers rolled their files.
        state: where to continue from (a checkpoint), or a fresh start.
        clock: wall-clock seconds (tests pass their own).
    """

    def __init__(self, config: RunConfig, workers: Workers, observers: Sequence[RunObserver],
                 estimation: EstimationPipeline, stop: int,
                 checkpoint: Callable[[LoopState, Any, Any], None] | None = None, state: LoopState | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.ex, self.observers = config, workers.executor, list(observers)
        self.stop, self.sources = stop, list(workers.source_names)
        self.stream_end = workers.stream_end
        self.estimation, self.checkpoint_fn, self.clock = estimation, checkpoint, clock
        self.state = state or LoopState(position=config.runtime.start, window=_CycleWindow(start=config.runtime.start))
        setup = DetectorSetup.of(config, workers.description.stream.num_classes, estimation.context)
        self.detectors: list[CollapseDetector] = build_detectors(parse_detectors(config.estimation.detectors), setup)
        self.warning_names = parse_detectors(config.estimation.warning)
        if self.detectors and not {d.name for d in self.detectors} & set(self.warning_names):
            logger.warning("none of the fused warning's detectors (estimation.warning: %s) is among those the run "
                           "watches (estimation.detectors): it gives advisories only, never a collapse warning",
                           ", ".join(self.warning_names) or "none")
        for detector in self.detectors:
            if detector.name in self.state.detectors:
                detector.load_state_dict(self.state.detectors[detector.name])
        if self.state.estimators:
            self.estimation.load_state_dict(self.state.estimators)
        self.sidekick_on = workers.description.sidekick is not None
        self.reset_every = workers.description.reset_every or config.adapter.reset_every
        self.schedule = ProbeSchedule.of(config, self.reset_every)
        self.batch_size = config.source.batch_size
        self._batches: deque[tuple[Any, Any, int, int]] = deque()  # rendered, not yet submitted
        self._chunks: deque[list[Any]] = deque()
        self._next_chunk = self.state.position
        self._submitted = self.state.step
        self._steps: deque[_PendingStep] = deque()
        self._probes: deque[_PendingProbe] = deque()
        self._source_turn = 0
        self.stop_requested = False
        self.resumed = state is not None
        self._checkpointed_at = self.state.step  # a fresh start or a resume needs no checkpoint yet
        self._last_result, self._slow = clock(), False
        self._diverged = False  # the dashboard was told; a reset (recovery) clears it
        # steps up to this one were submitted before the last recovery's reset, so they ran on the weights
        # that warned: the re-armed detectors must not see them (one divergence would reset again and again)
        self._stale_until = 0
        self._outside: dict[str, bool] = {}  # target -> its last window was out of support (an event was written)

    @property
    def probe_on(self) -> bool:
        return self.schedule.enabled

    @property
    def cycle_length(self) -> int:
        return self.schedule.cycle

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> LoopState:
        """Process until the stream position reaches `stop` or a stop is requested; returns the
        state after draining what was in flight (call `write_checkpoint` to keep it)."""
        if self.probe_on and self.state.step == 0 and not self.resumed:
            self._start_cycle(0)
            self._begin_cycle_window(0, self.state.position)
        while not self.stop_requested:
            self._fill()
            if not self._steps and not self._probes:
                if self._checkpoint_due():
                    self.write_checkpoint()
                    continue
                break
            self._collect(timeout=0.05)
        self.drain()
        return self.state

    def request_stop(self) -> None:
        """Stop submitting (Ctrl-C); `run` drains what is in flight and returns."""
        self.stop_requested = True

    def drain(self) -> None:
        while self._steps or self._probes:
            self._collect(timeout=0.5)

    def _checkpoint_due(self) -> bool:
        return self._submitted % self.config.runtime.checkpoint_every == 0 and self._submitted > self._checkpointed_at

    def write_checkpoint(self) -> None:
        """Roll the observers' files, then save driver, adapter and probe state at this step (once per step)."""
        if self._steps or self._probes:
            raise RuntimeError("a checkpoint needs an empty in-flight window; call drain() first")
        if self.state.step == self._checkpointed_at:
            return  # nothing new since the last checkpoint (or since the start): the runner's final call after `run`
        self._checkpointed_at = self.state.step
        self.state.detectors = {d.name: d.state_dict() for d in self.detectors}
        self.state.estimators = self.estimation.state_dict()
        self.event("checkpoint", "driver", f"checkpoint at step {self.state.step:,}, position {self.state.position:,}")
        for observer in self.observers:
            roll = getattr(observer, "roll", None)
            if roll:
                roll()
        if self.checkpoint_fn is not None:
            adapter_state = self.ex.get(self.ex.call("adapter", "state_dict"))
            probe_state = self.ex.get(self.ex.call("probe", "state_dict")) if self.probe_on else None
            self.checkpoint_fn(self.state, adapter_state, probe_state)

    # ---- submission ----------------------------------------------------------------------------
    def _fill(self) -> None:
        limit = self.config.runtime.max_in_flight
        while not self.stop_requested and len(self._steps) < limit and len(self._probes) < 2:
            if self._checkpoint_due():
                return  # let the window drain: the checkpoint is taken between two steps
            batch = self._next_batch()
            if batch is None:
                return
            images, truth, start, stop = batch
            if self.probe_on and self.state.reference_fed < self.config.probe.size:
                self.ex.call("probe", "add_reference", images)
                self.state.reference_fed += stop - start
            if self.probe_on and self.config.probe.spread:
                self.ex.call("probe", "observe", images)
            self._submitted += 1
            step = self._submitted
            sidekick = self.ex.call("sidekick", "predict", images) if self.sidekick_on else None
            self._steps.append(_PendingStep(step, self.ex.call("adapter", "step", images), truth, start, stop,
                                            sidekick))
            if self.schedule.probe_due(step):
                flips = None
                if self.schedule.flips_due(step):
                    flips = self.ex.call("probe", "evaluate", self.ex.call("adapter", "snapshot"), step)
                self._probes.append(_PendingProbe(step, flips))
            if self.schedule.cycle_due(step):
                self._start_cycle(step)

    def _start_cycle(self, step: int) -> None:
        snapshot = self.ex.call("adapter", "snapshot")
        cycle = step // self.cycle_length
        self.ex.call("probe", "start_cycle", snapshot, cycle, step)
        self.state.reference_fed = 0

    def _next_batch(self) -> tuple[Any, Any, int, int] | None:
        self._prefetch()
        while not self._batches and self._chunks:
            refs = self._chunks.popleft()
            starts = refs.pop()
            for k, (lo, hi) in enumerate(starts):
                self._batches.append((refs[2 * k], refs[2 * k + 1], lo, hi))
        self._prefetch()
        return self._batches.popleft() if self._batches else None

    def _prefetch(self) -> None:
        ahead = 2 * len(self.sources)
        chunk = self.config.source.chunk_batches * self.batch_size
        while len(self._chunks) < ahead and self._next_chunk < self.stop:
            lo, hi = self._next_chunk, min(self._next_chunk + chunk, self.stop)
            if self.stream_end is not None:  # a generator: read no further than it reaches
                hi = self.stream_end(hi)
                if hi <= lo:
                    self.stop = lo
                    return
            # chunks stay aligned to the batch grid of the run's start, as batches of one read would
            spans = [(a, min(a + self.batch_size, hi)) for a in range(lo, hi, self.batch_size)]
            worker = self.sources[self._source_turn % len(self.sources)]
            self._source_turn += 1
            refs = self.ex.call(worker, "read", lo, hi, num_returns=2 * len(spans))
            refs = list(refs) if isinstance(refs, (list, tuple)) else [refs]
            self._chunks.append([*refs, spans])
            self._next_chunk = hi

    # ---- results -------------------------------------------------------------------------------
    def _collect(self, timeout: float) -> None:
        if self._steps:
            if self.ex.ready(self._steps[0].summary, timeout):
                self._process_step(self._steps.popleft())
                if self._slow:
                    self._slow = False
                    notify_health(self.observers, "adapter", "ok", "steps arrive again")
            elif not self._slow and self.clock() - self._last_result > SLOW_AFTER_S:
                self._slow = True
                notify_health(self.observers, "adapter", "slow", f"no step result for {SLOW_AFTER_S:.0f} s")
        while self._probes and self._probes[0].row is not None and self._probe_ready(self._probes[0], 0):
            self._process_probe(self._probes.popleft())
        if not self._steps and self._probes and self._probes[0].row is not None:
            self._probe_ready(self._probes[0], timeout)

    def _probe_ready(self, pending: _PendingProbe, timeout: float) -> bool:
        return pending.result is None or self.ex.ready(pending.result, timeout)

    def _get(self, handle: Any, origin: str) -> Any:
        try:
            return self.ex.get(handle)
        except Exception as error:  # Ray wraps the worker's exception; in-process it is the original
            notify_health(self.observers, origin, "dead", f"{type(error).__name__}: {str(error)[:200]}")
            raise WorkerFailed(f"{origin} failed: {type(error).__name__}: {error}") from error

    def _process_step(self, pending: _PendingStep) -> None:
        summary: StepSummary = self._get(pending.summary, "adapter")
        truth: Truth = self._get(pending.truth, "stream")
        self._last_result = self.clock()
        state = self.state
        n = len(summary.predictions)
        row = empty_row(STEP_SCHEMA)
        row.update(
            step=pending.step, start=pending.start, stop=pending.stop, images=n, skipped=len(truth.skipped),
            wall_time=self.clock(), step_ms=summary.step_ms, marginal_entropy=_finite(summary.marginal_entropy),
            top_class_share=_finite(summary.top_class_share), mean_confidence=_finite(float(summary.confidences.mean()) if n else math.nan),
            mean_entropy=_finite(summary.stats.mean_entropy), num_used=summary.stats.num_used,
            loss=_finite(summary.stats.loss), grad_norm=_finite(summary.stats.grad_norm),
            update_skipped=summary.stats.skipped, reset=summary.reset, diverged=summary.diverged,
            noise_a=truth.noise_a, severity_a=truth.severity_a, noise_b=truth.noise_b, severity_b=truth.severity_b,
        )
        if truth.frozen_predictions is not None and len(truth.frozen_predictions):
            predicted = truth.frozen_predictions
            row["frozen_top_class_share"] = float(np.bincount(predicted).max() / len(predicted))
            if len(predicted) == n:  # ASR's f_t: how far the adapter has moved from the frozen model, label-free
                row["frozen_flip_rate"] = float((predicted != summary.predictions).mean())
        flags = self.estimation.flag_errors(summary.probabilities)
        if flags is not None:
            row["proxy_flagged"], row["proxy_seen"] = flags
        if summary.dropout is not None:
            row["aetta_acc"] = self.estimation.observe_dropout(*summary.dropout)
        window = state.window
        window.images += n
        if n and len(truth.labels) == n:
            correct = int((summary.predictions == truth.labels).sum())
            row["correct"] = correct
            window.correct += correct
            window.labelled += n
            if truth.frozen_predictions is not None:
                frozen_correct = int((truth.frozen_predictions == truth.labels).sum())
                row.update(frozen_correct=frozen_correct, frozen_seen=n)
                window.frozen_correct += frozen_correct
                window.frozen_seen += n
        state.step, state.position = pending.step, pending.stop
        stale = pending.step <= self._stale_until
        for detector in () if stale else self.detectors:  # before the row goes out: it carries the risk test's bounds
            detector.update_step(row)
            bounds = detector.bounds() if isinstance(detector, SequentialRiskTest) else None
            if bounds is not None:
                row["risk_lower"], row["risk_upper"] = bounds.lower, bounds.upper
        self._emit("on_step", row)
        if summary.diverged and not self._diverged:
            self._diverged = True
            notify_health(self.observers, "adapter", "diverged",
                          f"non-finite loss, gradient or logits since step {pending.step:,}")
        if truth.skipped:
            state.skipped += len(truth.skipped)
            shown = ", ".join(truth.skipped[:3]) + (" ..." if len(truth.skipped) > 3 else "")
            self.event("skipped", "stream", f"{len(truth.skipped)} unreadable image(s) skipped: {shown}",
                       len(truth.skipped))
        if summary.reset:
            state.resets += 1
            self.event("reset", "adapter", f"adapter reset to the source model after step {pending.step:,} "
                       f"(reset every {self.reset_every} steps)")
        sidekick = self._get(pending.sidekick, "sidekick") if pending.sidekick is not None else None
        self.estimation.observe(Feed.SERVED, summary.probabilities, sidekick)
        self.estimation.observe(Feed.FROZEN, truth.frozen_probabilities, sidekick)
        if not stale:
            self._check_detectors()
        for probe in self._probes:
            if probe.step == pending.step and probe.row is None:
                probe.readings = self.estimation.readings()
                probe.row = self._window_columns(pending.stop)
        if self.schedule.cycle_due(pending.step):
            # now rather than with the next step: the cycle event then precedes a checkpoint at this
            # step, so a resume from that checkpoint does not write it a second time
            self._begin_cycle_window(pending.step, pending.stop)

    def _begin_cycle_window(self, step: int, position: int) -> None:
        state = self.state
        state.cycle, state.cycle_start = step // self.cycle_length, step
        state.window = _CycleWindow(start=position)
        self.estimation.reset()
        self.event("cycle", "probe", f"probe cycle {state.cycle} starts at step {step:,}: the next "
                   f"{self.config.probe.size:,} images are the reference set")

    def _window_columns(self, position: int) -> dict[str, Any]:
        w = self.state.window
        return {
            "position": position, "window_start": w.start, "window_stop": position,
            "true_online_acc": 100.0 * w.correct / w.labelled if w.labelled else None,
            "true_source_acc": 100.0 * w.frozen_correct / w.frozen_seen if w.frozen_seen else None,
        }

    def _process_probe(self, pending: _PendingProbe) -> None:
        """The window's estimates at a snapshot step, with the snapshot's flips where it counted them
        (None: not this snapshot, or the reference set was not complete yet)."""
        result: ProbeResult | None = self._get(pending.result, "probe") if pending.result is not None else None
        row = empty_row(PROBE_SCHEMA)
        row.update(pending.row or {})
        cycle, cycle_step = divmod(pending.step, self.cycle_length)
        row.update(step=pending.step, wall_time=self.clock(), cycle=cycle, cycle_step=cycle_step)
        flips = []
        if result is not None:
            row.update(cycle=result.cycle, cycle_step=result.cycle_step, probe_size=result.probe_size,
                       flips=result.flips, weighted_flips=result.weighted_flips, probe_ms=result.probe_ms,
                       spread_size=result.spread_size, spread_flips=result.spread_flips,
                       spread_weighted_flips=result.spread_weighted_flips)
            flips = self.estimation.flips_readings(result.cycle_step, result.weighted_flips, result.probe_size,
                                                   result.spread_weighted_flips, result.spread_size)
        estimate = derive(flips + pending.readings, self.estimation.context)
        row.update(estimate.columns())
        self._note_support(estimate)
        for detector in self.detectors:
            detector.update_probe(row)
        self._check_detectors()
        row["warning"] = bool(self.state.active_warnings)
        self._emit("on_probe", row)
        headlines = {(r.estimator, r.feed): r for r in (estimate.source, estimate.online) if r is not None}
        for reading in estimate.readings:  # a headline's row carries the interval the rule gave it
            self._emit("on_estimate", estimate_row(headlines.get((reading.estimator, reading.feed), reading), row))

    def _note_support(self, estimate: WindowEstimate) -> None:
        """An event when a target's window leaves its calibration's support, and when it comes back."""
        for target, outside, headline in (("source", estimate.source_out_of_support, estimate.source),
                                          ("online", estimate.online_out_of_support, estimate.online)):
            if outside is None or outside == self._outside.get(target, False):
                continue
            self._outside[target] = outside
            method = headline.estimator if headline is not None else "none"
            self.event("support", "estimation", (
                f"the {target} window lies outside the calibration's support: the headline falls back to {method}, "
                f"whose interval is widened" if outside else
                f"the {target} window is back inside the calibration's support (headline {method})"))

    def _check_detectors(self) -> None:
        """Each detector's warning and clear events, then the fused warning's: on when the first of
        `estimation.warning`'s detectors fires, naming those firing, off when none is left; only
        the fused warning resets the adapter (estimation.reset_on_warning)."""
        active = self.state.active_warnings
        was_on = self._fused(active)
        for kind, detector, verdict in transitions(self.detectors, active):
            prefix = ("collapse warning" if detector.name in self.warning_names else "advisory") \
                if kind == "warning" else "warning cleared"
            self.event(kind, detector.name, f"{prefix}: {verdict.evidence}", verdict.value,
                       detectors=detector.name, bounds=verdict.bounds)
        now_on = self._fused(active)
        if now_on and not was_on:
            evidence = {d.name: d.compute() for d in self.detectors if d.name in now_on}
            bounds = next((v.bounds for v in evidence.values() if v.bounds is not None), None)
            verb = "diverged" if "divergence" in now_on else "collapse warning"
            self.event("warning", FUSED, f"{verb} ({', '.join(now_on)}): "
                       + "; ".join(f"{name}: {v.evidence}" for name, v in evidence.items()),
                       None, detectors=",".join(now_on), bounds=bounds)
            if self.config.estimation.reset_on_warning:
                self._recover(",".join(now_on))
        elif was_on and not now_on:
            self.event("clear", FUSED, "collapse warning cleared", None, detectors=",".join(was_on))

    def _fused(self, active: list[str]) -> list[str]:
        return [name for name in active if name in self.warning_names]

    def _recover(self, warned_by: str) -> None:
        """Reset the adapter to the source model and re-arm every detector. The reset queues behind
        the steps already submitted, so it takes effect `max_in_flight` steps after the warning."""
        self.ex.call("adapter", "reset")
        self._stale_until = self._submitted
        self.state.resets += 1
        if self._diverged:
            self._diverged = False
            notify_health(self.observers, "adapter", "ok", "reset to the source model")
        self.event("reset", "driver", f"label-free recovery: adapter reset to the source model after the "
                   f"{warned_by} warning (estimation.reset_on_warning)")
        for name in list(self.state.active_warnings):
            self.event("clear", name, "warning cleared: the adapter was reset", detectors=name)
        self.event("clear", FUSED, "collapse warning cleared: the adapter was reset", detectors=warned_by)
        self.state.active_warnings.clear()
        for detector in self.detectors:
            detector.reset()

    # ---- rows ------------------------------------------------------------------------------------
    def event(self, kind: str, origin: str, message: str, value: float | None = None,
              detectors: str | None = None, bounds: RiskBounds | None = None) -> None:
        row = empty_row(EVENT_SCHEMA)
        row.update(step=self.state.step, wall_time=self.clock(), kind=kind, origin=origin, message=message,
                   value=value, detectors=detectors)
        if bounds is not None:
            row.update(lower_bound=bounds.lower, upper_bound=bounds.upper, delta=bounds.delta)
        self._emit("on_event", row)

    def _emit(self, hook: str, row: dict[str, Any]) -> None:
        for observer in self.observers:
            method = getattr(observer, hook, None)  # on_estimate is optional (the dashboards skip it)
            if method is not None:
                method(row)


def estimate_row(reading: Reading, probe: dict[str, Any]) -> dict[str, Any]:
    """The estimates table's row (schema.ESTIMATE_SCHEMA) of a reading on `probe`'s window."""
    low, high = reading.interval or (None, None)
    return {"step": probe["step"], "position": probe["position"], "cycle": probe["cycle"],
            "cycle_step": probe["cycle_step"], "estimator": reading.estimator, "feed": str(reading.feed),
            "target": str(reading.target), "value": reading.value, "score": reading.score,
            "extrapolated": reading.extrapolated, "interval_low": low, "interval_high": high,
            "features": None if reading.features is None else list(reading.features),
            "window_start": probe["window_start"], "window_stop": probe["window_stop"]}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)



