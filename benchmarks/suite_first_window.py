"""A longer suite against a shorter one, on the windows both have: the first probe window.

    python benchmarks/suite_first_window.py bench-out/estimate_suite/runs/7b13c84 \\
        benchmarks/results/estimate_suite_3ac3aeb.csv [--images 6500]

The suite's runs are deterministic in stream order, so the first probe window of a 19,200-image
run (`estimate_suite.py --keep-runs`) is the one window of a 6,500-image run of the same case and
adapter: same images, same adaptation, same truth; except for `drift-into-contrast`, whose drift
starts at 30% of the run's length (left out by default, `--exclude`). This prints, per (case, adapter), the newer
release's headline error on that window (and whether its interval held the truth) beside the
older release's error from its CSV, then the mean over the pairs both have.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite_scoring import TARGETS, headline_scores, read_columns  # noqa: E402


def first_windows(runs: Path) -> dict[tuple[str, str], dict[str, tuple[float, bool | None]]]:
    """(case, adapter) -> target -> (|error|, interval held the truth) on the first probe window."""
    out = {}
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        case, adapter, _ = folder.name.rsplit("-", 2)
        run = next((p for p in folder.iterdir() if p.is_dir()), None)
        probes = read_columns(run, "probes") if run else {}
        if not probes.get("step"):
            continue
        first = {name: column[:1] for name, column in probes.items()}
        scores = headline_scores(first)
        out[(case, adapter)] = {t: (scores[t][0].mae, None if scores[t][0].coverage is None
                                    else scores[t][0].coverage == 1.0) for t in TARGETS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="runs/<SHA> of a suite run with --keep-runs")
    parser.add_argument("older", type=Path, help="the older release's suite CSV")
    parser.add_argument("--images", type=int, default=6500, help="the older suite's images per run")
    parser.add_argument("--exclude", default="drift-into-contrast",
                        help="comma-separated cases whose stream depends on the run's length")
    args = parser.parse_args()
    excluded = set(args.exclude.split(","))
    older = {(r["case"], r["adapter"], r["target"]): float(r["mae"]) for r in csv.DictReader(args.older.open())
             if r["estimator"] == "headline" and int(r["images"]) == args.images and r["mae"] not in ("", "nan")}
    newer = {key: value for key, value in first_windows(args.runs).items() if key[0] not in excluded}
    print("| case | adapter | source, older | source, newer (interval) | online, older | online, newer (interval) |")
    print("|---|---|---|---|---|---|")
    pooled: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (case, adapter), targets in sorted(newer.items()):
        cells = []
        for target in TARGETS:
            error, held = targets[target]
            old = older.get((case, adapter, target))
            band = "no interval" if held is None else "in" if held else "out"
            cells += ["-" if old is None else f"{old:.1f}", f"{error:.1f} ({band})"]
            if old is not None:
                pooled.setdefault((adapter, target), []).append((old, error))
        print(f"| {case} | {adapter} | " + " | ".join(cells) + " |")
    print("\n| adapter | target | cases | mean error, older | mean error, newer | worst, older | worst, newer |")
    print("|---|---|---|---|---|---|---|")
    for (adapter, target), pairs in sorted(pooled.items()):
        old, new = zip(*pairs)
        print(f"| {adapter} | {target} | {len(pairs)} | {statistics.mean(old):.1f} | {statistics.mean(new):.1f} "
              f"| {max(old):.1f} | {max(new):.1f} |")


if __name__ == "__main__":
    main()
