"""End-to-end run throughput as a ratio of the adapter-only step rate, measured in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/run_throughput.py --images 50000           # Ray, embedded, CPU
    python benchmarks/run_throughput.py --images 20000 --no-probe                        # probe overhead
    python benchmarks/run_throughput.py --images 20000 --set runtime.use_ray=false       # in-process loop

The adapter-only rate is `AdapterWorker.step` on batches rendered beforehand, with the threads
the run's adapter actor gets, timed before and after the run (so load on the machine hits both);
the end-to-end rate is the full `stream-monitor run` pipeline (source actors, adapter actor,
probe actor, ground-truth scoring, Parquet sink), from the first to the last step row, and also
with Ray's start-up included. Prints a table and appends a row (git SHA, device) to
bench-out/run_throughput.csv and .parquet.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _record import git_sha, record  # noqa: E402

from stream_monitor.config import load_config  # noqa: E402
from stream_monitor.metrics.sink import read_table  # noqa: E402
from stream_monitor.runtime.runner import run  # noqa: E402
from stream_monitor.runtime.workers import AdapterWorker, StreamWorker  # noqa: E402


def adapter_only_rate(config, batches, threads: int) -> float:
    """Images per second of AdapterWorker.step alone (median of 3 passes over `batches`)."""
    torch.set_num_threads(threads)
    worker = AdapterWorker(config, None, threads)
    worker.step(batches[0])  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            worker.step(batch)
        if str(config.runtime.device).startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(sum(len(b) for b in batches) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--adapter", default="tent")
    parser.add_argument("--steps", type=int, default=40, help="batches for the adapter-only rate")
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    overrides = [f"adapter.name={args.adapter}", f"runtime.max_images={args.images}", "dashboard.enabled=False",
                 *(["probe.enabled=False"] if args.no_probe else []), *args.overrides]
    config = load_config(None, overrides)
    threads = config.runtime.threads or os.cpu_count() or 1

    source = StreamWorker(config, 1)
    items = source.read(0, args.steps * config.source.batch_size)
    batches = items[0::2]
    cores = os.cpu_count() or 1
    before = adapter_only_rate(config, batches, threads)
    best_before = adapter_only_rate(config, batches, cores) if cores != threads else before

    out = Path(tempfile.mkdtemp(prefix="sm-bench-"))
    started = time.perf_counter()
    outcome = run(config, out / "run")
    wall = time.perf_counter() - started
    steps = read_table(out / "run", "steps")
    times = steps.column("wall_time").to_numpy()
    images = steps.column("images").to_numpy()
    # rate over steady state: from the first step's arrival to the last one
    steady = images[1:].sum() / (times[-1] - times[0])
    after = adapter_only_rate(config, batches, threads)
    best_after = adapter_only_rate(config, batches, cores) if cores != threads else after
    adapter = statistics.mean([before, after])
    best = max(adapter, statistics.mean([best_before, best_after]))
    shutil.rmtree(out, ignore_errors=True)

    rows = [
        (f"adapter-only, {threads} thread(s) (before, after)", f"{before:,.0f} / {after:,.0f} img/s"),
        (f"adapter-only, {cores} threads (before, after)", f"{best_before:,.0f} / {best_after:,.0f} img/s"),
        ("end to end, steady state", f"{steady:,.0f} img/s"),
        ("end to end, with start-up", f"{outcome.images / wall:,.0f} img/s ({wall:.1f} s wall)"),
        (f"ratio steady / adapter-only ({threads} thread(s))", f"{steady / adapter:.2f}"),
        ("ratio steady / best adapter-only", f"{steady / best:.2f}"),
        ("ratio with start-up / best adapter-only", f"{outcome.images / wall / best:.2f}"),
    ]
    print(f"{args.adapter}, {args.images:,} images, ray={config.runtime.use_ray}, probe={not args.no_probe}, "
          f"{threads} adapter thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for name, value in rows:
        print(f"  {name:<36} {value}")
    record({"git_sha": git_sha(), "device": outcome.info.device, "adapter": args.adapter, "images": args.images,
            "ray": config.runtime.use_ray, "probe": not args.no_probe, "threads": threads,
            "adapter_only_img_s": round(adapter, 1), "best_adapter_only_img_s": round(best, 1),
            "steady_img_s": round(steady, 1), "with_startup_img_s": round(outcome.images / wall, 1),
            "wall_s": round(wall, 1)}, Path("bench-out/run_throughput"))

if __name__ == "__main__":
    main()
