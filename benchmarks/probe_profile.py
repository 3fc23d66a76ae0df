"""Where the monitoring's time goes, part by part: one in-process run under cProfile.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_profile.py --images 64000 [--set probe.flips_every=100]

Runs `stream-monitor run`'s default (CCC-Medium, rdumb, the embedded model; in-process, one
thread, no dashboard) under cProfile and prints, for each part of the probe and, for scale, the
stream's rendering and the frozen model's scoring, its calls, its seconds and its seconds as a
share of the adapter steps' seconds in the same run. A share within one run holds on a loaded
machine, where every part slows alike; the seconds do not. The forwards run in torch's kernels,
which cProfile does not slow; the estimators' Python a little.

Appends rows to bench-out/probe_profile.csv and .parquet with the git SHA.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import pstats
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import git_sha, record  # noqa: E402

from stream_monitor.config import load_config  # noqa: E402
from stream_monitor.estimation.pipeline import EstimationPipeline  # noqa: E402
from stream_monitor.estimation.sentinel import SentinelRegressor  # noqa: E402
from stream_monitor.estimation.window import OptimalTransport  # noqa: E402
from stream_monitor.metrics.sink import read_table  # noqa: E402
from stream_monitor.models import SourceModel  # noqa: E402
from stream_monitor.runtime.loop import RunLoop  # noqa: E402
from stream_monitor.runtime.runner import run  # noqa: E402
from stream_monitor.runtime.workers import AdapterWorker, ProbeWorker, StreamWorker  # noqa: E402

#: (label, function): the base first; an indented label is part of the one above it
PARTS: tuple[tuple[str, Callable], ...] = (
    ("adapter steps", AdapterWorker.step),
    ("probe evaluations (probe_ms)", ProbeWorker.evaluate),
    ("cycle-start reference (once a cycle)", ProbeWorker.add_reference),
    ("reference-set forwards (both of the above)", ProbeWorker._predict),
    ("spread-set sampling (every batch)", ProbeWorker.observe),
    ("window estimators at the probe", EstimationPipeline.readings),
    ("  of which Sentinel regressor fits (once a feed)", SentinelRegressor._models),
    ("  of which COT", OptimalTransport.compute),
    ("probe rows (f, headline, detectors, tables)", RunLoop._process_probe),
    ("stream rendering", StreamWorker.read),
    ("frozen model scoring (every 8th batch)", SourceModel.probabilities),
)


class Part(NamedTuple):
    label: str
    calls: int
    seconds: float


def parts(stats: pstats.Stats) -> list[Part]:
    """Each of PARTS' calls and cumulative seconds (0 where the run never called it)."""
    table = stats.stats  # (file, first line, name) -> (primitive calls, calls, own s, cumulative s, callers)
    out = []
    for label, function in PARTS:
        code = inspect.unwrap(function).__code__
        _, calls, _, seconds, _ = table.get((code.co_filename, code.co_firstlineno, code.co_name), (0, 0, 0, 0.0, {}))
        out.append(Part(label, calls, seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64_000,
                        help="images in the run (64,000: one whole cycle of 1,000 steps, its 10 snapshot steps)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="a config override")
    args = parser.parse_args()
    config = load_config(None, [f"runtime.max_images={args.images}", "dashboard.enabled=false",
                                "runtime.use_ray=false", "runtime.threads=1", *args.overrides])
    out = Path(tempfile.mkdtemp(prefix="sm-probe-profile-")) / "run"
    profile = cProfile.Profile()
    profile.runcall(run, config, out)
    found = parts(pstats.Stats(profile))
    probe_ms = read_table(out, "probes").column("probe_ms").to_pylist()
    counted = [ms for ms in probe_ms if ms is not None]  # snapshot steps that counted flips (probe.flips_every)
    median = f"{statistics.median(counted):,.0f}" if counted else "n/a"
    base = found[0].seconds
    print(f"{args.images:,} images, {len(probe_ms)} snapshot steps, {len(counted)} counting flips "
          f"(median probe_ms {median}), "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; overrides: {' '.join(args.overrides) or 'none'}")
    print(f"  {'part':<50} {'calls':>6} {'seconds':>8} {'% of adapter':>13}")
    for part in found:
        print(f"  {part.label:<50} {part.calls:>6} {part.seconds:>8.2f} {100 * part.seconds / base:>12.1f}%")
        record({"git_sha": git_sha(), "images": args.images, "overrides": " ".join(args.overrides),
                "part": part.label.strip(), "calls": part.calls, "seconds": round(part.seconds, 3),
                "share_of_adapter": round(part.seconds / base, 4)}, Path("bench-out/probe_profile"))


if __name__ == "__main__":
    main()
