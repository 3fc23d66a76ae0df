"""Weighted flips against two truths: the frozen model with running BN statistics (the run's
`true_source_acc`) and the same frozen model with test-batch BN statistics (what the probe uses).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/flips_against_bn_truth.py RUN_DIR

RUN_DIR is a run on the embedded CCC stream. The stream is rendered again up to the run's last
position, so this takes a few minutes per 100k images on 2 cores. Prints the MAE and bias of the
`weighted-flips` estimates against each truth, on the probe rows' windows.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stream_monitor.adapters.base import use_batch_statistics  # noqa: E402
from stream_monitor.sources.factory import open_source  # noqa: E402
from stream_monitor.config import load_config  # noqa: E402
from stream_monitor.metrics.sink import read_table  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.run_dir / "config.yaml")
    info = json.loads((args.run_dir / "run.json").read_text())
    bundle = load_model(cfg.model.name, cfg.model.weights)
    source = open_source(cfg.source.kind, cfg.source.stream, cfg.source.data, bundle, crop=cfg.source.crop)
    model = copy.deepcopy(bundle.module)
    use_batch_statistics(model)
    model.eval()
    correct = np.zeros(info["stop"], bool)
    with torch.inference_mode():
        for batch in source.read(0, info["stop"], cfg.source.batch_size):
            correct[batch.indices] = model(bundle.normalise(torch.from_numpy(batch.images))).argmax(1).numpy() \
                == batch.labels
    estimates = {r["step"]: r["value"] for r in read_table(args.run_dir, "estimates").to_pylist()
                 if r["estimator"] == "weighted-flips" and r["value"] is not None}
    against_bn, against_running = [], []
    for row in read_table(args.run_dir, "probes").to_pylist():
        value = estimates.get(row["step"])
        if value is None or row["true_source_acc"] is None:
            continue
        against_bn.append(value - 100 * correct[row["window_start"]:row["window_stop"]].mean())
        against_running.append(value - row["true_source_acc"])
    for name, errors in (("test-batch BN", against_bn), ("running statistics", against_running)):
        e = np.array(errors)
        print(f"weighted flips vs frozen model with {name:<18}: MAE {np.abs(e).mean():5.2f}  bias {e.mean():+6.2f}  "
              f"({len(e)} probe windows)")


if __name__ == "__main__":
    main()
