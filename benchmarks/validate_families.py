"""Score the shipped calibrations on meta-set windows of shift families none of them was fitted on.

    python benchmarks/validate_families.py WINDOWS.jsonl [MORE.jsonl ...] [--families jigsaw,stripes,channel]
        [--stem benchmarks/results/validate_families_SHA]

Leave-one-family-out (`calibration.rule.family_report`) holds out a family the meta-set has; a
family built after the files were made is held out of everything: of the Sentinel's fit, the
nuclear-norm lines, the rules and their intervals. Each window of `--families` (default: every
family of the files that none of the shipped files' meta-sets has) is read as a run of the
shipped files reads a probe window: its recorded readings made again with the files
(`EstimationPipeline.reread`) and the headlines derived by the live loop's rule
(`estimation.pipeline.derive`), the source target with the frozen model's file and the online
target with the adapter's own file, or the frozen file's rule for adapters without one. Prints,
per family, adapter and target, the headline's MAE, worst error, the share of windows whose 90%
interval held the truth and the share out of support; writes STEM.csv with the git SHA.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _record import git_sha  # noqa: E402

from stream_monitor.calibration import SHIPPED, Calibration  # noqa: E402
from stream_monitor.calibration.format import Provenance  # noqa: E402
from stream_monitor.calibration.resolve import resolve_context  # noqa: E402
from stream_monitor.config import load_config  # noqa: E402
from stream_monitor.estimation.pipeline import EstimationPipeline, derive  # noqa: E402
from stream_monitor.estimation.readings import Feed, Reading, Target  # noqa: E402
from stream_monitor.metaset import merge_windows, read_windows  # noqa: E402
from stream_monitor.sources.glyphs import NUM_CLASSES  # noqa: E402  (the embedded model's classes)


def readings(window: dict, adapter: str) -> list[Reading]:
    """A meta-set window's recorded readings as a probe window's: the frozen feed's for the source
    target, the adapter's served feed's for the online target."""
    feeds = ((Feed.FROZEN, Target.SOURCE, window["frozen"]), (Feed.SERVED, Target.ONLINE,
                                                             window["served"][adapter]["readings"]))
    return [Reading(name, feed, target, r.get("value"), score=r.get("score"),
                    features=None if r.get("features") is None else tuple(r["features"]))
            for feed, target, recorded in feeds for name, r in recorded.items()]


def context_for(adapter: str, frozen: Calibration, served: dict[str, Calibration]):
    """The estimation context a run of `adapter` resolves with the shipped files."""
    own = served.get(adapter)
    config = load_config(None, [f"adapter.name={adapter}"])
    if own is not None:
        provenance = Provenance(own.model, own.model_sha256, own.adapter, own.hyperparameters, own.probe_size, own.cycle)
    else:
        provenance = Provenance(frozen.model, frozen.model_sha256, adapter, {}, config.probe.size, 0)
    return resolve_context(config, provenance, calibration=own, frozen_calibration=frozen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("windows", type=Path, nargs="+")
    parser.add_argument("--families", default="")
    parser.add_argument("--stem", type=Path, default=None)
    args = parser.parse_args()

    frozen = Calibration.load(sorted((SHIPPED / "frozen").glob("*.json"))[0])
    served = {c.adapter: c for c in (Calibration.load(p) for p in sorted(SHIPPED.glob("embedded_*.json")))}
    seen = {w["family"] for c in (frozen, *served.values()) for w in c.meta_windows}
    windows = merge_windows(*(read_windows(p) for p in args.windows))
    families = args.families.split(",") if args.families else sorted({w["family"] for w in windows} - seen)
    windows = [w for w in windows if w["family"] in families]
    adapters = sorted({a for w in windows for a in w["served"]})
    contexts = {a: context_for(a, frozen, served) for a in adapters}
    pipelines = {a: EstimationPipeline(c, NUM_CLASSES) for a, c in contexts.items()}

    scored: dict[tuple[str, str, str], list[tuple[float, bool, bool]]] = {}
    for w in windows:
        for adapter in adapters:
            estimate = derive(pipelines[adapter].reread(readings(w, adapter)), contexts[adapter])
            truths = {Target.SOURCE: w["true_source_acc"], Target.ONLINE: w["served"][adapter]["true_online_acc"]}
            targets = [(Target.ONLINE, estimate.online, estimate.online_out_of_support)]
            if adapter == adapters[0]:  # the source target is the frozen model's, the same for every adapter
                targets.append((Target.SOURCE, estimate.source, estimate.source_out_of_support))
            for target, headline, outside in targets:
                if headline is None or headline.value is None:
                    continue
                low, high = headline.interval or (np.nan, np.nan)
                truth = truths[target]
                key = (w["family"], adapter if target == Target.ONLINE else "any", str(target))
                scored.setdefault(key, []).append(
                    (headline.value - truth, bool(low <= truth <= high), bool(outside)))

    sha, rows = git_sha(), []
    for (family, adapter, target), values in sorted(scored.items()):
        error = np.array([v[0] for v in values])
        rows.append({"family": family, "adapter": adapter, "target": target, "windows": len(values),
                     "mae": float(np.abs(error).mean()), "bias": float(error.mean()),
                     "worst": float(np.abs(error).max()), "coverage": float(np.mean([v[1] for v in values])),
                     "out_of_support": float(np.mean([v[2] for v in values])), "git_sha": sha})
    print(f"families held out of every shipped file: {', '.join(families)}; adapters: {', '.join(adapters)}")
    print("| family | adapter | target | windows | MAE | bias | worst | coverage | out of support |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['adapter']} | {r['target']} | {r['windows']} | {r['mae']:.1f} | {r['bias']:+.1f} "
              f"| {r['worst']:.1f} | {r['coverage']:.2f} | {r['out_of_support']:.2f} |")
    for target in ("source", "online"):
        mine = [r for r in rows if r["target"] == target]
        if mine:
            windows_in = sum(r["windows"] for r in mine)
            covered = sum(r["coverage"] * r["windows"] for r in mine)
            print(f"{target}: {covered:.0f} of {windows_in} windows covered ({covered / windows_in:.0%}), "
                  f"MAE {sum(r['mae'] * r['windows'] for r in mine) / windows_in:.1f}")
    if args.stem is not None:
        args.stem.parent.mkdir(parents=True, exist_ok=True)
        with args.stem.with_suffix(".csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
