"""Feed synthetic step, probe and event rows into the dashboard for a few seconds, to look at it.

    python benchmarks/dashboard_demo.py [--seconds 10] [--screen] [--plain]

No Ray and no model: accuracies follow made-up curves (an adapter that slowly collapses, reset halfway),
so the chart, the collapse warning, its clearing, the event log and the health panel all show up.
"""

from __future__ import annotations

import argparse
import math
import random
import time

from rich.console import Console

from stream_monitor.dashboard import make_reporter
from stream_monitor.metrics.schema import EVENT_SCHEMA, PROBE_SCHEMA, STEP_SCHEMA, empty_row
from stream_monitor.runtime.observer import RunInfo

BATCH, PROBE_EVERY, STEPS = 64, 10, 800


def _event(step: int, kind: str, origin: str, message: str, value: float | None = None) -> dict:
    return empty_row(EVENT_SCHEMA) | dict(step=step, wall_time=time.time(), kind=kind, origin=origin,
                                          message=message, value=value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--screen", action="store_true", help="full screen (alternate screen)")
    parser.add_argument("--plain", action="store_true", help="the plain-line reporter (also used when piped)")
    args = parser.parse_args()

    info = RunInfo(run_id="demo-0001", run_dir="/tmp/demo", stream="baseline_20_transition+speed_1000_seed_43",
                   base="embedded glyphs (not ImageNet)", model="embedded_resnet20 c95a8913", adapter="rdumb",
                   hyperparameters={"lr": 2.5e-4, "reset_every": 400, "e_margin": 2.76, "d_margin": 0.05},
                   device="cpu", start=0, stop=STEPS * BATCH, batch_size=BATCH, probe_every=PROBE_EVERY,
                   probe_size=256)
    reporter = make_reporter(Console(), enabled=not args.plain, screen=args.screen, every_seconds=2.0)
    rng = random.Random(0)
    pause = args.seconds / STEPS
    reporter.on_start(info)
    try:
        reporter.on_event(_event(0, "start", "driver", "run started"))
        for name in ("adapter", "probe", "stream-0", "source-1"):
            reporter.on_health(name, "ok")
        warned = False
        for step in range(STEPS):
            since_reset = step % 400
            online = max(5.0, 62 - since_reset / 12 + 4 * math.sin(step / 40)) + rng.gauss(0, 2)
            source = 45 + 6 * math.sin(step / 90) + rng.gauss(0, 1)
            skipped = 1 if rng.random() < 0.01 else 0
            entropy = max(0.02, 1.8 - since_reset / 250)
            reporter.on_step(empty_row(STEP_SCHEMA) | dict(
                step=step, start=step * BATCH, stop=(step + 1) * BATCH, images=BATCH - skipped, skipped=skipped,
                wall_time=time.time(), step_ms=11.0 + rng.random(), mean_entropy=entropy,
                top_class_share=min(0.9, 0.08 + since_reset / 600), correct=round(online / 100 * (BATCH - skipped)),
                frozen_correct=round(source / 100 * 32), frozen_seen=32, noise_a="fog", severity_a=2.5,
                noise_b="gaussian_noise", severity_b=1.0 + step / STEPS))
            if skipped:
                reporter.on_event(_event(step, "skipped", "source-1", f"unreadable image at {step * BATCH + 7}"))
            if entropy < 0.5 and not warned:
                warned = True
                reporter.on_event(_event(step, "warning", "entropy-collapse",
                                         f"mean entropy {entropy:.2f} < 0.5 for 20 steps", entropy))
            if since_reset == 399:
                reporter.on_event(_event(step, "reset", "adapter", "periodic reset (reset_every=400)"))
                reporter.on_event(_event(step, "clear", "entropy-collapse", "entropy back above 0.5"))
                warned = False
            if step % PROBE_EVERY == PROBE_EVERY - 1:
                cycle_step = (step % 200) + 1
                warming = cycle_step <= PROBE_EVERY  # a new reference set: the estimator has one snapshot
                reporter.on_probe(empty_row(PROBE_SCHEMA) | dict(
                    step=step + 1, position=(step + 1) * BATCH, wall_time=time.time(), cycle=step // 200,
                    cycle_step=cycle_step, probe_size=256, flips=min(256, cycle_step // 3),
                    weighted_flips=cycle_step / 5, est_source_acc=None if warming else source + rng.gauss(3, 2),
                    true_source_acc=source, est_online_acc=None if warming else online + rng.gauss(-2, 3),
                    true_online_acc=online))
            if step == STEPS // 2:
                reporter.on_health("source-1", "slow", "queue empty for 2.1 s")
                reporter.log("[dim]a log line printed above the live display[/]")
            time.sleep(pause)
        reporter.on_event(_event(STEPS, "stop", "driver", "stream done"))
    finally:
        reporter.close()


if __name__ == "__main__":
    main()
