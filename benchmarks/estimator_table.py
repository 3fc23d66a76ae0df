"""One table of every estimator's error over several evaluation runs (issue 6's must-show).

    python benchmarks/estimator_table.py RUN_DIR [RUN_DIR ...] [--calibration FILE ...] [--frozen-calibration FILE]
        [--sentinel-features N] [--detectors NAMES]

Each RUN_DIR is a `stream-monitor run` on a stream with labels. Per run, the weighted flips are
estimated again with the `--calibration` file made for that run's adapter (when one is given;
otherwise the run's own estimates are scored), the frozen feed's nuclear norm and Sentinel with
`--frozen-calibration` (one file serves every adapter of a model), then every estimator is scored with
`stream_monitor.evaluation.score_estimators`. Prints, per target, a Markdown table: one row per
estimator, one column per run, cells "MAE (bias)" in accuracy points, the best estimator per run in
bold, and first the headline (what the dashboard showed: `stream_monitor.estimation.pipeline`); then the collapse-warning scores of each run. `--sentinel-features 17` (or 20)
scores the Sentinels on their calibrations' first N features only: the ablation of the class
marginal (and the Duos agreement) on the same meta-set. `--detectors entropy-ema,flip-rate,...`
scores the warnings those detectors give when replayed on each run's rows (fused, then one row per
detector) instead of the runs' own warnings.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from stream_monitor.calibration import Calibration, CalibrationMismatch
from stream_monitor.estimation.detectors import parse_detectors
from stream_monitor.estimation.sentinel import leading
from stream_monitor.evaluation import HEADLINE, evaluate
from stream_monitor.rundir import RunDirectory


def run_label(run_dir: Path) -> str:
    info = RunDirectory(run_dir).info()
    stream = info.stream.split("/")[-1].replace("_transition+speed_", " s").replace("baseline_", "b")
    lr = info.hyperparameters.get("lr")
    return f"{info.adapter}{f' lr {lr:g}' if lr is not None else ''} {stream.split('_seed')[0]}"


def matching(run_dir: Path, calibrations: list[Calibration]) -> Calibration | None:
    provenance = RunDirectory(run_dir).provenance()
    for calibration in calibrations:
        try:
            calibration.check(provenance)
        except CalibrationMismatch:
            continue
        return calibration
    return None


def with_sentinel_features(calibration: Calibration, width: int) -> Calibration:
    """The calibration with both Sentinel training sets cut to their first `width` features."""
    def cut(stats):
        return stats and {**stats, "sentinel": stats.get("sentinel") and leading(stats["sentinel"], width)}

    return replace(calibration, served_stats=cut(calibration.served_stats), frozen_stats=cut(calibration.frozen_stats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--calibration", type=Path, action="append", default=[])
    parser.add_argument("--frozen-calibration", type=Path, default=None,
                        help="the frozen feed's nuclear norm and Sentinel from this file (any adapter, same model)")
    parser.add_argument("--window", type=int, default=5000, help="images per collapse window")
    parser.add_argument("--sentinel-features", type=int, default=None,
                        help="score the Sentinels on their calibrations' first N features (17: the paper's)")
    parser.add_argument("--detectors", default=None,
                        help="replay these detectors (comma-separated) on each run instead of its own warnings")
    args = parser.parse_args()
    detectors = parse_detectors(args.detectors) if args.detectors is not None else None
    calibrations = [Calibration.load(p) for p in args.calibration]
    frozen = Calibration.load(args.frozen_calibration) if args.frozen_calibration else None
    if args.sentinel_features:
        calibrations = [with_sentinel_features(c, args.sentinel_features) for c in calibrations]
        frozen = frozen and with_sentinel_features(frozen, args.sentinel_features)
    labels, results = [], []
    for run_dir in args.runs:
        calibration = matching(run_dir, calibrations)
        labels.append(run_label(run_dir))
        results.append(evaluate(run_dir, window=args.window, calibration=calibration, frozen_calibration=frozen,
                                detectors=detectors))
        print(f"{labels[-1]}: {run_dir}  (weighted flips with "
              f"{calibration.created + ' ' + calibration.adapter if calibration else 'the run’s own f'})")
    for target in ("source", "online"):
        cells: dict[str, dict[int, tuple[float, float]]] = {}
        for k, result in enumerate(results):
            for score in result["estimators"]:
                if score.target == target:
                    cells.setdefault(score.estimator, {})[k] = (score.mae, score.bias)
        if not cells:
            continue
        # the headline is one of the others, window by window: it is listed first, and never the bold one
        estimators = {name: row for name, row in cells.items() if name != HEADLINE}
        best = {k: min((row[k][0], name) for name, row in estimators.items() if k in row)[1]
                for k in range(len(results)) if any(k in row for row in estimators.values())}
        print(f"\n### target: {target} accuracy (MAE, bias in points)\n")
        print("| estimator | " + " | ".join(labels) + " |")
        print("|---" * (len(labels) + 1) + "|")
        for name in sorted(cells, key=lambda name: (name != HEADLINE, name)):
            row = []
            for k in range(len(results)):
                if k not in cells[name]:
                    row.append("-")
                    continue
                mae, bias = cells[name][k]
                text = f"{mae:.2f} ({bias:+.1f})"
                row.append(f"**{text}**" if best.get(k) == name else text)
            print(f"| {name} | " + " | ".join(row) + " |")
    print("\n### collapse warnings\n")
    print("| run | warnings | events | recall | lead (images) | false alarms | per million images |")
    print("|---|---|---|---|---|---|---|")
    for label, result in zip(labels, results):
        rows = [("replayed, fused" if detectors else "the run's own", result["warnings"]),
                *result["per_detector"].items()]
        for name, w in rows:
            recall = f"{w.recall:.0%}" if w.recall is not None else "n/a"
            leads = ", ".join(f"{x:,}" for x in w.lead_times) or "-"
            print(f"| {label} | {name} | {w.events} | {recall} | {leads} | {w.false_alarms} | "
                  f"{w.false_alarms_per_million:.1f} |")


if __name__ == "__main__":
    main()
