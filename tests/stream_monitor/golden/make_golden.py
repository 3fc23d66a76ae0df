"""Make the golden run's inputs and expected rows (`test_golden.py`).

    python tests/stream_monitor/golden/make_golden.py [--calibration]

`--calibration` fits the calibration file again with `stream-monitor calibrate`'s code on five
fixed held-out domains (about a minute); without it, the committed file is used. The expected
probe and estimate rows are what the code of the commit that runs this writes: regenerate them
only when a change is meant to change what the estimators compute, and say so in the commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration.json"
EXPECTED = HERE / "expected_rows.json"
BATCH, CYCLE, EVERY = 32, 15, 5
STEPS = 45
# flips at every snapshot, as every run counted them when the rows were recorded (probe.flips_every)
BASE = ["runtime.use_ray=false", "adapter.name=tent", f"probe.every={EVERY}", f"probe.cycle={CYCLE}",
        f"probe.flips_every={EVERY}", "probe.size=64", "runtime.checkpoint_every=10", "runtime.threads=1", f"source.batch_size={BATCH}",
        "estimation.duo_model=embedded-small", "estimation.aetta_every=2", "evaluator.frozen_every=1",
        "dashboard.enabled=false"]
DOMAINS = ("clean", "speckle_noise:3", "gaussian_blur:4", "spatter:5", "saturate:5")
TIMING = ("wall_time", "step_ms", "probe_ms", "time", "run_id")  # differ between two runs of one stream


#: The two golden runs: the calibration serves both feeds (the served feed calibrated on the
#: adapter), or only the frozen model's feed (the served feed reads through the frozen model's line).
VARIANTS = ("calibration", "frozen_calibration")


def overrides(variant: str, calibration: Path = CALIBRATION) -> list[str]:
    return [*BASE, f"runtime.max_images={BATCH * STEPS}", f"estimation.{variant}={calibration}"]


def make_calibration() -> None:
    from stream_monitor.calibration import calibrate
    from stream_monitor.config import load_config

    config = load_config(None, BASE)
    calibration = calibrate(config, domains=DOMAINS, streams=(), cycles=1)
    calibration.created = "golden"
    calibration.save(CALIBRATION)


def table(run_dir: Path, name: str) -> list[dict]:
    from stream_monitor.metrics.sink import read_table

    data = read_table(run_dir, name)
    return data.drop_columns([c for c in TIMING if c in data.column_names]).to_pylist()


def golden_rows(run_dir: Path) -> dict[str, list[dict]]:
    """The golden run's probe and estimate rows, as the test compares them."""
    return {"probes": table(run_dir, "probes"), "estimates": table(run_dir, "estimates")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", action="store_true", help="fit the calibration file again")
    args = parser.parse_args()
    if args.calibration or not CALIBRATION.exists():
        make_calibration()
    from stream_monitor.config import load_config
    from stream_monitor.runtime.runner import run

    expected = {}
    for variant in VARIANTS:
        run_dir = Path(tempfile.mkdtemp(prefix="sm-golden-")) / variant
        outcome = run(load_config(None, overrides(variant)), run_dir, log=lambda message: None)
        if outcome.status != "finished":
            print(f"golden run {variant} {outcome.status}: {outcome.error}", file=sys.stderr)
            return 1
        expected[variant] = golden_rows(run_dir)
    EXPECTED.write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
