"""The held-out suite's goals table, per adapter and target, from a suite or suite-replay CSV.

    python benchmarks/suite_summary.py benchmarks/results/estimate_suite_replay_SHA.csv [--kind replayed]

Reads the headline rows (`estimate_suite.py`'s `estimator == "headline"`, or `suite_replay.py`'s
rows of one `kind`) and prints, per adapter and target over the cases: the mean MAE, the worst
window, and how many cases meet issue 25's goals (MAE <= 3 points, worst window <= 10, 90%
interval coverage >= 85%), with the windows whose interval held the truth.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from estimate_suite import ADAPTERS  # noqa: E402

GOAL_MAE, GOAL_WORST, GOAL_COVERAGE = 3.0, 10.0, 0.85


def _number(value: str) -> float | None:
    return None if value in ("", "nan", "None") else float(value)


def headline_rows(path: Path, kind: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(path.open()))
    if rows and "kind" in rows[0]:
        return [r for r in rows if r["kind"] == kind]
    return [r for r in rows if r.get("estimator") == "headline"]


def table(rows: list[dict[str, str]]) -> list[str]:
    out = ["| adapter | target | cases | mean MAE | worst window | cases with MAE <= 3 | cases with worst <= 10 "
           "| cases with coverage >= 85% | windows covered |", "|---|---|---|---|---|---|---|---|---|"]
    for adapter in [a for a in ADAPTERS if any(r["adapter"] == a for r in rows)]:
        for target in ("online", "source"):
            mine = [r for r in rows if r["adapter"] == adapter and r["target"] == target and _number(r["mae"]) is not None]
            if not mine:
                continue
            mae = [_number(r["mae"]) for r in mine]
            worst = [_number(r["worst"]) for r in mine]
            coverage = [(_number(r["coverage"]), int(r["windows"])) for r in mine]
            windows = sum(n for _, n in coverage)
            covered = round(sum((c or 0.0) * n for c, n in coverage))
            held = f"{covered}/{windows} ({covered / windows:.0%})"
            if all(c is None for c, _ in coverage):
                held = "no interval"
            out.append(f"| {adapter} | {target} | {len(mine)} | {sum(mae) / len(mae):.1f} | {max(worst):.1f} | "
                       f"{sum(m <= GOAL_MAE for m in mae)}/{len(mine)} | {sum(w <= GOAL_WORST for w in worst)}/{len(mine)} | "
                       f"{sum(c is not None and c >= GOAL_COVERAGE for c, _ in coverage)}/{len(mine)} | {held} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--kind", default="replayed", help="suite_replay.py's rows to read: replayed or recorded")
    args = parser.parse_args(argv)
    print("\n".join(table(headline_rows(args.csv, args.kind))))


if __name__ == "__main__":
    main()
