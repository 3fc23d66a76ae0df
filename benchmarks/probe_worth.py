"""What the probe's flips earn: their error on the calibration's own held-out streams, beside the
frozen model's Sentinel on the same windows, each fitted without the stream it is scored on.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_worth.py --stem benchmarks/results/probe_worth

Both flips estimates (the weighted flips of the cycle's first images, `weighted-flips`, and of the
spread set, `spread-flips`) estimate the frozen model's accuracy on the window (Entropy Enigma,
Press et al., ICML 2024), which the frozen feed's Sentinel estimates too. The probe's forwards are
most of what monitoring costs on a CPU (docs/monitoring-cost.md); this measures what they buy.

Data: the `points` of the shipped calibration files (one per probe window of the calibration's
runs: the held-out CCC walks over the four held-out corruptions, 2 cycles of 1,000 steps each, and
single-domain runs), never an evaluation-suite case. Leave-one-run-out: for each run (a stream with
all its cycles, or a domain), f per cycle step (`calibration.fit.fit_flips`) and the frozen
Sentinel (`calibration.fit.sentinel_set`) are fitted on the other runs' points and read that run's
windows. The Sentinel here is trained on the points alone (the shipped one also sees the
full-range meta-set), so it is not flattered.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from stream_monitor.calibration import Calibration
from stream_monitor.calibration.fit import fit_flips, sentinel_set
from stream_monitor.estimation.sentinel import SentinelRegressor

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "stream_monitor" / "assets" / "calibrations"
FILES = {"rdumb": SHIPPED / "embedded_resnet20_rdumb_probe1000_cycle1000.json",
         "tent": SHIPPED / "embedded_resnet20_tent_probe1000_cycle1000.json"}
ESTIMATES = ("weighted-flips", "spread-flips", "frozen sentinel")


def _run_of(point: dict) -> str:
    return point["domain"].split("#")[0]


def _kind(run: str) -> str:
    return "long stream" if run.startswith("heldout-ccc") else "domain"


def _flips(maps: dict, point: dict, key: str, size: str) -> float | None:
    f = maps.get(int(point["cycle_step"]))
    if f is None or point.get(key) is None:
        return None
    return f(point[key], point.get(size) or f.probe_size)[0]


def held_out_errors(calibration: Calibration) -> list[dict]:
    """One row per point: each estimate's error (estimate - truth), fitted without the point's run."""
    points = [p for p in calibration.points
              if p.get("true_source_acc") is not None and p.get("weighted_flips") is not None]
    rows = []
    for run in sorted({_run_of(p) for p in points}):
        train = [p for p in points if _run_of(p) != run]
        refitted = dataclasses.replace(calibration, fits=fit_flips(train),
                                       spread_fits=fit_flips(train, "spread_weighted_flips"))
        weighted, spread = refitted.flips_calibrations(), refitted.flips_calibrations(spread=True)
        training = sentinel_set(train, frozen=True)  # None where the points kept no frozen features
        sentinel = SentinelRegressor(training) if training is not None else None
        for p in (p for p in points if _run_of(p) == run):
            values = {"weighted-flips": _flips(weighted, p, "weighted_flips", "probe_size"),
                      "spread-flips": _flips(spread, p, "spread_weighted_flips", "spread_size"),
                      "frozen sentinel": sentinel(p["frozen_sentinel_features"])
                      if sentinel is not None and p.get("frozen_sentinel_features") else None}
            rows.append({"run": run, "kind": _kind(run), "cycle_step": int(p["cycle_step"]),
                         "truth": p["true_source_acc"],
                         **{name: None if v is None else v - p["true_source_acc"] for name, v in values.items()}})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for kind in sorted({r["kind"] for r in rows}):
        for name in ESTIMATES:
            errors = np.array([r[name] for r in rows if r["kind"] == kind and r[name] is not None])
            if len(errors):
                out.append({"kind": kind, "estimate": name, "windows": int(len(errors)),
                            "mae": float(np.abs(errors).mean()), "bias": float(errors.mean()),
                            "worst": float(np.abs(errors).max())})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default=",".join(FILES), help="shipped calibrations to read (rdumb,tent)")
    parser.add_argument("--stem", help="write STEM.json with every row and the summary")
    args = parser.parse_args(argv)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"git": sha, "command": " ".join(["python", "benchmarks/probe_worth.py", *(argv or sys.argv[1:])]),
              "adapters": {}}
    print("| calibration | runs | windows | estimate (source target) | MAE | bias | worst |")
    print("|---|---|---|---|---|---|---|")
    for adapter in args.adapters.split(","):
        rows = held_out_errors(Calibration.load(FILES[adapter]))
        table = summary(rows)
        report["adapters"][adapter] = {"rows": rows, "summary": table}
        for s in table:
            print(f"| {adapter} | {s['kind']} | {s['windows']} | {s['estimate']} | {s['mae']:.2f} | "
                  f"{s['bias']:+.2f} | {s['worst']:.1f} |")
    if args.stem:
        Path(args.stem + ".json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
