"""Two releases' held-out suite results side by side: the headline estimates' error per case.

    python benchmarks/compare_suites.py benchmarks/results/estimate_suite_3ac3aeb.csv \
        benchmarks/results/estimate_suite_e400447.csv
    python benchmarks/compare_suites.py benchmarks/results/estimate_suite_3ac3aeb_50k.csv \
        benchmarks/results/estimate_suite_replay_c6bdfd8_50k.csv     # a replay CSV: its replayed rows

Only the (case, adapter) pairs both files have are compared. For each target the error is the
headline's MAE over the case's probe windows; "in"/"out" says whether the newer release's 90%
interval held the truth (one window per case; with several, the share that did).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite_summary import headline_rows  # noqa: E402

ADAPTERS = ("rdumb", "tent", "source")
TARGETS = ("source", "online")


def headlines(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    """(case, adapter, target) -> the headline's row: of a suite CSV (`estimate_suite.py`), or the
    replayed rows of a replay CSV (`suite_replay.py`: the runs scored with that checkout's files)."""
    return {(r["case"], r["adapter"], r["target"]): r for r in headline_rows(path, "replayed")}


def coverage(row: dict[str, str]) -> str:
    if row["coverage"] in ("", "nan"):
        return "no interval"
    share = float(row["coverage"])
    return "in" if share == 1.0 else "out" if share == 0.0 else f"{share:.0%} in"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("older", type=Path)
    parser.add_argument("newer", type=Path)
    args = parser.parse_args()
    old, new = headlines(args.older), headlines(args.newer)
    pairs = sorted({(c, a) for c, a, _ in new if any((c, a, t) in old for t in TARGETS)},
                   key=lambda pair: (pair[0], ADAPTERS.index(pair[1]) if pair[1] in ADAPTERS else 9))
    older, newer = (path.stem.removeprefix("estimate_suite_replay_").removeprefix("estimate_suite_")
                    for path in (args.older, args.newer))
    print(f"| case | adapter | source, {older} | source, {newer} | online, {older} | online, {newer} |")
    print("|---|---|---|---|---|---|")
    for case, adapter in pairs:
        cells = []
        for target in TARGETS:
            before, after = old.get((case, adapter, target)), new.get((case, adapter, target))
            cells.append("n/a" if before is None else f"{float(before['mae']):.1f}")
            cells.append("n/a" if after is None else f"{float(after['mae']):.1f} ({coverage(after)})")
        print(f"| {case} | {adapter} | " + " | ".join(cells) + " |")
    print()
    print(f"| adapter | target | cases | mean error, {older} | mean error, {newer} | worst, {older} | worst, {newer} |")
    print("|---|---|---|---|---|---|---|")
    for adapter in ADAPTERS:
        for target in TARGETS:
            keys = [(c, a, target) for c, a in pairs if a == adapter and (c, a, target) in old and (c, a, target) in new]
            if keys:
                print(f"| {adapter} | {target} | {len(keys)} | {statistics.mean(float(old[k]['mae']) for k in keys):.1f} | "
                      f"{statistics.mean(float(new[k]['mae']) for k in keys):.1f} | "
                      f"{max(float(old[k]['worst']) for k in keys):.1f} | {max(float(new[k]['worst']) for k in keys):.1f} |")


if __name__ == "__main__":
    main()
