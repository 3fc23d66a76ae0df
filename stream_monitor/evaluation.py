"""`stream-monitor eval RUN_DIR`: every label-free estimate and warning against the ground truth.

Labels are used here only, after the run (DESIGN.md section 6):
- **Estimators**: per estimator and target (source accuracy on the window, online accuracy),
  the mean absolute error in accuracy points over the probe windows where both the estimate and
  the truth exist, with the mean signed error (bias) and the worst window.
- **Collapse warnings** against labelled collapse events: a window of `window` images is
  collapsed when the served predictions' accuracy is below the frozen source model's accuracy on
  the same window by more than `margin` points; an event is `sustain` or more consecutive
  collapsed windows. Recall is the share of events with a warning that fired before the event
  ended and at most `horizon` images before it started (lead time: event start minus the first
  such warning's position, positive = early); a false alarm is a warning that fired with no
  event starting within `horizon` images after it and none in progress, per million images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration.format import Calibration
from .calibration.resolve import resolve_context
from .estimation.detectors import FUSED, DetectorSetup, build_detectors, transitions
from .estimation.pipeline import SPREAD_FLIPS, WEIGHTED_FLIPS, EstimationPipeline, WindowEstimate, derive
from .estimation.readings import Feed, Reading, Target
from .rundir import RunDirectory

#: target -> the probe row's truth column
TRUTH = {Target.SOURCE: "true_source_acc", Target.ONLINE: "true_online_acc"}
#: The estimator name under which `score_estimators` scores each window's headline estimate.
HEADLINE = "headline"


@dataclass(frozen=True)
class EstimatorScore:
    estimator: str
    target: str
    windows: int
    mae: float
    bias: float            # mean (estimate - truth)
    worst: float           # largest absolute error
    extrapolated: int      # windows the estimate flagged as outside its fitted range


@dataclass(frozen=True)
class CollapseEvent:
    start: int             # stream position of the first collapsed window
    stop: int
    gap: float             # mean (source - online) accuracy over the event, points


@dataclass(frozen=True)
class WarningScore:
    events: int
    detected: int
    lead_times: tuple[int, ...]  # images, per detected event
    false_alarms: int
    images: int

    @property
    def recall(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def false_alarms_per_million(self) -> float:
        return 1e6 * self.false_alarms / self.images if self.images else 0.0


def replay(run_dir: Path, calibration: Calibration | None = None,
           frozen_calibration: Calibration | None = None) -> list[tuple[dict[str, Any], WindowEstimate]]:
    """Every probe row of a run with its window's estimate, derived again from the recorded readings
    by the live loop's rule (`estimation.pipeline.derive`), in the context the run recorded.

    With `calibration` or `frozen_calibration`, the context is resolved again with these files in
    place of the run's configured ones (`calibration.resolve`), and the readings a calibration
    maps (flips, nuclear norms, Sentinels) are made again from what the run recorded: a run's flips,
    raw scores and window features do not depend on the calibration, so a finished run can be
    scored with one made after it.
    """
    run = RunDirectory(run_dir)
    probes = run.rows("probes")
    recorded: dict[int, list[Reading]] = {}
    for row in run.rows("estimates"):
        recorded.setdefault(row["step"], []).append(_reading(row))
    if calibration is None and frozen_calibration is None:
        context = run.context()
        return [(p, derive(recorded.get(p["step"], []), context)) for p in probes]
    config = run.config()
    context = resolve_context(config, run.provenance(), calibration=calibration, frozen_calibration=frozen_calibration)
    pipeline = EstimationPipeline(context, run.num_classes, config.estimation.duo_model,
                                  dropout=config.estimation.aetta_every > 0)
    out = []
    for p in probes:
        window = [r for r in recorded.get(p["step"], []) if r.estimator not in (WEIGHTED_FLIPS, SPREAD_FLIPS)]
        flips = pipeline.flips_readings(p["cycle_step"], p["weighted_flips"], p["probe_size"],
                                        p["spread_weighted_flips"], p["spread_size"])
        out.append((p, derive(flips + pipeline.reread(window), context)))
    return out


def _reading(row: dict[str, Any]) -> Reading:
    """A reading from its estimates-table row (schema.ESTIMATE_SCHEMA)."""
    low, high = row["interval_low"], row["interval_high"]
    return Reading(row["estimator"], Feed(row["feed"]), Target(row["target"]), row["value"], score=row["score"],
                   extrapolated=row["extrapolated"],
                   features=None if row["features"] is None else tuple(row["features"]),
                   interval=None if low is None or high is None else (low, high))


def replayed_probes(run_dir: Path, calibration: Calibration | None = None,
                    frozen_calibration: Calibration | None = None) -> list[dict[str, Any]]:
    """The run's probe rows with their estimate columns derived again (`replay`)."""
    return [{**probe, **estimate.columns()} for probe, estimate in replay(run_dir, calibration, frozen_calibration)]


def score_estimators(run_dir: Path, calibration: Calibration | None = None,
                     frozen_calibration: Calibration | None = None) -> list[EstimatorScore]:
    """MAE of each estimator and of each target's headline against the truth of the same probe
    window, with the readings and headlines of `replay` (made again with the calibrations given)."""
    by_key: dict[tuple[str, str], list[tuple[float, float, bool]]] = {}
    for probe, estimate in replay(run_dir, calibration, frozen_calibration):
        readings = [(r.estimator, r) for r in estimate.readings]
        readings += [(HEADLINE, r) for r in (estimate.source, estimate.online) if r is not None]
        for name, reading in readings:
            true = probe.get(TRUTH[reading.target])
            if reading.value is not None and true is not None:
                by_key.setdefault((name, str(reading.target)), []).append(
                    (reading.value, true, bool(reading.extrapolated)))
    scores = []
    for (method, target), pairs in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        est, true, extra = (np.array(v) for v in zip(*pairs))
        error = est - true
        scores.append(EstimatorScore(method, target, len(pairs), float(np.abs(error).mean()), float(error.mean()),
                                     float(np.abs(error).max()), int(extra.sum())))
    return scores


def collapse_events(run_dir: Path, window: int = 5000, margin: float = 5.0, sustain: int = 2) -> list[CollapseEvent]:
    """Labelled collapse events from the steps table (DESIGN.md 6)."""
    steps = RunDirectory(run_dir).table("steps").select(["start", "images", "correct", "frozen_correct", "frozen_seen"])
    data = {name: np.array(steps.column(name).to_pylist(), dtype=float) for name in steps.column_names}
    if not len(data["start"]) or np.isnan(data["correct"]).all():
        return []
    bins = (data["start"] // window).astype(int)
    first = bins.min()
    bins -= first
    sums = {name: np.bincount(bins, weights=np.nan_to_num(data[name])) for name in
            ("images", "correct", "frozen_correct", "frozen_seen")}
    events, run = [], []
    last = len(sums["images"]) - 1
    for b in range(last + 1):
        seen, images = sums["frozen_seen"][b], sums["images"][b]
        gap = 100 * sums["frozen_correct"][b] / seen - 100 * sums["correct"][b] / images if seen and images else None
        collapsed = gap is not None and gap > margin
        if collapsed:
            run.append(gap)
        if not collapsed or b == last:
            if len(run) >= sustain:
                end = b + 1 if collapsed else b
                events.append(CollapseEvent(int(first + end - len(run)) * window, int(first + end) * window,
                                            float(np.mean(run))))
            run = []
    return events


def warning_intervals(run_dir: Path) -> list[tuple[int, float]]:
    """(fired, cleared) stream positions of every detector's warning (not the fused warning's own
    events, which repeat them); a warning never cleared stays active to the end of the run (inf)."""
    run = RunDirectory(run_dir)
    steps = run.table("steps").select(["step", "stop"])
    stop_of = dict(zip(steps.column("step").to_pylist(), steps.column("stop").to_pylist()))
    active: dict[str, int] = {}
    intervals: list[tuple[int, float]] = []
    for e in run.rows("events"):
        if e["origin"] == FUSED:
            continue
        position = stop_of.get(e["step"], 0)
        if e["kind"] == "warning" and e["origin"] not in active:
            active[e["origin"]] = position
        elif e["kind"] == "clear" and e["origin"] in active:
            intervals.append((active.pop(e["origin"]), position))
    intervals += [(start, math.inf) for start in active.values()]
    return sorted(intervals)


def replay_warnings(run_dir: Path, names: list[str] | tuple[str, ...], calibration: Calibration | None = None,
                    frozen_calibration: Calibration | None = None,
                    frozen_every: int | None = None) -> dict[str, list[tuple[int, float]]]:
    """Per named detector, the (fired, cleared) stream positions of the warnings it would have
    raised on a finished run, replayed on the run's recorded step and probe rows with the live
    loop's rule (`detectors.transitions`). The probe rows' estimate columns are derived again
    (`replay`, with the calibrations given). A probe row is replayed right after its step's row;
    live, its result reaches the detectors a few steps later, so a probe-fed warning can come a few
    steps early here. A run with estimation.reset_on_warning reset its adapter on its own warnings,
    so no replay of other detectors is what that run would have done.

    `frozen_every`: replay as if the frozen model had scored only every N-th batch (the detectors see
    its columns on those batches only), for a run made with a cadence that divides N; the default
    (`evaluator.frozen_every=8`) on a run that scored more often, say.
    """
    run = RunDirectory(run_dir)
    config = run.config()
    if frozen_every is not None:
        own = config.evaluator.frozen_every
        if not own or frozen_every % own:
            raise ValueError(f"the run's frozen model scored every {own} batches (0: none); a replay can only keep "
                             f"fewer of them: pass a multiple of {own} as frozen_every, got {frozen_every}")
    detectors = build_detectors(names, DetectorSetup.of(config, run.num_classes, run.context()))
    probes: dict[int, list[dict[str, Any]]] = {}
    for row in replayed_probes(run_dir, calibration, frozen_calibration):
        probes.setdefault(row["step"], []).append(row)
    active: list[str] = []
    fired: dict[str, int] = {}
    intervals: dict[str, list[tuple[int, float]]] = {name: [] for name in names}

    def record(position: int) -> None:
        for kind, detector, _ in transitions(detectors, active):
            if kind == "warning":
                fired[detector.name] = position
            else:
                intervals[detector.name].append((fired.pop(detector.name), position))

    for step in run.rows("steps"):
        if frozen_every is not None and (step["start"] // config.source.batch_size) % frozen_every:
            step = {k: (None if k.startswith("frozen_") else v) for k, v in step.items()}
        for detector in detectors:
            detector.update_step(step)
        record(step["stop"])
        for probe in probes.get(step["step"], []):
            for detector in detectors:
                detector.update_probe(probe)
            record(step["stop"])
    for name, start in fired.items():
        intervals[name].append((start, math.inf))
    return intervals


def score_warnings(run_dir: Path, events: list[CollapseEvent], horizon: int = 20_000,
                   intervals: list[tuple[int, float]] | None = None) -> WarningScore:
    """An event is detected when a warning is active at some point from `horizon` images before it
    to its end (one that fired earlier and was never cleared counts: the dashboard still shows it);
    the lead is how long before the event's start the warning was on, at most `horizon`. A warning
    that fires outside every event's span is a false alarm. `intervals`: the warnings to score
    (default: the run's own, from its events table)."""
    intervals = warning_intervals(run_dir) if intervals is None else intervals
    steps = RunDirectory(run_dir).table("steps").select(["images", "skipped"])
    images = int(np.sum(steps.column("images").to_numpy()) + np.sum(steps.column("skipped").to_numpy()))
    detected, leads = 0, []
    for event in events:
        on = [start for start, end in intervals if start < event.stop and end > event.start - horizon]
        if on:
            detected += 1
            leads.append(event.start - max(min(on), event.start - horizon))
    false_alarms = sum(1 for start, _ in intervals
                       if not any(e.start - horizon <= start < e.stop for e in events))
    return WarningScore(len(events), detected, tuple(int(x) for x in leads), false_alarms, images)


def evaluate(run_dir: Path, window: int = 5000, margin: float = 5.0, sustain: int = 2,
             horizon: int = 20_000, calibration: "Calibration | None" = None,
             frozen_calibration: "Calibration | None" = None,
             detectors: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Estimators and warnings against the labels; `detectors`: score the warnings these detectors
    give when replayed on the run's rows (`replay_warnings`) instead of the run's own, and each of
    them alone (`per_detector`)."""
    run_dir = Path(run_dir)
    RunDirectory(run_dir).info()  # a folder that is not a finished run directory fails here, saying why
    events = collapse_events(run_dir, window, margin, sustain)
    replayed = replay_warnings(run_dir, detectors, calibration, frozen_calibration) if detectors is not None else {}
    fused = sorted(i for intervals in replayed.values() for i in intervals) if detectors is not None else None
    return {"estimators": score_estimators(run_dir, calibration, frozen_calibration), "events": events,
            "warnings": score_warnings(run_dir, events, horizon, fused),
            "per_detector": {name: score_warnings(run_dir, events, horizon, intervals)
                             for name, intervals in replayed.items()}}
