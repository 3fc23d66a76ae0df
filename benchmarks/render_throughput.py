"""Embedded CCC rendering throughput per core against the embedded model's Tent step rate.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/render_throughput.py [--rounds 7] [--csv out.csv]

Rendering: one thread, the full pipeline of the embedded stream (glyphs, random resized crop +
flip, corruption A, corruption B, JPEG q85) on block-aligned 256-image spans taken at lattice
points spread over the CCC-Easy stream (14 corruptions), so every corruption of the mix is
rendered. Tent step: the
embedded ResNet-20, batch 64, BatchNorm in test-batch mode, SGD on the BN affine parameters,
mean-entropy loss (Wang et al., ICLR 2021), timed with one thread (per core) and with all
threads. Rounds alternate between the two so that machine load hits both alike; medians are
reported. The goal of issue 3: rendering per core >= 4x the Tent step rate.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from stream_monitor.sources.accuracy_matrix import embedded_matrices  # noqa: E402
from stream_monitor.sources.ccc import CCCSpec  # noqa: E402
from stream_monitor.sources.embedded_ccc import EmbeddedCCCSource  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402

SPAN = 256


def tent_step_fn(model: nn.Module, lr: float = 2.5e-4):
    """A Tent step: test-batch BN statistics, entropy of the predictions, SGD on BN affines."""
    params = []
    for module in model.modules():
        module.requires_grad_(False)
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.running_mean = module.running_var = None
            module.weight.requires_grad_(True)
            module.bias.requires_grad_(True)
            params += [module.weight, module.bias]
    model.train()
    optimiser = torch.optim.SGD(params, lr=lr, momentum=0.9)

    def step(x: torch.Tensor) -> None:
        logits = model(x)
        loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def time_render(source: EmbeddedCCCSource, starts: list[int]) -> float:
    started = time.perf_counter()
    for s in starts:
        source.render(s, s + SPAN)
    return len(starts) * SPAN / (time.perf_counter() - started)


def time_tent(step, batch: torch.Tensor, steps: int) -> float:
    step(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return steps * len(batch) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--spans", type=int, default=12, help="256-image spans rendered per round")
    parser.add_argument("--steps", type=int, default=20, help="Tent steps per round")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    model = load_model("embedded")
    source = EmbeddedCCCSource(CCCSpec(40, 1000, 43), embedded_matrices(model))
    step = tent_step_fn(model.module.to(memory_format=torch.channels_last))
    batch = model.normalise(torch.from_numpy(source.render(0, 64).images)).contiguous(memory_format=torch.channels_last)
    stride = source.walk.num_points // (args.rounds * args.spans + 1)
    # Spans start on a block boundary, as a sequential read of the stream renders them.
    points = [(k * stride) * source.spec.speed // SPAN * SPAN for k in range(1, args.rounds * args.spans + 1)]
    render, tent1, tent_all = [], [], []
    for r in range(args.rounds):
        torch.set_num_threads(1)
        render.append(time_render(source, points[r * args.spans:(r + 1) * args.spans]))
        tent1.append(time_tent(step, batch, args.steps))
        torch.set_num_threads(threads)
        tent_all.append(time_tent(step, batch, args.steps))
    seen = sorted({n for k in range(0, source.walk.num_points, stride) for n in
                   (source.walk.point(k).noise_a, source.walk.point(k).noise_b)})
    rows = [
        ("render img/s (1 thread)", statistics.median(render)),
        ("tent img/s (1 thread)", statistics.median(tent1)),
        (f"tent img/s ({threads} threads)", statistics.median(tent_all)),
    ]
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"git {sha}, {os.cpu_count()} cores, torch {torch.__version__}, {args.rounds} interleaved rounds, "
          f"stream {source.name}, {len(seen)} corruptions in the sampled mix")
    for name, value in rows:
        print(f"{name:<28}{value:10,.0f}")
    ratio_core = statistics.median(render) / statistics.median(tent1)
    ratio_machine = statistics.median(render) / statistics.median(tent_all)
    print(f"{'ratio per core (render/tent, 1 thread each)':<46}{ratio_core:6.2f}  (goal >= 4)")
    print(f"{'ratio, one render core / tent on all cores':<46}{ratio_machine:6.2f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["git", "metric", "median", "all_rounds"])
            for (name, value), values in zip(rows, (render, tent1, tent_all)):
                writer.writerow([sha, name, f"{value:.1f}", " ".join(f"{v:.1f}" for v in values)])


if __name__ == "__main__":
    main()
