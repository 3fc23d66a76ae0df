"""Add the full-range meta-set to a calibration: refit its Sentinel and nuclear-norm lines on the
held-out-stream windows plus the meta-set's, learn the headline rules with leave-one-family-out
cross-validation, and write it in format 3 (issue 25).

    python benchmarks/refit_calibration.py OLD.json --metaset benchmarks/results/metaset_embedded.jsonl \\
        [benchmarks/results/metaset_embedded_uncalibrated.jsonl] [--long-streams RDUMB.json TENT.json] \\
        --out NEW.json [--adapter rdumb] [--report benchmarks/results/headline_rule_X.json]

`--adapter` names the meta-set's served feed whose online rule the file gets (the file's own
adapter); without it (the frozen model's file) the source rule and the online rule of adapters
without a calibration of their own (the anchored estimate, measured leave-one-adapter-out). Every
file gets the anchored estimate's line (`anchor_fit`): over all the meta-set's adapters and the
probe windows of long held-out streams in the `--long-streams` calibrations (their adapter's). Prints,
per family (and per held-out adapter) and target, the held-out error of the headline and of each
estimator and the interval coverage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from stream_monitor.calibration.format import Calibration
from stream_monitor.calibration.fullrange import fit_full_range
from stream_monitor.calibration.rule import Gap, point_gaps
from stream_monitor.metaset import merge_windows, read_windows

ROOT = Path(__file__).resolve().parent.parent


def refit(old: dict, windows: list[dict], adapter: str | None, gaps: list[Gap] = ()) -> tuple[Calibration, list[dict]]:
    """`OLD.json`'s mapping with the meta-set and the rules (`calibration.fullrange.fit_full_range`)."""
    fitted = fit_full_range(old, windows, adapter, gaps)
    return fitted.calibration, fitted.report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("--metaset", type=Path, nargs="+", required=True,
                        help="meta-set files over the same domains (their served feeds are merged)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--long-streams", type=Path, nargs="*", default=[],
                        help="adapter calibrations whose held-out-stream windows join the anchor line")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    windows = merge_windows(*(read_windows(path) for path in args.metaset))
    if not windows:
        print(f"{', '.join(map(str, args.metaset))} has no meta-set window; build it with benchmarks/build_metaset.py", file=sys.stderr)
        return 2
    gaps = []
    for path in args.long_streams:
        data = json.loads(path.read_text())
        gaps += point_gaps(data["points"], data["adapter"])
    calibration, report = refit(json.loads(args.old.read_text()), windows, args.adapter, gaps)
    calibration.save(args.out)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT).stdout.strip()
    command = "python " + " ".join(sys.argv)
    if args.report:
        args.report.write_text(json.dumps({"command": command, "git_sha": sha, "windows": len(windows),
                                           "rules": calibration.rules, "families": report}, indent=1))
    print(f"{command}  (git {sha}, {len(windows)} meta-set windows)")
    print("| target | family | windows | truth range | headline MAE | worst | 90% coverage | out of support |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report:
        print(f"| {r['target']} | {r['family']} | {r['windows']} | {r['truth_range'][0]:.0f}-{r['truth_range'][1]:.0f} "
              f"| {fmt(r['headline_mae'])} | {fmt(r['headline_worst'])} | {fmt(r['coverage'])} "
              f"| {r['out_of_support']:.2f} |")
    for target, rule in calibration.rules.items():
        for region in ("inside", "outside"):
            print(f"{target} rule, {region}: " + ", ".join(
                f"{c['estimator']} {c['mae']:.2f} [{c['low']:+.1f}, {c['high']:+.1f}]" for c in rule[region]))
    return 0


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
