"""Fit the MaNo lines and CBPE's isotonic map of a model on the calibration's labelled held-out domains.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fit_baseline_maps.py --images 1000

The domains are those `stream-monitor calibrate --domains` uses on the embedded glyphs (clean plus
speckle noise, gaussian blur, spatter and saturate at severities 1-5, `sources.heldout`), one
window of --images per domain, scored by the frozen model. Writes
stream_monitor/assets/calibrations/baselines/<model>.json (`estimation.baseline_maps`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _record import git_sha  # noqa: E402

from stream_monitor.sources.heldout import FOLDER_DOMAINS, HeldOutDomainSource  # noqa: E402
from stream_monitor.calibration.baselines import fit_baseline_maps  # noqa: E402
from stream_monitor.estimation.baseline_maps import ASSETS, SHIPPED  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images per domain")
    args = parser.parse_args()
    model = load_model("embedded", None, "cpu")
    windows = []
    for domain in FOLDER_DOMAINS:
        batch = HeldOutDomainSource(domain, args.images).render(0, args.images)
        with torch.no_grad():
            probs = np.asarray(model.probabilities(torch.from_numpy(batch.images)), np.float64)
        windows.append((probs, batch.labels))
        print(f"{domain}: accuracy {100 * (probs.argmax(1) == batch.labels).mean():.1f}%", flush=True)
    name = SHIPPED[model.num_classes]
    maps = fit_baseline_maps(windows, {
        "model": model.name, "sha256": model.sha256, "domains": list(FOLDER_DOMAINS), "images_per_domain": args.images,
        "command": f"python benchmarks/fit_baseline_maps.py --images {args.images}", "git_sha": git_sha()})
    maps.save(ASSETS / f"{name}.json")
    print(f"MaNo lines {maps.mano_lines}; CBPE held-out ECE raw {maps.ece_raw:.2f}, isotonic {maps.ece_calibrated:.2f}: "
          f"{'isotonic' if maps.cbpe_isotonic else 'raw'}; wrote {ASSETS / f'{name}.json'}")


if __name__ == "__main__":
    main()
