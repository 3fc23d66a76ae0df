"""The calibration file: what `stream-monitor calibrate` fitted, for which run, from which meta-set.

A JSON file (format `FORMAT`) with its provenance (model and checksum, adapter and
hyperparameters, probe size, cycle), the meta-set's windows (`points`), Entropy Enigma's f per
snapshot step and both feeds' statistics (`estimation.window.FeedStats` as mappings); since
format 3 also the full-range meta-set's windows with every estimator's reading (`meta_windows`)
and the headline rules learned on them (`rules`: target -> `estimation.headline.HeadlineRule`). A run
refuses a file made for another model or adapter (`check`); a provenance field that is null in
the file matches any run (the paper's ResNet-50 f holds for any weights file of that model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..estimation.flips import FlipsCalibration
from ..estimation.headline import HeadlineRule
from ..estimation.readings import Target
from ..estimation.window import FeedStats, stats_from_dict

__all__ = ["FORMAT", "FROZEN_PROVENANCE_KEYS", "PROVENANCE_KEYS", "Calibration", "CalibrationMismatch", "Provenance"]

FORMAT = 3  # 3: learned headline rules with intervals and support; 2: null provenance fields match any run
#: What each older format lacks, for the message that refuses it.
OLDER = {1: "the frozen model's statistics, the learned headline rules and their intervals",
         2: "the full-range meta-set, the learned headline rules, their intervals and the support"}
#: What must match between a calibration and a run for f to mean anything.
PROVENANCE_KEYS = ("model", "model_sha256", "adapter", "hyperparameters", "probe_size", "cycle")
#: What the frozen model's feed needs to match: its estimators never see the adapter.
FROZEN_PROVENANCE_KEYS = ("model", "model_sha256")


class CalibrationMismatch(ValueError):
    """A calibration was made for another model, adapter, probe or cadence than the run's."""


@dataclass(frozen=True)
class Provenance:
    """What a run (or a calibration) was made with, as far as a calibration must match it.

    `model_sha256` may be a prefix (run.json keeps 12 hex digits)."""

    model: str
    model_sha256: str
    adapter: str
    hyperparameters: dict[str, Any]
    probe_size: int
    cycle: int


@dataclass
class Calibration:
    model: str
    model_sha256: str | None
    adapter: str | None
    hyperparameters: dict[str, Any] | None
    probe_size: int | None
    probe_every: int
    cycle: int | None
    domains: list[str]
    points: list[dict[str, Any]] = field(default_factory=list)  # one per meta-set window
    fits: dict[int, dict[str, Any]] = field(default_factory=dict)  # cycle_step -> coefficients, range, rmse
    served_stats: dict[str, Any] | None = None  # the served adapter's FeedStats at its initial state
    created: str = ""
    format: int = FORMAT
    frozen_stats: dict[str, Any] | None = None  # the frozen model's FeedStats
    spread_fits: dict[int, dict[str, Any]] = field(default_factory=dict)  # f of the spread reference set's flips
    origin: str = "stream-monitor calibrate"  # who fitted it (a paper, or this command)
    meta_windows: list[dict[str, Any]] = field(default_factory=list)  # the full-range meta-set (stream_monitor.metaset)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> HeadlineRule.to_dict()

    def headline_rules(self) -> dict[Target, HeadlineRule]:
        """target -> the headline rule learned on this file's meta-set (none: the fixed order)."""
        return {Target(t): HeadlineRule.from_dict(r) for t, r in self.rules.items()}

    def flips_calibrations(self, spread: bool = False) -> dict[int, FlipsCalibration]:
        """cycle_step -> f of the first-images reference set, or (`spread`) of the spread one; a fit
        may name the probe size its weighted flips were counted on (else the file's)."""
        return {int(step): FlipsCalibration(
            model=self.model, coefficients=tuple(fit["coefficients"]), fitted_range=tuple(fit["range"]),
            cycle_step=int(step), probe_size=int(fit.get("probe_size") or self.probe_size),
            adapter=self.adapter or "any", origin=f"{self.origin}, {len(self.domains)} meta-set runs",
        ) for step, fit in (self.spread_fits if spread else self.fits).items()}

    def window_stats(self, frozen: bool = False) -> FeedStats | None:
        """FeedStats of the served adapter at its initial state, or (`frozen`) of the frozen model."""
        return stats_from_dict(self.frozen_stats if frozen else self.served_stats)

    def check(self, provenance: Provenance, keys: tuple[str, ...] = PROVENANCE_KEYS) -> None:
        """Raise CalibrationMismatch, naming every difference in `keys`, unless `provenance` matches."""
        theirs = asdict(provenance)
        wrong = [f"{key}: calibration has {getattr(self, key)!r}, the run has {theirs[key]!r}"
                 for key in keys if getattr(self, key) is not None and not _same(key, getattr(self, key), theirs[key])]
        if wrong:
            raise CalibrationMismatch(
                "This calibration was made for another setting, so its f would not mean anything here: "
                + "; ".join(wrong) + ". Run `stream-monitor calibrate` with the run's model, adapter and probe "
                "settings, or drop --set estimation.calibration.")

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["fits"] = {str(k): v for k, v in self.fits.items()}
        data["spread_fits"] = {str(k): v for k, v in self.spread_fits.items()}
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Calibration file {path} not found; `stream-monitor calibrate --out {path}` "
                                    f"makes one.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"Calibration file {path} is not valid JSON ({error}).") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            lacks = f" (it lacks {OLDER[found]})" if found in OLDER else ""
            raise ValueError(f"Calibration file {path} has format {found}{lacks}; this version reads format {FORMAT}. "
                             f"Make it again with `stream-monitor calibrate` (which adds the full-range meta-set and the "
                             f"rules), or add them to it with `python benchmarks/refit_calibration.py`.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Calibration file {path} has unknown fields {', '.join(unknown)}; it was not written "
                             f"by this version of `stream-monitor calibrate`.")
        data["fits"] = {int(k): v for k, v in data["fits"].items()}
        data["spread_fits"] = {int(k): v for k, v in data["spread_fits"].items()}
        return cls(**data)


def _same(key: str, mine: Any, theirs: Any) -> bool:
    if key == "model_sha256" and theirs and len(theirs) < len(mine):  # run.json keeps a prefix
        return mine.startswith(theirs)
    return _normal(mine) == _normal(theirs)


def _normal(value: Any) -> Any:
    """Floats compared to 6 significant digits (JSON round trips), dicts by their items."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items())}
    return value
