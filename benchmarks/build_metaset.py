"""Build the full-range meta-set of the embedded model (issue 25): the frozen model and the shipped
adapter calibrations' served feeds, on every domain of `stream_monitor.metaset.DEFAULT_DOMAINS`.

    nohup nice -n 10 python benchmarks/build_metaset.py --out benchmarks/results/metaset_embedded.jsonl &
    nohup nice -n 10 python benchmarks/build_metaset.py --adapters norm,eta,sar \
        --out benchmarks/results/metaset_embedded_uncalibrated.jsonl &
    python benchmarks/build_metaset.py --validation --adapters rdumb,tent,norm,eta,sar \
        --out benchmarks/results/metaset_embedded_validation.jsonl

`--validation` builds the families kept out of every fit (`metaset.VALIDATION_DOMAINS`) instead,
which `benchmarks/validate_families.py` scores the shipped files on.

An adapter without a calibration (`SERVED`) reads its served feed as a run would without one: no
clean-domain statistics of its own, the frozen model's nuclear-norm line. Such files measure the
online rule of adapters without a calibration on adapters that rule was not fitted on
(`benchmarks/refit_calibration.py` merges the files window by window).

Resumable: run the same command again and it goes on after the last window in the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stream_monitor.metaset import DEFAULT_DOMAINS, VALIDATION_DOMAINS, MetaSetBuild, build
from stream_monitor.config import load_config
from stream_monitor.estimation.window import stats_from_dict, with_frozen_line

ROOT = Path(__file__).resolve().parent.parent
#: adapter -> the calibration whose served statistics (temperature, Acc_S, ATC thresholds) it reads with
SERVED = {"rdumb": ROOT / "stream_monitor/assets/calibrations/embedded_resnet20_rdumb_probe1000_cycle1000.json",
          "tent": ROOT / "benchmarks/results/calibration_embedded_tent_heldout_streams.json"}
FROZEN = ROOT / "stream_monitor/assets/calibrations/frozen/embedded_resnet20_frozen_heldout_streams.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window-images", type=int, default=512)
    parser.add_argument("--adapters", default="rdumb,tent")
    parser.add_argument("--validation", action="store_true", help="the validation families, not the fitted ones")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frozen = stats_from_dict(json.loads(FROZEN.read_text())["frozen_stats"])
    adapters = {a: stats_from_dict(json.loads(SERVED[a].read_text())["served_stats"]) if a in SERVED
                else with_frozen_line(None, frozen) for a in args.adapters.split(",") if a}
    domains = VALIDATION_DOMAINS if args.validation else DEFAULT_DOMAINS
    spec = MetaSetBuild(domains, adapters, frozen, args.windows, args.window_images)
    build(spec, load_config(None, ["runtime.threads=1"]), args.out, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
