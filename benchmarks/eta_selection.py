"""How many samples ETA's filters let through on an embedded CCC stream.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/eta_selection.py [--images 20000] [--stream NAME]

ETA's entropy margin is 0.4 ln K: 2.76 nats for ImageNet's 1000 classes but 0.92 nats for the
embedded model's 10 classes, and the redundancy filter (|cos| < 0.05) is strict with few classes;
this prints the share of each batch that enters the loss, and how many batches are skipped.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stream_monitor.adapters import ADAPTERS  # noqa: E402
from stream_monitor.sources.factory import open_source  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--stream", default="baseline_20_transition+speed_1000_seed_43")
    args = parser.parse_args()
    model = load_model("embedded")
    source = open_source("ccc", args.stream, model=model)
    for margin_scale, d_margin in ((0.4, 0.05), (0.4, None), (0.4, 0.8), (0.4, 1.01)):
        eta = ADAPTERS.get("eta")(model.module, e_margin_scale=margin_scale, d_margin=d_margin)
        used, batch = [], 64
        for b in source.read(0, args.images, batch):
            used.append(int(eta.step(model.normalise(torch.from_numpy(b.images))).num_used))
        used = np.array(used)
        print(f"E0 = {margin_scale} ln 10 = {margin_scale * np.log(10):.2f} nats, "
              f"d_margin {eta.redundancy_margin(10):.2f}{' (default)' if d_margin is None else ''}: "
              f"{used.sum() / (len(used) * batch):.1%} of samples used, "
              f"{(used == 0).mean():.1%} of {len(used)} batches skipped, median {np.median(used):.0f}/64")


if __name__ == "__main__":
    main()
