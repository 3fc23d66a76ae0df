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

import json
import math

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .estimation import anchored
from .metrics.sink import read_table

if TYPE_CHECKING:
    from .calibration import Calibration
    from .estimation.headline import Headline

#: target -> (the probe row's estimate column, its method column, its truth column)
TARGETS = {"source": ("est_source_acc", "est_source_method", "true_source_acc"),
           "online": ("est_online_acc", "est_online_method", "true_online_acc")}


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


def score_estimators(run_dir: Path, calibration: "Calibration | None" = None,
                     frozen_calibration: "Calibration | None" = None) -> list[EstimatorScore]:
    """MAE of each estimator (the estimates table, or the probes' own columns for runs without
    it) against the truth of the same probe window. With `calibration`, the REESTIMATED
    estimators are made again with that file (a run's flips, raw nuclear-norm scores and
    Sentinel features do not depend on it, so a finished run can be scored with a calibration
    made after it). With `frozen_calibration`, the frozen feed's REESTIMATED estimators are made
    again with that file instead: they see only the frozen model, so a calibration of the same
    model with any adapter serves (e.g. a fast one made with `--set adapter.name=source`)."""
    probes = read_table(run_dir, "probes").to_pylist()
    truth = {row["step"]: row for row in probes}
    rows = estimate_rows(run_dir, probes, calibration, frozen_calibration)
    rows += [{"step": step, "estimator": HEADLINE, "target": target, "value": best.value,
              "extrapolated": best.extrapolated}
             for (step, target), best in headlines(rows, adapter_calibrated(run_dir, calibration)).items()]
    by_key: dict[tuple[str, str], list[tuple[float, float, bool]]] = {}
    for row in rows:
        true = truth.get(row["step"], {}).get(TARGETS[row["target"]][2])
        if row["value"] is None or true is None:
            continue
        by_key.setdefault((row["estimator"], row["target"]), []).append((row["value"], true, bool(row["extrapolated"])))
    scores = []
    for (method, target), pairs in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        est, true, extra = (np.array(v) for v in zip(*pairs))
        error = est - true
        scores.append(EstimatorScore(method, target, len(pairs), float(np.abs(error).mean()), float(error.mean()),
                                     float(np.abs(error).max()), int(extra.sum())))
    return scores


#: The estimator name under which `score_estimators` scores each window's headline estimate.
HEADLINE = "headline"


def estimate_rows(run_dir: Path, probes: list[dict[str, Any]], calibration: "Calibration | None" = None,
                  frozen_calibration: "Calibration | None" = None) -> list[dict[str, Any]]:
    """Every estimate of the run (the estimates table, or the probes' own columns for runs without
    it), with the REESTIMATED ones made again with the calibrations given (see `score_estimators`)."""
    recorded = read_table(run_dir, "estimates").to_pylist()
    rows = [r for r in recorded if r["target"] in TARGETS]
    if not rows:  # a run from before the estimates table: the probe rows' estimate columns
        rows = [{"step": p["step"], "estimator": p[TARGETS[t][1]] or "?", "target": t, "value": p[TARGETS[t][0]],
                 "extrapolated": p.get("est_extrapolated") if t == "source" else None}
                for p in probes for t in TARGETS]
    if calibration is not None:
        rows = [r for r in rows if r["estimator"] not in REESTIMATED] + reestimate(run_dir, probes, recorded, calibration)
    if frozen_calibration is not None:
        redone = reestimate(run_dir, probes, recorded, frozen_calibration, frozen_only=True)
        rows = [r for r in rows if not (r["target"] == "source" and r["estimator"] in FROZEN_REESTIMATED)] + redone
    # the anchored estimate again from the final rows and the frozen line a run with these files would
    # use (estimation.frozen_calibration before estimation.calibration); without either, as recorded
    frozen_stats = next((c.frozen_stats for c in (frozen_calibration, calibration) if c is not None), None)
    line = (frozen_stats or {}).get("nuclear_fit")
    if line is None:
        return rows
    slope = line[0]
    scores = [r for r in recorded if r["estimator"] == anchored.SCORE]
    rows = [r for r in rows if r["estimator"] != anchored.NAME]
    return rows + [{"step": step, "estimator": anchored.NAME, "target": "online", "extrapolated": None,
                    "value": anchored.anchored_estimate(estimates, slope)}
                   for step, estimates in estimates_by_step(rows + scores).items()]


def estimates_by_step(rows: list[dict[str, Any]]) -> dict[int, list[tuple[str, str, float | None, bool | None]]]:
    """step -> the (estimator, target, value, extrapolated) tuples of its window (headline's input)."""
    out: dict[int, list[tuple[str, str, float | None, bool | None]]] = {}
    for r in rows:
        out.setdefault(r["step"], []).append((r["estimator"], r["target"], r["value"], r["extrapolated"]))
    return out


def headlines(rows: list[dict[str, Any]], adapter_calibrated: bool = False) -> dict[tuple[int, str], "Headline"]:
    """(step, target) -> the headline estimate (`estimation.headline`) among `rows`."""
    from .estimation.headline import pick_headline

    return {(step, target): best for step, estimates in estimates_by_step(rows).items() for target in TARGETS
            if (best := pick_headline(target, estimates, adapter_calibrated)) is not None}


def adapter_calibrated(run_dir: Path, calibration: "Calibration | None" = None) -> bool:
    """Whether the served feed's estimators were calibrated on the run's adapter (which picks the
    online headline order, `estimation.headline`): by `calibration` when given, else as the run
    recorded it in run.json, else (runs from before that field) by the calibration such a run
    chose: its configured file, or the shipped one made for its model, adapter and cadence."""
    from .calibration import Calibration, run_provenance_of_dir
    from .config import load_config
    from .estimation.window import calibrated_on_adapter, stats_from_dict
    from .runtime.runner import SHIPPED_CALIBRATIONS, shipped_calibration

    info = _run_info(run_dir)
    if calibration is None and info.get("adapter_calibrated") is not None:
        return bool(info["adapter_calibrated"])
    if calibration is None and {"model", "adapter"} <= info.keys() and (Path(run_dir) / "config.yaml").exists():
        configured = load_config(Path(run_dir) / "config.yaml", []).estimation.calibration
        if configured:  # checked against the run when it started
            calibration = Calibration.load(Path(configured)) if Path(configured).exists() else None
        else:
            calibration = (shipped_calibration(SHIPPED_CALIBRATIONS, run_provenance_of_dir(Path(run_dir))) or (None,))[0]
    return calibration is not None and calibrated_on_adapter(stats_from_dict(calibration.source_stats))


#: Estimators a later calibration can redo from what a run recorded: both flips estimators (from
#: the probe rows' flips), the nuclear norm of each feed (from its recorded raw score) and the
#: Sentinel of each feed (from its recorded window features).
REESTIMATED = ("weighted-flips", "spread-flips", "nuclear-norm", "sentinel")
#: Those of them on the frozen model's feed: they depend on the model only, not on the adapter.
FROZEN_REESTIMATED = ("nuclear-norm", "sentinel")


def reestimate(run_dir: Path, probes: list[dict[str, Any]], estimates: list[dict[str, Any]],
               calibration: "Calibration", frozen_only: bool = False) -> list[dict[str, Any]]:
    """The REESTIMATED estimators' rows for every probe row, with `calibration`'s f, lines and
    forests; the calibration must have been made for the run's model, adapter, hyperparameters,
    probe size and cycle, or (`frozen_only`: the FROZEN_REESTIMATED rows only, and the served
    nuclear norm with the source line where the run had none) for its model."""
    from .calibration import FROZEN_PROVENANCE_KEYS, run_provenance_of_dir
    from .estimation.sentinel import SentinelRegressor
    from .estimation.window import nuclear_accuracy

    provenance = run_provenance_of_dir(Path(run_dir))
    if frozen_only:
        provenance = {k: provenance[k] for k in FROZEN_PROVENANCE_KEYS}
    calibration.check(provenance)
    out = []
    flips = () if frozen_only else (
        ("weighted-flips", calibration.flips_calibrations(), "weighted_flips", "probe_size"),
        ("spread-flips", calibration.flips_calibrations(spread=True), "spread_weighted_flips", "spread_size"))
    for name, fs, wf, size in flips:
        for p in probes:
            f = fs.get(p["cycle_step"])
            if f is not None and p[wf] is not None:
                value, extrapolated = f(p[wf], p[size])
                out.append({"step": p["step"], "estimator": name, "target": "source", "value": value,
                            "extrapolated": extrapolated})
    served = None if frozen_only else calibration.source_stats
    frozen_line = (calibration.frozen_stats or {}).get("nuclear_fit")
    # the served feed's nuclear norm falls back on the source model's line as a live run does
    # (window.with_source_line); from a frozen-feed calibration, only for a run that had no served line
    if frozen_only:
        had_line = any(r["estimator"] == "nuclear-norm" and r["target"] == "online" and r["value"] is not None
                       for r in estimates)
        served_line = None if had_line else frozen_line
    else:
        served_line = (served or {}).get("nuclear_fit") or frozen_line
    lines = {"score": served_line, "source-score": frozen_line}
    for row in estimates:
        line = lines.get(row["target"]) if row["estimator"] == "nuclear-norm-score" else None
        if line is not None and row["value"] is not None:  # the recorded score is x100
            out.append({"step": row["step"], "estimator": "nuclear-norm", "extrapolated": None,
                        "target": "online" if row["target"] == "score" else "source",
                        "value": nuclear_accuracy(row["value"] / 100.0, line)})
    from .config import load_config

    sidekick = load_config(Path(run_dir) / "config.yaml", []).estimation.duo_model  # whose agreement it recorded
    forests = {target: SentinelRegressor(stats["sentinel"]) for target, stats in
               (("online", served), ("source", calibration.frozen_stats))
               if stats and stats.get("sentinel")}
    for row in estimates:
        forest = forests.get(row["target"]) if row["estimator"] == "sentinel" else None
        if forest is not None and row.get("features") is not None:
            out.append({"step": row["step"], "estimator": "sentinel", "extrapolated": None, "target": row["target"],
                        "value": forest(row["features"], sidekick)})
    return out


def collapse_events(run_dir: Path, window: int = 5000, margin: float = 5.0, sustain: int = 2) -> list[CollapseEvent]:
    """Labelled collapse events from the steps table (DESIGN.md 6)."""
    steps = read_table(run_dir, "steps").select(["start", "images", "correct", "source_correct", "source_seen"])
    data = {name: np.array(steps.column(name).to_pylist(), dtype=float) for name in steps.column_names}
    if not len(data["start"]) or np.isnan(data["correct"]).all():
        return []
    bins = (data["start"] // window).astype(int)
    first = bins.min()
    bins -= first
    sums = {name: np.bincount(bins, weights=np.nan_to_num(data[name])) for name in
            ("images", "correct", "source_correct", "source_seen")}
    events, run = [], []
    last = len(sums["images"]) - 1
    for b in range(last + 1):
        seen, images = sums["source_seen"][b], sums["images"][b]
        gap = 100 * sums["source_correct"][b] / seen - 100 * sums["correct"][b] / images if seen and images else None
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


def warning_positions(run_dir: Path) -> list[int]:
    """Stream positions at which collapse warnings fired (the step's stop position)."""
    return sorted(start for start, _ in warning_intervals(run_dir))


def warning_intervals(run_dir: Path) -> list[tuple[int, float]]:
    """(fired, cleared) stream positions of every warning, per detector; a warning never cleared
    stays active to the end of the run (inf)."""
    steps = read_table(run_dir, "steps").select(["step", "stop"])
    stop_of = dict(zip(steps.column("step").to_pylist(), steps.column("stop").to_pylist()))
    active: dict[str, int] = {}
    intervals: list[tuple[int, float]] = []
    for e in read_table(run_dir, "events").to_pylist():
        position = stop_of.get(e["step"], 0)
        if e["kind"] == "warning" and e["origin"] not in active:
            active[e["origin"]] = position
        elif e["kind"] == "clear" and e["origin"] in active:
            intervals.append((active.pop(e["origin"]), position))
    intervals += [(start, math.inf) for start in active.values()]
    return sorted(intervals)


def replay_warnings(run_dir: Path, names: list[str] | tuple[str, ...], calibration: "Calibration | None" = None,
                    frozen_calibration: "Calibration | None" = None) -> dict[str, list[tuple[int, float]]]:
    """Per named detector, the (fired, cleared) stream positions of the warnings it would have
    raised on a finished run, replayed on the run's recorded step and probe rows with the live
    loop's rule (`detectors.transitions`). The probe rows' headline estimates are chosen again from
    the run's estimates as a live run chooses them now (`estimation.headline`), made with the
    calibrations given as `score_estimators` makes them. A probe row is replayed right after its step's row;
    live, its result reaches the detectors a few steps later, so a probe-fed warning can come a few
    steps early here. A run with estimation.reset_on_warning reset its adapter on its own warnings,
    so no replay of other detectors is what that run would have done."""
    from .estimation.detectors import build_detectors, transitions

    detectors = build_detectors(names, _num_classes(Path(run_dir)))
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

    for step in read_table(run_dir, "steps").to_pylist():
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


def replayed_probes(run_dir: Path, calibration: "Calibration | None" = None,
                    frozen_calibration: "Calibration | None" = None) -> list[dict[str, Any]]:
    """The run's probe rows with their headline columns derived again from its estimates, made
    with the calibrations given as `score_estimators` makes them."""
    from .estimation.headline import headline_columns

    rows = read_table(run_dir, "probes").to_pylist()
    by_step = estimates_by_step(estimate_rows(run_dir, rows, calibration, frozen_calibration))
    served_calibrated = adapter_calibrated(run_dir, calibration)
    for row in rows:
        row.update(headline_columns(by_step.get(row["step"], []), served_calibrated))
    return rows


def _run_info(run_dir: Path) -> dict[str, Any]:
    """The run's run.json (runtime.observer.RunInfo), or {} where it has none."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _num_classes(run_dir: Path) -> int:
    """The run's number of classes: run.json, or (older runs) its model."""
    known = _run_info(run_dir).get("num_classes")
    if known:
        return int(known)
    from .config import load_config
    from .models import load_model

    model = load_config(run_dir / "config.yaml", []).model
    return load_model(model.name, model.weights).num_classes


def score_warnings(run_dir: Path, events: list[CollapseEvent], horizon: int = 20_000,
                   intervals: list[tuple[int, float]] | None = None) -> WarningScore:
    """An event is detected when a warning is active at some point from `horizon` images before it
    to its end (one that fired earlier and was never cleared counts: the dashboard still shows it);
    the lead is how long before the event's start the warning was on, at most `horizon`. A warning
    that fires outside every event's span is a false alarm. `intervals`: the warnings to score
    (default: the run's own, from its events table)."""
    intervals = warning_intervals(run_dir) if intervals is None else intervals
    steps = read_table(run_dir, "steps").select(["images", "skipped"])
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
    if not (run_dir / "steps").is_dir():
        raise FileNotFoundError(f"{run_dir} has no steps/ table; pass a run directory written by `stream-monitor run`.")
    events = collapse_events(run_dir, window, margin, sustain)
    replayed = replay_warnings(run_dir, detectors, calibration, frozen_calibration) if detectors is not None else {}
    fused = sorted(i for intervals in replayed.values() for i in intervals) if detectors is not None else None
    return {"estimators": score_estimators(run_dir, calibration, frozen_calibration), "events": events,
            "warnings": score_warnings(run_dir, events, horizon, fused),
            "per_detector": {name: score_warnings(run_dir, events, horizon, intervals)
                             for name, intervals in replayed.items()}}
