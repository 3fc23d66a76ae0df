"""How the source Sentinel reads a shift family it was not fitted on, and whether weighting the
families alike in its fit helps.

    python benchmarks/sentinel_family_bias.py [--calibration FROZEN.json] [--weights none,family,sqrt]

The frozen model's shipped file holds the Sentinel's training set: the long held-out streams'
probe windows (CCC-style walks over ImageNet-C's four held-out corruptions, `walk` below) and the
full-range meta-set's windows of seven families. Each meta-set family is read by a Sentinel fitted
without it, each walk by one fitted without its stream (both cycles), with the file's regressor
kind and grid point, guard, ceiling and floor (`SentinelRegressor`). Prints per family the MAE,
the bias (estimate minus truth) and the worst window, for each weighting of the fit's windows:
`none` (as shipped), `family` (each family's windows weigh 1 / their count, the walks one family)
and `sqrt` (1 / sqrt(count)).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stream_monitor.calibration import SHIPPED
from stream_monitor.calibration.rule import window_points
from stream_monitor.estimation.sentinel import SentinelRegressor, _forest, _ridge

WALK = "walk"


class WeightedSentinel(SentinelRegressor):
    """The calibration's regressor fitted with a weight per training window."""

    def __init__(self, training: dict[str, Any], weights: np.ndarray) -> None:
        self.weights = weights
        super().__init__(training)

    def _models(self, width: int) -> list[Any]:
        if width not in self._fitted:
            x = np.asarray(self.training["features"])[:, :width]
            y = np.asarray(self.training["accuracy"])
            fitted = []
            if self.kind != "ridge":
                forest = _forest(self.training["params"], self.training["seed"])
                fitted.append(forest.fit(x, y, sample_weight=self.weights))
            if self.kind != "forest":
                fitted.append(_ridge().fit(x, y, ridgecv__sample_weight=self.weights))
            self._fitted[width] = fitted
        return self._fitted[width]


def windows(calibration: dict[str, Any]) -> list[dict[str, Any]]:
    """(features, truth, family, group) of every window the frozen Sentinel is fitted on."""
    rows = [{"x": p["frozen_sentinel_features"], "y": p["true_source_acc"], "family": WALK,
             "group": p["domain"].split("#")[0]}
            for p in calibration["points"]
            if p.get("frozen_sentinel_features") is not None and not p["domain"].startswith("metaset/")]
    rows += [{"x": p["frozen_sentinel_features"], "y": p["true_source_acc"], "family": p["family"], "group": p["domain"]}
             for p in window_points(calibration["meta_windows"], None) if p["frozen_sentinel_features"] is not None]
    return rows


def weights_of(families: list[str], scheme: str) -> np.ndarray:
    count = Counter(families)
    power = {"none": 0.0, "sqrt": 0.5, "family": 1.0}[scheme]
    w = np.array([count[f] ** -power for f in families])
    return w * len(w) / w.sum()


def held_out_errors(rows: list[dict[str, Any]], sentinel: dict[str, Any], scheme: str) -> np.ndarray:
    """Estimate minus truth of every window, read by a fit without its family (walks: its stream)."""
    width = min(len(r["x"]) for r in rows)
    errors = np.full(len(rows), np.nan)
    splits = [[i for i, r in enumerate(rows) if r["family"] == f] for f in sorted({r["family"] for r in rows} - {WALK})]
    splits += [[i for i, r in enumerate(rows) if r["family"] == WALK and r["group"] == g]
               for g in sorted({r["group"] for r in rows if r["family"] == WALK})]
    for test in splits:
        held = set(test)
        train = [r for i, r in enumerate(rows) if i not in held]
        training = {**sentinel, "features": [r["x"][:width] for r in train], "accuracy": [r["y"] for r in train],
                    "sidekick": None}
        regressor = WeightedSentinel(training, weights_of([r["family"] for r in train], scheme))
        for i in test:
            errors[i] = regressor(rows[i]["x"][:width]) - rows[i]["y"]
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=Path, default=sorted((SHIPPED / "frozen").glob("*.json"))[0])
    parser.add_argument("--weights", default="none,family,sqrt")
    args = parser.parse_args()
    calibration = json.loads(args.calibration.read_text())
    rows = windows(calibration)
    families = sorted({r["family"] for r in rows})
    print(f"{args.calibration.name}: {len(rows)} windows, " +
          ", ".join(f"{f} {sum(r['family'] == f for r in rows)}" for f in families))
    print("| weights | family | windows | MAE | bias | worst |\n|---|---|---|---|---|---|")
    for scheme in args.weights.split(","):
        errors = held_out_errors(rows, calibration["frozen_stats"]["sentinel"], scheme)
        per = {}
        for family in families:
            e = errors[[r["family"] == family for r in rows]]
            per[family] = np.abs(e).mean()
            print(f"| {scheme} | {family} | {len(e)} | {per[family]:.2f} | {e.mean():+.2f} | {np.abs(e).max():.1f} |")
        meta = [v for f, v in per.items() if f != WALK]
        print(f"| {scheme} | **meta-set families, mean** | {len(meta)} | {np.mean(meta):.2f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
