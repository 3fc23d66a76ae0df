"""The collapse benchmark (issue 26): every detector and the fused warning on runs that collapse and
runs that do not, with and without label-free recovery.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/collapse_warnings.py [--images 3200] [--jobs 1]
        [--reset] [--score-only] [--work runs/collapse_warnings] [--stem benchmarks/results/collapse_warnings]

1. Runs (`CASES`; embedded model, runtime.use_ray=false): each adapter and learning rate gets a
   statistics-only calibration first (`stream-monitor calibrate --cycles 0`: the clean domain's
   ATC threshold, clean error and the proxy's precision, what the risk test needs). A run whose
   folder has `done.json` is skipped, one stopped half-way resumes from its checkpoint (exactly);
   `--jobs N` runs N at once in processes.
2. Scoring: every registered detector is replayed on each plain run's rows
   (`evaluation.replay_warnings`, the live loop's rule) and scored against two event definitions:
   the labelled collapse (DESIGN.md 6: online accuracy below the frozen model's by `--margin`
   points on `--sustain` consecutive windows of `--window` images) and the probe drop (the first
   interval of `--probe-every` steps whose online accuracy is `--margin` points below the
   interval before; the runs have no probe, whose snapshots would take half their time). Per
   detector and for the fused warning (the union of `estimation.warning`'s detectors): recall,
   lead time (median, worst; positive = before the event), false alarms per million images on the
   non-collapsing runs, and for the sequential test the share of non-collapsing runs on which it
   fired at all, against its delta.
3. `--reset`: the runs again with estimation.reset_on_warning (the default fused warning resets
   the adapter); online accuracy over each run with and without it. A run on which the fused
   warning never fired would be the same run again, so it is not repeated (marked "same run").

Writes STEM.csv / STEM.parquet (one row per run and detector) and STEM_recovery.csv, each row with
the git SHA; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import git_sha  # noqa: E402

#: clean images behind each statistics-only calibration (the clean error's and precision's bounds)
CLEAN_IMAGES = 1024


@dataclass(frozen=True)
class Case:
    name: str
    adapter: str
    lr: float | None      # None: the method's default (the paper's)
    baseline: int
    collapsing: bool      # expected to collapse (events are still labelled from the truth, not from this)
    seed: int = 43

    @property
    def stream(self) -> str:
        return f"baseline_{self.baseline}_transition+speed_1000_seed_{self.seed}"


CASES = (
    Case("tent-lr0.3-b0", "tent", 0.3, 0, True),
    Case("tent-lr0.3-b20", "tent", 0.3, 20, True),
    Case("tent-lr0.3-b40", "tent", 0.3, 40, True),
    Case("tent-lr10-b40", "tent", 10.0, 40, True),       # sudden: chance within a few steps
    Case("tent-lr1e30-b20", "tent", 1e30, 20, True),     # NaN logits within a few steps
    Case("eta-lr1-b0", "eta", 1.0, 0, True),
    Case("rdumb-b0", "rdumb", None, 0, False),
    Case("rdumb-b20", "rdumb", None, 20, False),
    Case("rdumb-b40", "rdumb", None, 40, False),
    Case("norm-b20", "norm", None, 20, False),
    Case("source-b40", "source", None, 40, False),
    Case("tent-b0", "tent", None, 0, False),              # the paper's lr
)

#: The development set (`--set dev`): other CCC seeds, learning rates and adapters than `CASES`, for
#: designing a detector before it is scored once on `CASES`. Nothing here is in the benchmark's table.
DEV_CASES = (
    Case("tent-lr1-b20-s44", "tent", 1.0, 20, True, 44),
    Case("tent-lr3-b40-s44", "tent", 3.0, 40, True, 44),
    Case("eta-lr3-b40-s44", "eta", 3.0, 40, True, 44),
    Case("tent-lr0.1-b40-s44", "tent", 0.1, 40, True, 44),
    Case("rdumb-b20-s44", "rdumb", None, 20, False, 44),
    Case("norm-b40-s44", "norm", None, 40, False, 44),
    Case("tent-b40-s44", "tent", None, 40, False, 44),
    Case("eta-b20-s44", "eta", None, 20, False, 44),
    Case("eata-b40-s44", "eata", None, 40, False, 44),
    Case("source-b20-s44", "source", None, 20, False, 44),
)
CASE_SETS = {"benchmark": CASES, "dev": DEV_CASES}


# ---- scoring (pure functions over rows and intervals; tests/benchmarks/test_collapse_warnings.py) ----

@dataclass(frozen=True)
class Score:
    """One detector's warnings against one run's events (spans of stream positions)."""

    events: int
    detected: int
    leads: tuple[int, ...]   # images before each detected event's start (negative: after it)
    false_alarms: int        # warnings that fired outside every event's span (and its horizon)
    images: int


def score(intervals: Sequence[tuple[int, float]], events: Sequence[tuple[int, int]], images: int,
          horizon: int) -> Score:
    """`intervals`: (fired, cleared) positions of a detector's warnings; an event (start, stop) is
    detected when a warning is on between `horizon` images before its start and its stop (the
    evaluation module's rule), the lead is start minus the first such warning's firing, at most
    `horizon`; a warning firing outside every [start - horizon, stop) is a false alarm."""
    detected, leads = 0, []
    for start, stop in events:
        on = [fired for fired, cleared in intervals if fired < stop and cleared > start - horizon]
        if on:
            detected += 1
            leads.append(int(start - max(min(on), start - horizon)))
    false_alarms = sum(1 for fired, _ in intervals if not any(s - horizon <= fired < e for s, e in events))
    return Score(len(events), detected, tuple(leads), false_alarms, images)


def probe_drop(steps: Sequence[dict[str, Any]], probe_steps: Sequence[int], margin: float) -> int | None:
    """The stream position where the first probe interval ends whose online accuracy (the step
    rows' correct / images between two probe steps) is more than `margin` points below the
    interval before; None when none is."""
    bounds = sorted(set(probe_steps))
    previous = None
    lo = 0
    for hi in bounds:
        rows = [r for r in steps if lo < r["step"] <= hi and r.get("correct") is not None]
        images = sum(r["images"] for r in rows)
        if images:
            accuracy = 100.0 * sum(r["correct"] for r in rows) / images
            if previous is not None and accuracy < previous - margin:
                return int(max(r["stop"] for r in rows))
            previous = accuracy
        lo = hi
    return None


@dataclass(frozen=True)
class Summary:
    detector: str
    events: int
    recall: float | None
    median_lead: float | None
    worst_lead: int | None
    drop_events: int
    drop_recall: float | None
    drop_median_lead: float | None
    drop_worst_lead: int | None
    false_alarms: int               # on the non-collapsing runs
    false_alarms_per_million: float
    runs_with_false_alarm: int      # non-collapsing runs on which it fired at all
    quiet_runs: int


def summarise(detector: str, labelled: Iterable[Score], drops: Iterable[Score], quiet: Iterable[Score]) -> Summary:
    """Pool one detector's per-run scores: recall and leads over the events of every run, false
    alarms over the non-collapsing (`quiet`) runs."""
    labelled, drops, quiet = list(labelled), list(drops), list(quiet)

    def pooled(scores: list[Score]) -> tuple[int, float | None, float | None, int | None]:
        events = sum(s.events for s in scores)
        leads = [lead for s in scores for lead in s.leads]
        return (events, sum(s.detected for s in scores) / events if events else None,
                statistics.median(leads) if leads else None, min(leads) if leads else None)

    images = sum(s.images for s in quiet)
    alarms = sum(s.false_alarms for s in quiet)
    return Summary(detector, *pooled(labelled), *pooled(drops), alarms, 1e6 * alarms / images if images else 0.0,
                   sum(1 for s in quiet if s.false_alarms), len(quiet))


def fuse(intervals: dict[str, list[tuple[int, float]]], names: Sequence[str]) -> list[tuple[int, float]]:
    """The fused warning's (on, off) spans: on while any of `names` is on."""
    spans = sorted(i for name in names for i in intervals.get(name, []))
    merged: list[list[float]] = []
    for fired, cleared in spans:
        if merged and fired <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], cleared)
        else:
            merged.append([fired, cleared])
    return [(int(a), b) for a, b in merged]


# ---- runs ----------------------------------------------------------------------------------------

def _overrides(case: Case, images: int, calibration: Path | None, reset: bool,
               fused: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    from stream_monitor.estimation.detectors import DEFAULT_DETECTORS

    adapter: dict[str, Any] = {"name": case.adapter}
    if case.lr is not None:
        adapter["lr"] = case.lr
    # no random resized crop: with it the frozen embedded model is near chance (11-15 %) on every
    # baseline, and no adapter can fall 5 points below it (the labelled collapse, DESIGN.md 6)
    return {"source": {"kind": "ccc", "stream": case.stream, "crop": False}, "model": {"name": "embedded"},
            "adapter": adapter,
            # no probe: on a shared 2-core machine it would take half the time, and the probe drop is
            # measured over step windows of the same cadence instead (`probe_drop`)
            "probe": {"enabled": False}, "evaluator": {"frozen_every": 2},
            "runtime": {"max_images": images, "use_ray": False},
            "dashboard": {"enabled": False},
            "estimation": {"calibration": str(calibration) if calibration else None, "reset_on_warning": reset,
                           # the fused warning under test resets the adapter (`--fused`)
                           **({"warning": ",".join(fused),
                               "detectors": ",".join(dict.fromkeys([*DEFAULT_DETECTORS, *fused]))} if fused else {})}}


def _config(case: Case, images: int, calibration: Path | None, reset: bool, fused: Sequence[str] = ()):
    from stream_monitor.config import load_config
    from stream_monitor.runtime.runner import with_overrides

    return with_overrides(load_config(None), **_overrides(case, images, calibration, reset, fused))


def _calibration(case: Case, work: Path, images: int) -> Path:
    """A statistics-only calibration for the case's adapter and lr (made once, atomically)."""
    from stream_monitor.calibrate import calibrate

    path = work / "calibrations" / f"{case.adapter}-lr{case.lr}.json"
    if not path.exists():
        calibration = calibrate(_config(case, images, None, False), cycles=0, log=lambda message: None,
                              clean_images=CLEAN_IMAGES)
        tmp = calibration.save(path.with_suffix(f".{os.getpid()}.tmp"))
        tmp.replace(path)
    return path


def run_case(case: Case, work: Path, images: int, reset: bool, fused: Sequence[str] = ()) -> str:
    from stream_monitor.runtime.runner import run

    run_dir = work / "runs" / (case.name + ("-reset" if reset else ""))
    if (run_dir / "done.json").exists():
        return f"{run_dir.name}: done before"
    # a run stopped half-way resumes where its last checkpoint left it (a resume is exact)
    resume = (run_dir / "run.json").exists()
    started = time.perf_counter()
    calibration = _calibration(case, work, images)
    outcome = run(_config(case, images, calibration, reset, fused if reset else ()), run_dir, resume=resume,
                  log=lambda message: None)
    if outcome.status != "finished":
        return f"{run_dir.name}: {outcome.status} ({outcome.error})"
    seconds = time.perf_counter() - started
    (run_dir / "done.json").write_text(json.dumps({"images": outcome.images, "seconds": seconds}))
    return f"{run_dir.name}: {outcome.images:,} images in {seconds:.0f} s ({outcome.images / seconds:.0f} img/s)"


def run_all(cases: Sequence[Case], work: Path, images: int, jobs: int, reset: bool, fused: Sequence[str] = ()) -> None:
    if jobs <= 1:
        for case in cases:
            print(run_case(case, work, images, reset, fused), flush=True)
        return
    n = len(cases)
    with ProcessPoolExecutor(jobs) as pool:
        for message in pool.map(run_case, cases, [work] * n, [images] * n, [reset] * n, [fused] * n):
            print(message, flush=True)


# ---- scoring a finished set of runs --------------------------------------------------------------

def case_rows(case: Case, run_dir: Path, window: int, margin: float, sustain: int, horizon: int,
              fused: Sequence[str], probe_every: int,
              frozen_every: int | None = None) -> tuple[dict[str, Score], dict[str, Score], dict[str, list]]:
    """Per detector (and "fused"): its score against the labelled events and against the probe drop."""
    from stream_monitor.estimation.detectors import DETECTORS
    from stream_monitor.evaluation import collapse_events, replay_warnings
    from stream_monitor.rundir import RunDirectory

    directory = RunDirectory(run_dir)
    steps = directory.rows("steps")
    images = sum(r["images"] + (r["skipped"] or 0) for r in steps)
    labelled = [(e.start, e.stop) for e in collapse_events(run_dir, window, margin, sustain)]
    last = max(r["step"] for r in steps)
    drop = probe_drop(steps, list(range(probe_every, last + 1, probe_every)), margin)
    drops = [(drop, images)] if drop is not None else []
    names = [name for name in DETECTORS.names()]
    intervals = replay_warnings(run_dir, names, frozen_every=frozen_every)
    intervals["fused"] = fuse(intervals, fused)
    return ({n: score(i, labelled, images, horizon) for n, i in intervals.items()},
            {n: score(i, drops, images, horizon) for n, i in intervals.items()}, intervals)


def online_accuracy(run_dir: Path) -> tuple[float | None, float | None, int]:
    """(online %, frozen %, resets) over the whole run, from the step rows' labels."""
    from stream_monitor.rundir import RunDirectory

    directory = RunDirectory(run_dir)
    steps = directory.rows("steps")
    images = sum(r["images"] for r in steps if r["correct"] is not None)
    frozen_seen = sum(r["frozen_seen"] or 0 for r in steps)
    resets = sum(1 for e in directory.rows("events") if e["kind"] == "reset")
    return (100.0 * sum(r["correct"] or 0 for r in steps) / images if images else None,
            100.0 * sum(r["frozen_correct"] or 0 for r in steps) / frozen_seen if frozen_seen else None, resets)


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def report(cases: Sequence[Case], work: Path, stem: Path, args: argparse.Namespace, fused: Sequence[str]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from stream_monitor.config import load_config

    sha, rows = git_sha(), []
    labelled: dict[str, list[Score]] = {}
    drops: dict[str, list[Score]] = {}
    quiet: dict[str, list[Score]] = {}
    fired_at: dict[str, dict[str, int | None]] = {}
    for case in cases:
        run_dir = work / "runs" / case.name
        if not (run_dir / "done.json").exists():
            print(f"{case.name}: not run yet, left out")
            continue
        by_event, by_drop, intervals = case_rows(case, run_dir, args.window, args.margin, args.sustain,
                                                 args.horizon, fused, args.probe_every, args.replay_frozen_every)
        fired_at[case.name] = {n: (int(i[0][0]) if i else None) for n, i in intervals.items()}
        for name in by_event:
            (labelled if case.collapsing else quiet).setdefault(name, []).append(by_event[name])
            if case.collapsing:
                drops.setdefault(name, []).append(by_drop[name])
            e, d = by_event[name], by_drop[name]
            rows.append({"case": case.name, "collapsing": case.collapsing, "detector": name, "events": e.events,
                         "detected": e.detected, "leads": ",".join(map(str, e.leads)), "false_alarms": e.false_alarms,
                         "images": e.images, "drop_events": d.events, "drop_detected": d.detected,
                         "drop_leads": ",".join(map(str, d.leads)), "first_warning": fired_at[case.name][name],
                         "window": args.window, "margin": args.margin, "sustain": args.sustain,
                         "horizon": args.horizon, "probe_every": args.probe_every,
                         "replay_frozen_every": args.replay_frozen_every, "git_sha": sha})
    if not rows:
        print("no finished run to score")
        return
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pa_csv.write_csv(table, stem.with_suffix(".csv"))
    pq.write_table(table, stem.with_suffix(".parquet"))
    delta = load_config(None).estimation.risk_delta
    names = sorted(set(labelled) | set(quiet), key=lambda n: (n != "fused", n))
    print(f"\n### collapse warnings (git {sha}; {args.images:,} images per run; events: windows of "
          f"{args.window:,} images, margin {args.margin:g} points, sustain {args.sustain}; fused = "
          f"{' + '.join(fused)}"
          + (f"; replayed as if the frozen model scored every {args.replay_frozen_every}th batch"
             if args.replay_frozen_every else "") + ")\n")
    print("| detector | labelled events | recall | median lead | worst lead | probe drops | recall | median lead "
          "| worst lead | false alarms (quiet runs) | per million images | quiet runs fired |")
    print("|---" * 12 + "|")
    for name in names:
        s = summarise(name, labelled.get(name, []), drops.get(name, []), quiet.get(name, []))
        print(f"| {name} | {s.events} | {_fmt(s.recall, '.0%')} | {_fmt(s.median_lead)} | {_fmt(s.worst_lead)} | "
              f"{s.drop_events} | {_fmt(s.drop_recall, '.0%')} | {_fmt(s.drop_median_lead)} | "
              f"{_fmt(s.drop_worst_lead)} | {s.false_alarms} | {s.false_alarms_per_million:,.0f} | "
              f"{s.runs_with_false_alarm}/{s.quiet_runs}" + (f" (delta {delta:g})" if name == "risk-test" else "")
              + " |")
    print("\n### first warning per run (stream position; - none)\n")
    shown = [n for n in names if n != "fused"]
    print("| run | fused | " + " | ".join(shown) + " |")
    print("|---" * (len(shown) + 2) + "|")
    for case_name, first in fired_at.items():
        print(f"| {case_name} | {_fmt(first.get('fused'), ',')} | "
              + " | ".join(_fmt(first.get(n), ',') for n in shown) + " |")
    recovery = []
    for case in cases:
        plain, again = work / "runs" / case.name, work / "runs" / (case.name + "-reset")
        if not (plain / "done.json").exists():
            continue
        online, frozen, _ = online_accuracy(plain)
        if (again / "done.json").exists():
            with_reset, _, resets = online_accuracy(again)
            note = ""
        elif fired_at.get(case.name, {}).get("fused") is None:
            with_reset, resets, note = online, 0, "same run (no fused warning)"
        else:
            continue
        recovery.append({"case": case.name, "collapsing": case.collapsing, "frozen_acc": frozen, "online_acc": online,
                         "online_acc_reset": with_reset, "resets": resets, "note": note, "git_sha": sha})
    if recovery:
        pa_csv.write_csv(pa.Table.from_pylist(recovery), stem.parent / f"{stem.name}_recovery.csv")
        print("\n### online accuracy with and without estimation.reset_on_warning (%, whole run)\n")
        print("| run | frozen model | online | online, reset on warning | resets | note |")
        print("|---|---|---|---|---|---|")
        for r in recovery:
            print(f"| {r['case']} | {_fmt(r['frozen_acc'], '.1f')} | {_fmt(r['online_acc'], '.1f')} | "
                  f"{_fmt(r['online_acc_reset'], '.1f')} | {r['resets']} | {r['note']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3_200, help="images per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in processes")
    parser.add_argument("--reset", action="store_true", help="also the runs with estimation.reset_on_warning")
    parser.add_argument("--score-only", action="store_true", help="score the finished runs, run nothing")
    parser.add_argument("--set", choices=sorted(CASE_SETS), default="benchmark", dest="case_set",
                        help="the benchmark's cases, or the development set a new detector is designed on")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all of the set)")
    parser.add_argument("--work", type=Path, default=Path("runs/collapse_warnings"))
    parser.add_argument("--stem", type=Path, default=Path("benchmarks/results/collapse_warnings"))
    parser.add_argument("--window", type=int, default=640, help="images per labelled-collapse window")
    parser.add_argument("--probe-every", type=int, default=10, help="steps between the probe drop's windows")
    parser.add_argument("--margin", type=float, default=5.0, help="accuracy points")
    parser.add_argument("--sustain", type=int, default=2, help="consecutive collapsed windows per event")
    parser.add_argument("--horizon", type=int, default=2_560, help="images a warning may precede its event by")
    parser.add_argument("--fused", default=None, help="the fused warning's detectors (default estimation.warning's)")
    parser.add_argument("--replay-frozen-every", type=int, default=None, metavar="N",
                        help="score as if the frozen model had scored every N-th batch only (a multiple of the "
                             "runs' 2; the default run's cadence is 8)")
    args = parser.parse_args()
    from stream_monitor.estimation.detectors import DEFAULT_WARNING, parse_detectors

    fused = parse_detectors(args.fused) if args.fused else DEFAULT_WARNING
    cases = [c for c in CASE_SETS[args.case_set] if args.cases is None or c.name in args.cases.split(",")]
    if not args.score_only:
        run_all(cases, args.work, args.images, args.jobs, reset=False)
        if args.reset:
            run_all([c for c in cases if _fused_fired(c, args.work, fused)], args.work, args.images, args.jobs,
                    reset=True, fused=fused)
    report(cases, args.work, args.stem, args, fused)


def _fused_fired(case: Case, work: Path, fused: Sequence[str]) -> bool:
    """Whether the fused warning fires on the case's plain run (else its reset run would be the same)."""
    from stream_monitor.evaluation import replay_warnings

    intervals = replay_warnings(work / "runs" / case.name, list(fused))
    return any(intervals.values())


if __name__ == "__main__":
    main()
