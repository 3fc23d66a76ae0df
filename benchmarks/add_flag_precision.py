"""Record the risk test's proxy precision (`FeedStats.flag_precision`) and clean image count in
calibration files made before they were recorded, without refitting anything else.

    python benchmarks/add_flag_precision.py stream_monitor/assets/calibrations/*.json \\
        stream_monitor/assets/calibrations/frozen/*.json

For each file the clean-domain statistics of both feeds are computed again, as `stream-monitor
calibrate` computes them (`calibrate.source_statistics`, on the file's adapter and hyperparameters
and as many clean images as the file's statistics, 2,048 where it does not say). The file is
changed only where they reproduce its stored accuracy, temperature and ATC threshold (so the
precision belongs to the threshold the run flags with); otherwise it says why and leaves the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from stream_monitor.calibrate import source_statistics
from stream_monitor.calibration.format import Calibration
from stream_monitor.config import load_config
from stream_monitor.runtime.workers import AdapterWorker

#: the clean images behind a file whose statistics do not record their number (`calibrate`'s default)
DEFAULT_IMAGES = 2048
COMPARED = ("accuracy", "temperature", "atc_mc_threshold")


def refresh(path: Path) -> str:
    calibration = Calibration.load(path)
    overrides = ["runtime.threads=1", f"adapter.name={calibration.adapter or 'source'}"]
    if calibration.hyperparameters and "lr" in calibration.hyperparameters:
        overrides.append(f"adapter.lr={calibration.hyperparameters['lr']}")
    config = load_config(None, overrides)
    described = AdapterWorker(config).describe().hyperparameters
    if calibration.hyperparameters is not None and described != calibration.hyperparameters:
        return f"{path.name}: left as is, the adapter's hyperparameters differ ({described} against the file's)"
    stored = {"served": calibration.served_stats, "frozen": calibration.frozen_stats}
    images = next((s["images"] for s in stored.values() if s and s.get("images")), DEFAULT_IMAGES)
    served, frozen = source_statistics(config, [], images)
    fresh = {"served": asdict(served), "frozen": asdict(frozen)}
    for feed, old in stored.items():
        if old is None:
            continue
        off = [k for k in COMPARED if not math.isclose(old[k], fresh[feed][k], rel_tol=1e-4, abs_tol=1e-6)]
        if off:
            return (f"{path.name}: left as is, the {feed} feed's {', '.join(off)} do not reproduce "
                    f"({[old[k] for k in off]} against {[fresh[feed][k] for k in off]})")
    data = json.loads(path.read_text())
    for feed, key in (("served", "served_stats"), ("frozen", "frozen_stats")):
        if data.get(key):
            data[key]["flag_precision"] = list(fresh[feed]["flag_precision"])
            data[key]["images"] = fresh[feed]["images"]
    path.write_text(json.dumps(data, indent=1))
    Calibration.load(path)  # still a valid file
    return (f"{path.name}: served precision {fresh['served']['flag_precision']}, frozen "
            f"{fresh['frozen']['flag_precision']} (wrong, flagged) on {images:,} clean images")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.files:
        print(refresh(path), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
