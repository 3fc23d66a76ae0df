"""Score the held-out suite's recorded runs again with this checkout's shipped calibrations.

    python benchmarks/suite_replay.py RUNS_ROOT [--stem benchmarks/results/estimate_suite_replay_SHA]

A run records its readings, raw scores and window features, none of which depend on the
calibration (`evaluation.replay`), so a change of the calibrations' rules (not of the estimators or
the loop) is measured on the suite without running it again: every probe row's headline, interval
and support flag is derived again, with the frozen model's shipped file of this checkout and the
adapter's shipped file if there is one (as a run of this checkout would resolve them), and scored
as `estimate_suite.py` scores a run (`suite_scoring.headline_scores`). Each row also has the
figures the run recorded, for the A/B on the same windows; STEM_windows has one row per probe window,
target and kind (recorded, replayed): value, interval, flag, method and truth.

RUNS_ROOT holds one folder per suite run, `CASE-ADAPTER-IMAGES/<run directory>` (estimate_suite.py's
--work layout). Writes STEM.csv and STEM.parquet with the git SHA; prints a table per target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _record import git_sha  # noqa: E402
from estimate_suite import ADAPTERS, CASES  # noqa: E402
from suite_scoring import TARGETS, headline_scores, read_columns, window_rows  # noqa: E402


def run_directory(folder: Path) -> Path | None:
    """The run directory inside a suite run's folder (the one with run.json)."""
    found = sorted(p.parent for p in folder.glob("*/run.json"))
    return found[-1] if found else None


def as_columns(rows: list[dict]) -> dict[str, list]:
    keys = {k for r in rows for k in r}
    return {k: [r.get(k) for r in rows] for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--stem", type=Path, default=None)
    args = parser.parse_args()

    from stream_monitor.calibration import SHIPPED, Calibration
    from stream_monitor.evaluation import replayed_probes

    frozen = Calibration.load(sorted((SHIPPED / "frozen").glob("*.json"))[0])
    sha, rows, windows = git_sha(), [], []
    for case in CASES:
        for adapter in ADAPTERS:
            folders = sorted(args.root.glob(f"{case.name}-{adapter}-*"))
            run_dir = run_directory(folders[-1]) if folders else None
            if run_dir is None:
                continue
            probes = {"recorded": read_columns(run_dir, "probes"),
                      "replayed": as_columns(replayed_probes(run_dir, frozen_calibration=frozen))}
            recorded, replayed = (headline_scores(probes[kind]) for kind in ("recorded", "replayed"))
            windows += [{"case": case.name, "adapter": adapter, "kind": kind, **w, "git_sha": sha}
                        for kind, columns in probes.items() for w in window_rows(columns)]
            for target in TARGETS:
                for kind, scores in (("recorded", recorded), ("replayed", replayed)):
                    score, methods = scores[target]
                    rows.append({"case": case.name, "adapter": adapter, "target": target, "kind": kind,
                                 **score.row(), "methods": methods, "run": str(run_dir), "git_sha": sha})
            print(f"{case.name} {adapter}: done", flush=True)
    if args.stem:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        args.stem.parent.mkdir(parents=True, exist_ok=True)
        for stem, data in ((args.stem, rows), (args.stem.with_name(args.stem.name + "_windows"), windows)):
            table = pa.Table.from_pylist(data)
            pa_csv.write_csv(table, stem.with_suffix(".csv"))
            pq.write_table(table, stem.with_suffix(".parquet"))
    fmt = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    for target in TARGETS:
        print(f"\n### {target} headline, recorded (the run's own calibrations) -> replayed (git {sha})\n")
        print("| case | adapter | MAE | worst | 90% coverage | out of support |")
        print("|---|---|---|---|---|---|")
        mine = [r for r in rows if r["target"] == target]
        for rec, rep in zip(mine[::2], mine[1::2]):
            print(f"| {rec['case']} | {rec['adapter']} | {fmt(rec['mae'])} -> {fmt(rep['mae'])} | "
                  f"{fmt(rec['worst'])} -> {fmt(rep['worst'])} | {fmt(rec['coverage'], '.2f')} -> "
                  f"{fmt(rep['coverage'], '.2f')} | {fmt(rec['out_of_support'], '.2f')} -> "
                  f"{fmt(rep['out_of_support'], '.2f')} |")
        for adapter in ADAPTERS:
            pairs = [(a, b) for a, b in zip(mine[::2], mine[1::2]) if a["adapter"] == adapter and a["mae"] is not None
                     and b["mae"] is not None]
            if pairs:
                print(f"| **all cases** | {adapter} | {statistics.mean(a['mae'] for a, _ in pairs):.1f} -> "
                      f"{statistics.mean(b['mae'] for _, b in pairs):.1f} (mean) | "
                      f"{max(a['worst'] for a, _ in pairs):.1f} -> {max(b['worst'] for _, b in pairs):.1f} | "
                      f"{sum(a['coverage'] or 0 for a, _ in pairs) / len(pairs):.2f} -> "
                      f"{sum(b['coverage'] or 0 for _, b in pairs) / len(pairs):.2f} (mean) | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
