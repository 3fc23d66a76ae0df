"""False alarms of every collapse detector and of the fused warning on finished runs that nobody
made for the collapse benchmark (the held-out estimate suite's runs, say), replayed with the live
loop's rule, and the risk test's alarms on the runs where its null holds.

    python benchmarks/warning_false_alarms.py RUN_DIR... [--fused NAMES] [--stem STEM]

Per run: its labelled collapse events (DESIGN.md 6, the collapse benchmark's definition); a warning
outside every event's span (and the horizon before it) is a false alarm. Per detector: runs on
which it raised one, their count and the rate per million images. The risk test's null ("the
running error stays within its tolerance of the clean error") is checked with the labels on
windows of `--null-window` images: on a run where no window's served error is above the clean
error's upper bound plus the tolerance, an alarm is a false alarm in the test's own sense, which
its delta bounds. Writes STEM.csv and STEM.parquet (one row per run and detector, with the git SHA)
and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import git_sha  # noqa: E402
from collapse_warnings import fuse, score  # noqa: E402


@dataclass(frozen=True)
class RiskNull:
    """Whether the risk test's null held on a run: the worst window's served error (labels) against
    the test's alarm level (the clean error's upper bound plus the tolerance)."""

    worst_error: float | None
    alarm_level: float | None

    @property
    def holds(self) -> bool | None:
        if self.worst_error is None or self.alarm_level is None:
            return None
        return self.worst_error <= self.alarm_level


def risk_null(run_dir: Path, window: int) -> RiskNull:
    from stream_monitor.estimation.detectors import DETECTORS, DetectorSetup
    from stream_monitor.rundir import RunDirectory

    run = RunDirectory(run_dir)
    test = DETECTORS.get("risk-test").for_model(DetectorSetup.of(run.config(), run.num_classes, run.context()))
    level = None if test.source_upper is None else test.source_upper + test.tolerance
    worst, seen, wrong = None, 0, 0
    for row in run.rows("steps"):
        if row.get("correct") is None or not row["images"]:
            continue
        seen, wrong = seen + row["images"], wrong + row["images"] - row["correct"]
        if seen >= window:
            worst = max(worst or 0.0, wrong / seen)
            seen = wrong = 0
    return RiskNull(worst, level)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--fused", default=None, help="the fused warning's detectors (default estimation.warning's)")
    parser.add_argument("--stem", type=Path, default=None)
    parser.add_argument("--window", type=int, default=640, help="images per labelled-collapse window")
    parser.add_argument("--margin", type=float, default=5.0)
    parser.add_argument("--sustain", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=2_560)
    parser.add_argument("--null-window", type=int, default=2_560, help="images per window of the risk test's null")
    args = parser.parse_args()

    from stream_monitor.estimation.detectors import DEFAULT_WARNING, DETECTORS, parse_detectors
    from stream_monitor.evaluation import collapse_events, replay_warnings
    from stream_monitor.rundir import RunDirectory

    fused = parse_detectors(args.fused) if args.fused else DEFAULT_WARNING
    names = list(DETECTORS.names())
    sha, rows = git_sha(), []
    for run_dir in args.runs:
        steps = RunDirectory(run_dir).rows("steps")
        images = sum(r["images"] + (r["skipped"] or 0) for r in steps)
        events = [(e.start, e.stop) for e in collapse_events(run_dir, args.window, args.margin, args.sustain)]
        intervals = replay_warnings(run_dir, names)
        intervals["fused"] = fuse(intervals, fused)
        null = risk_null(run_dir, args.null_window)
        for name, spans in intervals.items():
            s = score(spans, events, images, args.horizon)
            rows.append({"run": str(run_dir), "detector": name, "images": images, "events": len(events),
                         "detected": s.detected, "false_alarms": s.false_alarms,
                         "first_warning": int(spans[0][0]) if spans else None,
                         "risk_null_holds": null.holds, "worst_error": null.worst_error,
                         "alarm_level": null.alarm_level, "git_sha": sha})
    if args.stem:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        args.stem.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows)
        pa_csv.write_csv(table, args.stem.with_suffix(".csv"))
        pq.write_table(table, args.stem.with_suffix(".parquet"))
    runs = {r["run"] for r in rows}
    total = sum(r["images"] for r in rows if r["detector"] == "fused")
    with_events = sum(1 for r in rows if r["detector"] == "fused" and r["events"])
    print(f"\n### false alarms on {len(runs)} runs, {total:,} images (git {sha}; {with_events} runs with a labelled "
          f"collapse; fused = {' + '.join(fused)})\n")
    print("| detector | runs with a false alarm | false alarms | per million images | labelled events detected |")
    print("|---|---|---|---|---|")
    for name in sorted({r["detector"] for r in rows}, key=lambda n: (n != "fused", n)):
        mine = [r for r in rows if r["detector"] == name]
        alarms = sum(r["false_alarms"] for r in mine)
        print(f"| {name} | {sum(1 for r in mine if r['false_alarms'])}/{len(mine)} | {alarms} | "
              f"{1e6 * alarms / total:,.1f} | {sum(r['detected'] for r in mine)}/{sum(r['events'] for r in mine)} |")
    risk = [r for r in rows if r["detector"] == "risk-test"]
    for label, holds in (("held", True), ("did not hold", False), ("could not be checked (no calibration of the served "
                                                                   "feed: the test does not run)", None)):
        mine = [r for r in risk if r["risk_null_holds"] is holds]
        print(f"risk test: its null {label} on {len(mine)} of {len(risk)} runs; it fired on "
              f"{sum(1 for r in mine if r['first_warning'] is not None)} of them")
    print(f"(the null holds where the served error is at most the clean error's upper bound + the tolerance on every "
          f"{args.null_window:,}-image window)")
    for r in risk:
        print(f"  {Path(r['run']).name}: worst window error "
              f"{'-' if r['worst_error'] is None else format(100 * r['worst_error'], '.1f')}%, alarm level "
              f"{'-' if r['alarm_level'] is None else format(100 * r['alarm_level'], '.1f')}%, fired "
              f"{'-' if r['first_warning'] is None else format(r['first_warning'], ',')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
