"""Issue 25's no-shift window: the embedded model's own clean glyphs, read by a frozen-feed calibration.

    git show 3ac3aeb:stream_monitor/assets/calibrations/frozen/embedded_resnet20_frozen_heldout_streams.json > old.json
    python benchmarks/no_shift_window.py --old old.json

Prints the truth, the old file's Sentinel (raw, with the monotonicity guard, its support distance)
and the shipped file's headline with its interval and support flag. The images lie past the
meta-set's (its clean windows read positions 0-2047).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from stream_monitor.sources.shifts import ShiftedGlyphSource
from stream_monitor.calibration.format import Calibration
from stream_monitor.config import load_config
from stream_monitor.estimation.context import EstimationContext
from stream_monitor.estimation.pipeline import EstimationPipeline, derive
from stream_monitor.estimation.readings import Feed
from stream_monitor.estimation.sentinel import EntropySentinel, SentinelRegressor
from stream_monitor.estimation.support import Support
from stream_monitor.estimation.window import stats_from_dict

SHIPPED = (Path(__file__).resolve().parent.parent
           / "stream_monitor/assets/calibrations/frozen/embedded_resnet20_frozen_heldout_streams.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a format-2 frozen-feed calibration (read raw)")
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(None, [])
    from stream_monitor.models import load_model

    model = load_model(config.model.name, config.model.weights, "cpu")
    batch = ShiftedGlyphSource("clean/whole", 8192 + args.images).render(8192, 8192 + args.images)
    probs = model.probabilities(torch.from_numpy(batch.images))
    print(f"truth {100 * (probs.argmax(1) == batch.labels).mean():.1f}% on {args.images} clean glyphs")
    if args.old:
        old = stats_from_dict(json.loads(args.old.read_text())["frozen_stats"])
        sentinel = EntropySentinel(old, Feed.FROZEN)
        sentinel.update(probs)
        features = sentinel.features()
        regressor = SentinelRegressor(old.sentinel)
        width = regressor.columns(features)
        raw = np.mean([m.predict(np.asarray(features[:width])[None])[0] for m in regressor._models(width)])
        print(f"old file's Sentinel: raw {raw:.1f}%, with the guard {regressor(features):.1f}%; "
              f"{Support.of(old.sentinel['features']).distance(features):.1f} sd outside its support")
    shipped = Calibration.load(SHIPPED)
    context = EstimationContext(frozen=shipped.window_stats(frozen=True), rules=shipped.headline_rules())
    pipeline = EstimationPipeline(context, model.num_classes)
    pipeline.observe(Feed.FROZEN, probs)
    source = derive(pipeline.readings(), context)
    low, high = source.source.interval
    print(f"shipped file's headline: {source.source.estimator} {source.source.value:.1f}% [{low:.1f}, {high:.1f}], "
          f"out of support: {source.source_out_of_support}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
