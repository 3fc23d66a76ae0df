"""The maps the MaNo and CBPE baselines need, fitted on the calibration's labelled domains.

Kept in their own file per model (assets/calibrations/baselines/<model>.json) so that the
calibration format does not change for two baselines: the frozen model's MaNo lines (one per
normalisation) and CBPE's isotonic map of the max-softmax to the chance of being right, kept only
where it lowers the held-out expected calibration error (NannyML's `needs_calibration`: 10
stratified shuffle splits, 10 equal-mass bins). Fitted by `benchmarks/fit_baseline_maps.py` on
the held-out domains `stream-monitor calibrate` uses (clean plus the four held-out corruptions at
severities 1-5), never on a stream corruption. Like the nuclear-norm line, the served feed borrows
the frozen model's maps: the adapter starts as that model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


ASSETS = Path(__file__).resolve().parents[1] / "assets" / "calibrations" / "baselines"
#: The model whose maps ship, by its number of classes (the estimators know no more of the model).
SHIPPED = {10: "embedded_resnet20"}


@dataclass(frozen=True)
class BaselineMaps:
    """Args:
        mano_lines: normalisation -> (slope, intercept) of accuracy (%) on the MaNo score.
        cbpe_isotonic: (max-softmax knots, probability-correct knots) of the isotonic map, None
            where it did not lower the held-out ECE (then CBPE reads the raw max-softmax).
        ece_raw, ece_calibrated: the mean held-out ECE (%) behind that choice.
        provenance: model, checksum, domains, images per domain, command.
    """

    mano_lines: dict[str, tuple[float, float]]
    cbpe_isotonic: tuple[tuple[float, ...], tuple[float, ...]] | None
    ece_raw: float
    ece_calibrated: float
    provenance: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "BaselineMaps":
        data = json.loads(Path(path).read_text())
        iso = data["cbpe_isotonic"]
        return cls({k: tuple(v) for k, v in data["mano_lines"].items()},
                   None if iso is None else (tuple(iso[0]), tuple(iso[1])), data["ece_raw"],
                   data["ece_calibrated"], data.get("provenance", {}))


@lru_cache(maxsize=None)
def maps_for(num_classes: int) -> BaselineMaps | None:
    """The shipped maps of a model with `num_classes` classes, None where none ship."""
    name = SHIPPED.get(num_classes)
    path = ASSETS / f"{name}.json"
    return BaselineMaps.load(path) if name and path.exists() else None
