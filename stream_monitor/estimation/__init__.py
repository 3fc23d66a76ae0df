"""Label-free accuracy estimates and collapse detectors (ignite's reset/update/compute contract).

How a window becomes two numbers is told once, in `pipeline.py`.

- `readings`: the vocabulary (feed, target, `Reading`).
- `window`, `sentinel`, `duo`, `aetta`, and the baselines `mano`, `cbpe`: the window estimators,
  registered in `ESTIMATORS` (`baseline_maps`: the maps the two baselines read).
- `flips`: Entropy Enigma's flip counting and its map to accuracy.
- `context`: what a run's estimation takes from calibration files, resolved once.
- `pipeline`: every estimator on both feeds, and the pure rule from readings to headlines.
- `detectors`: collapse detectors (`DETECTORS`).
"""

from . import aetta, cbpe, duo, mano, sentinel, window  # noqa: F401  (registration)
from .base import ESTIMATORS, NotComputableError
from .readings import Feed, Reading, Target

__all__ = ["ESTIMATORS", "Feed", "NotComputableError", "Reading", "Target"]
