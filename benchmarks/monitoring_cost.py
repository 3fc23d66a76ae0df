"""What the monitoring costs the adapter, end to end at the default cadence, part by part.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/monitoring_cost.py --images 6450 --repeats 3

Runs the same stream (`stream-monitor run`'s default: CCC-Medium, rdumb, the embedded model,
in-process with one thread) in variants that add one part of the monitoring at a time, the
variants interleaved so that load on the machine hits them alike, and reports each variant's
median steady-state rate (first to last step row) over the repeats, as a share of the adapter's
own rate (`AdapterWorker.step` on rendered batches, timed before and after):

- adapter only: no probe, the frozen model scores nothing (`evaluator.frozen_every=0`);
- + frozen scoring: the frozen model scores every 8th batch (the source-target feed and truth);
- default: + the probe (snapshot forwards on both reference sets, window estimators at each probe);
- + sidekick: the Duos ResNet-8 (`estimation.duo_model=embedded-small`);
- + AETTA: 10 dropout forwards every 8th step (`estimation.aetta_every=8`).

Appends rows to bench-out/monitoring_cost.csv and .parquet with the git SHA.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import git_sha, record  # noqa: E402
from run_throughput import adapter_only_rate  # noqa: E402

from stream_monitor.config import load_config  # noqa: E402
from stream_monitor.metrics.sink import read_table  # noqa: E402
from stream_monitor.runtime.runner import run  # noqa: E402
from stream_monitor.runtime.workers import StreamWorker  # noqa: E402

VARIANTS = {
    "adapter only": ["probe.enabled=false", "evaluator.frozen_every=0"],
    "+ frozen scoring": ["probe.enabled=false"],
    "default (+ probe)": [],
    "+ sidekick": ["estimation.duo_model=embedded-small"],
    "+ AETTA": ["estimation.duo_model=embedded-small", "estimation.aetta_every=8"],
}


def steady_rate(config, out: Path) -> tuple[float, float | None]:
    """(images per second from the first step row to the last, mean probe ms) of one run."""
    run(config, out)
    steps = read_table(out, "steps")
    times, images = steps.column("wall_time").to_numpy(), steps.column("images").to_numpy()
    probe_ms = None
    try:
        probes = read_table(out, "probes").column("probe_ms").to_numpy()
        probe_ms = float(probes.mean()) if len(probes) else None
    except (FileNotFoundError, KeyError):
        pass
    return float(images[1:].sum() / (times[-1] - times[0])), probe_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6_450, help="images per run (6,450: one probe at step 100)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = [f"runtime.max_images={args.images}", "dashboard.enabled=false", "runtime.use_ray=false",
            "runtime.threads=1"]
    configs = {name: load_config(None, [*base, *extra]) for name, extra in VARIANTS.items()}
    reference = configs["adapter only"]
    batches = StreamWorker(reference, 1).read(0, 40 * reference.source.batch_size)[0::2]
    adapter = [adapter_only_rate(reference, batches, 1)]
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    probe_ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    work = Path(tempfile.mkdtemp(prefix="sm-cost-"))
    for repeat in range(args.repeats):
        for name, config in configs.items():  # interleaved: a load spike hits every variant alike
            started = time.perf_counter()
            rate, ms = steady_rate(config, work / f"{repeat}-{len(rates[name])}-{name.replace(' ', '_')}")
            rates[name].append(rate)
            if ms is not None:
                probe_ms[name].append(ms)
            print(f"repeat {repeat}: {name}: {rate:,.1f} img/s ({time.perf_counter() - started:.0f} s)", flush=True)
    adapter.append(adapter_only_rate(reference, batches, 1))
    shutil.rmtree(work, ignore_errors=True)
    own = statistics.mean(adapter)
    print(f"adapter step alone (before, after): {adapter[0]:,.1f} / {adapter[1]:,.1f} img/s; "
          f"{args.images:,} images per run, {args.repeats} repeats, {os.cpu_count()} cores")
    for name in VARIANTS:
        median = statistics.median(rates[name])
        ms = f", probe {statistics.median(probe_ms[name]):,.0f} ms" if probe_ms[name] else ""
        print(f"  {name:<20} {median:8,.1f} img/s  {median / own:.2f} of the adapter step{ms}  "
              f"(runs: {', '.join(f'{r:,.1f}' for r in rates[name])})")
        record({"git_sha": git_sha(), "variant": name, "images": args.images, "repeats": args.repeats,
                "median_img_s": round(median, 1), "adapter_step_img_s": round(own, 1),
                "ratio": round(median / own, 3), "runs": ";".join(f"{r:.1f}" for r in rates[name])},
               Path("bench-out/monitoring_cost"))


if __name__ == "__main__":
    main()
