"""Embedded source model accuracy per corruption at severities 0-5 (the difficulty table).

    python benchmarks/corruption_accuracy.py [--images 2000] [--profile embedded] [--csv out.csv]

Images: the domain's validation range, uncropped, as CCC's accuracy matrix is measured. The goal
(issue 3) is that the mean over the 15 stream corruptions falls from >= 80% at severity 1 to
<= 25% at severity 5, as ResNet-50 does on ImageNet-C.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stream_monitor.sources.corruptions import HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS, get_corruption  # noqa: E402
from stream_monitor.sources.glyphs import VAL, GlyphDomain  # noqa: E402
from stream_monitor.sources.seeding import mix_seed  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402

SEVERITIES = (0, 1, 2, 3, 4, 5)


def accuracy_table(model, images: int, profile: str, names, severities=SEVERITIES, chunk: int = 500):
    x, y = GlyphDomain(image_size=model.image_size).render_range(VAL.start, VAL.start + images)
    table, seconds = {}, {}
    for name in names:
        corruption = get_corruption(name)
        row = []
        started = time.perf_counter()
        for s in severities:
            correct = 0
            for lo in range(0, images, chunk):
                g = torch.Generator().manual_seed(mix_seed(7, lo, int(s * 100)))
                batch = corruption(x[lo:lo + chunk].float() / 255, float(s), g, profile)
                logits = model.predict((batch * 255).round().to(torch.uint8))
                correct += int((logits.argmax(1) == y[lo:lo + chunk]).sum())
            row.append(100.0 * correct / images)
        table[name] = row
        seconds[name] = time.perf_counter() - started
    return table, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--only", nargs="*", help="corruption names (default: all 19)")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    model = load_model("embedded")
    names = args.only or [*STREAM_CORRUPTIONS, *HELD_OUT_CORRUPTIONS]
    table, seconds = accuracy_table(model, args.images, args.profile, names)
    print(f"model {model.short_id}, profile {args.profile}, {args.images} validation images, uncropped")
    print(f"{'corruption':<16}" + "".join(f"{'sev ' + str(s):>8}" for s in SEVERITIES))
    for name in names:
        print(f"{name:<16}" + "".join(f"{a:8.1f}" for a in table[name]) + f"   ({seconds[name]:.0f}s)")
    stream = [table[n] for n in names if n in STREAM_CORRUPTIONS]
    if stream:
        mean = np.mean(stream, axis=0)
        print(f"{'mean of ' + str(len(stream)) + ' stream':<16}" + "".join(f"{a:8.1f}" for a in mean))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["corruption", *[f"severity_{s}" for s in SEVERITIES]])
            for name in names:
                writer.writerow([name, *[f"{a:.2f}" for a in table[name]]])


if __name__ == "__main__":
    main()
