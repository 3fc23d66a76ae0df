"""From calibration files to a run's `EstimationContext`, with one precedence.

- **The served feed and Entropy Enigma's f** need a calibration made for the run's model, adapter,
  hyperparameters, probe size and cycle: the configured `estimation.calibration` (a mismatch is an
  error), else the first shipped file in `SHIPPED` that matches, else none.
- **The frozen feed** never sees the adapter, so a calibration of the same model with any adapter
  serves: the configured `estimation.frozen_calibration`, else the configured
  `estimation.calibration`, else the first shipped file in `SHIPPED / "frozen"` for the model,
  else the served feed's file, else none.

The paper's ResNet-50 f ships as a file like the others (`SHIPPED`), with null provenance fields
where it holds for any weights, hyperparameters or probe size. A live run resolves its context from
the config and the workers' provenance; `stream-monitor eval` from the run directory's, optionally
with other files in place of the configured ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..adapters import ADAPTERS
from ..config import RunConfig
from ..estimation.context import EstimationContext
from ..estimation.readings import Target
from ..estimation.window import calibrated_on_adapter, with_frozen_line
from .format import FROZEN_PROVENANCE_KEYS, PROVENANCE_KEYS, Calibration, CalibrationMismatch, Provenance

__all__ = ["SHIPPED", "resolve_context", "shipped_calibration"]

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "calibrations"


def shipped_calibration(folder: Path, provenance: Provenance,
                        keys: tuple[str, ...] = PROVENANCE_KEYS) -> tuple[Calibration, Path] | None:
    """(calibration, path) of the first file in `folder` (sorted by name) made for `provenance`'s
    `keys`, else None."""
    for path in sorted(Path(folder).glob("*.json")):
        calibration = Calibration.load(path)
        try:
            calibration.check(provenance, keys)
        except CalibrationMismatch:
            continue
        return calibration, path
    return None


def resolve_context(config: RunConfig, provenance: Provenance, *, calibration: Calibration | None = None,
                    frozen_calibration: Calibration | None = None, shipped: Path = SHIPPED) -> EstimationContext:
    """The run's estimation context (see the module docstring for the precedence).

    Args:
        config: the run's config; its `estimation.calibration` and `estimation.frozen_calibration` are loaded.
        provenance: what the run was made with (`WorkersDescription.provenance`, or a run directory's).
        calibration, frozen_calibration: files already loaded that take the place of the configured
            ones (`stream-monitor eval --calibration`).
        shipped: the folder of shipped calibrations.

    Raises:
        CalibrationMismatch: a configured or given file was made for another model, adapter or cadence.
        FileNotFoundError, ValueError: a configured file is missing or unreadable.
    """
    served_file, served_origin = calibration, "the given file"
    if served_file is None and config.estimation.calibration:
        served_origin = config.estimation.calibration
        served_file = Calibration.load(Path(served_origin))
    if served_file is not None:
        served_file.check(provenance)
    else:
        found = shipped_calibration(shipped, provenance)
        if found is not None:
            served_file, served_origin = found[0], f"shipped {found[1].name}"

    frozen_file, frozen_origin = frozen_calibration, "the given file"
    if frozen_file is None and config.estimation.frozen_calibration:
        frozen_file = Calibration.load(Path(config.estimation.frozen_calibration))
        frozen_origin = config.estimation.frozen_calibration
    if frozen_file is not None:
        frozen_file.check(provenance, FROZEN_PROVENANCE_KEYS)
    elif calibration is not None or config.estimation.calibration:
        frozen_file, frozen_origin = served_file, served_origin
    else:
        found = shipped_calibration(shipped / "frozen", provenance, FROZEN_PROVENANCE_KEYS)
        frozen_file, frozen_origin = (found[0], f"shipped frozen/{found[1].name}") if found else \
            (served_file, served_origin)

    served = served_file.window_stats() if served_file is not None else None
    frozen = frozen_file.window_stats(frozen=True) if frozen_file is not None else None
    flips = served_file.flips_calibrations() if served_file is not None else {}
    origins = {part: str(origin) for part, origin, present in (("served", served_origin, served is not None),
                                                                ("frozen", frozen_origin, frozen is not None),
                                                                ("flips", served_origin, bool(flips))) if present}
    # the source target's rule comes with the frozen model's file; the online target's with a
    # calibration of the served adapter itself (another adapter's served feed is another feed),
    # else the frozen file's rule for adapters without one (the anchored estimate, its interval
    # measured on adapters that rule was not fitted on: docs/headline-rule.md)
    rules = {}
    frozen_rules = frozen_file.headline_rules() if frozen_file is not None else {}
    served_rules = served_file.headline_rules() if served_file is not None else {}
    if Target.SOURCE in frozen_rules:
        rules[Target.SOURCE] = frozen_rules[Target.SOURCE]
    if Target.ONLINE in served_rules:
        rules[Target.ONLINE] = served_rules[Target.ONLINE]
    elif Target.ONLINE in frozen_rules and not calibrated_on_adapter(served):
        rules[Target.ONLINE] = frozen_rules[Target.ONLINE]
        origins["online rule"] = f"{frozen_origin} (for adapters without a calibration of their own)"
    context = EstimationContext(
        served=with_frozen_line(served, frozen), frozen=frozen, flips=flips,
        spread_flips=served_file.flips_calibrations(spread=True) if served_file is not None else {},
        adapter_calibrated=calibrated_on_adapter(served), origins=origins, rules=rules,
        served_is_frozen=provenance.adapter in ADAPTERS and not ADAPTERS.info(provenance.adapter).adapts)
    logger.info("estimation context: %s", context.describe())
    return context
