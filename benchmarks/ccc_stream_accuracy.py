"""Mean source-model accuracy along embedded CCC streams, against the baseline targets.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/ccc_stream_accuracy.py [--images 100000] [--csv out.csv]

For CCC-Easy/Medium/Hard (baselines 40/20/0, i.e. targets 46/28/10% for 10 classes), seed 43,
speed 1000: the frozen embedded model's accuracy over the first N images, with CCC's random
resized crop + flip and without it. The path search aims the uncropped accuracy matrix at the
target; as on ImageNet, the crop lowers accuracy further.
"""

from __future__ import annotations

import argparse
import csv
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from stream_monitor.sources.accuracy_matrix import embedded_matrices  # noqa: E402
from stream_monitor.sources.ccc import CCCSpec, target_accuracy  # noqa: E402
from stream_monitor.sources.embedded_ccc import EmbeddedCCCSource  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402
from stream_monitor.source_eval import evaluate_source  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--speed", type=int, default=1000)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    model = load_model("embedded")
    matrices = embedded_matrices(model)
    rows = []
    print(f"model {model.short_id}; first {args.images:,} images; seed {args.seed}, speed {args.speed}")
    print(f"{'stream':<10}{'target':>8}{'no crop':>10}{'crop':>10}{'img/s':>10}")
    for baseline in (40, 20, 0):
        spec = CCCSpec(baseline, args.speed, args.seed)
        result = {}
        for crop in (False, True):
            source = EmbeddedCCCSource(spec, matrices, crop=crop)
            result[crop] = evaluate_source(source, model, 0, args.images, batch_size=256, window=args.images)
        target = target_accuracy(baseline, 10)
        rows.append((spec.name, target, result[False].accuracy, result[True].accuracy))
        print(f"{spec.difficulty:<10}{target:8.1f}{result[False].accuracy:10.1f}{result[True].accuracy:10.1f}"
              f"{result[True].images_per_second:10,.0f}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["stream", "target", "accuracy_no_crop", "accuracy_crop"])
            writer.writerows(rows)


if __name__ == "__main__":
    main()
