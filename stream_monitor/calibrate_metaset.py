"""`stream-monitor calibrate`'s last stage: the full-range meta-set and the headline rules.

After the probe runs and the clean-domain statistics (`calibrate.calibrate`), the meta-set
(`metaset.build`: shifted windows of the embedded glyphs or of the user's image folder, from the
source domain down to chance) is read by the frozen model and by the run's adapter, fresh at each
domain, with the new file's own statistics; then `calibration.fullrange.fit_full_range` refits the
Sentinel and nuclear-norm lines, fits the anchor line and learns the rules with leave-one-family-out
cross-validation (docs/headline-rule.md). The same file the two benchmark scripts make for the
shipped calibrations.

- An adapter that adapts gets its own online rule; the anchor line also reads the gaps of the
  calibration's own probe windows (`rule.point_gaps`).
- An adapter that does not (`source`) makes the frozen model's file: its online rule is the one of
  adapters without a calibration, measured on `UNCALIBRATED_ADAPTERS`' served feeds, read as a run
  without a calibration reads them.

The windows go to `metaset.jsonl` in the work folder as they are made; with `--keep DIR` a stopped
calibration resumes its meta-set there (`metaset.json` records what the windows were made with, and
a file made with anything else is started again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stream_monitor.sources.shifts import parse_shift

from .adapters import ADAPTERS
from .calibration.format import Calibration
from .calibration.fullrange import FullRangeFit, fit_full_range
from .calibration.rule import MIN_WINDOWS, point_gaps
from .config import RunConfig
from .estimation.sentinel import MIN_IMAGES
from .estimation.window import with_frozen_line
from .metaset import MetaSetBuild, MetaSetReaders, build, default_domains

__all__ = ["UNCALIBRATED_ADAPTERS", "MetaSetOptions", "adapts_by_name", "add_full_range"]

#: The adapters whose served feeds measure the frozen file's rule for adapters without a calibration:
#: BatchNorm statistics alone and Tent (the meta-set's fresh adapters differ little: docs/headline-rule.md 4b).
UNCALIBRATED_ADAPTERS = ("norm", "tent")


#: How `stream-monitor calibrate` spells the options in its messages.
CLI_NAMES = {"domains": "--metaset-domains", "windows": "--metaset-windows", "window_images": "--metaset-window-images"}


@dataclass(frozen=True)
class MetaSetOptions:
    """The meta-set `calibrate` reads: its domains (`sources.shifts`; empty: `metaset.default_domains`
    for the data), windows per domain and images per window. `names`: the options as the messages
    call them (the CLI's flags, or the Python API's arguments)."""

    domains: tuple[str, ...] = ()
    windows: int = 3
    window_images: int = 512
    names: Mapping[str, str] = field(default_factory=lambda: CLI_NAMES, compare=False)

    def resolved(self, data: str | None) -> tuple[str, ...]:
        """The domains, after checking every option (before anything runs).

        Raises:
            ValueError: a domain does not parse (the message lists the families with an example), or
                a count is too small.
        """
        domains = self.domains or default_domains(data)
        for domain in domains:
            try:
                parse_shift(domain)
            except ValueError as error:
                raise ValueError(f"{self.names['domains']}: {error}; or leave it out for the default "
                                 f"domains") from None
        if self.windows < 1:
            raise ValueError(f"{self.names['windows']} must be 1 or more, got {self.windows}")
        if self.window_images < MIN_IMAGES:
            raise ValueError(f"{self.names['window_images']} must be at least {MIN_IMAGES} (the Sentinel's window "
                             f"features need that many images), got {self.window_images}; 512 is the default")
        return tuple(domains)

    def too_few(self, data: str | None) -> str | None:
        """A note when the meta-set has too few windows for a rule to rank any estimator, else None."""
        total = len(self.resolved(data)) * self.windows
        if total >= MIN_WINDOWS:
            return None
        return (f"the meta-set has {total} windows and a 90% interval needs {MIN_WINDOWS}: its rules will rank no "
                f"estimator (the fixed order headlines, without an interval); raise {self.names['windows']} or add "
                f"domains")


def add_full_range(calibration: Calibration, config: RunConfig, options: MetaSetOptions, work_dir: Path,
                   log: Callable[[str], None] = print, readers: MetaSetReaders | None = None) -> FullRangeFit:
    """`calibration` with the full-range meta-set and its rules (see the module docstring).

    Args:
        calibration: what the probe runs and the clean statistics gave (with its frozen statistics).
        config: the run's config (model, adapter, image folder in `source.data`, batch size).
        options: the meta-set to read.
        work_dir: where `metaset.jsonl` goes (and resumes from).
        readers: the model, adapters and labelled images that read the meta-set (the Python API's
            `calibrate_model`: the user's); None: those `config` names.
    """
    data = config.source.data if readers is None else readers.data
    domains = options.resolved(data)
    frozen = calibration.window_stats(frozen=True)
    adapter = config.adapter.name
    adapts = adapts_by_name(adapter)
    if adapts:
        served, gaps = {adapter: calibration.window_stats()}, point_gaps(calibration.points, adapter)
    else:  # the served feed is the frozen one: the file is the frozen model's
        served, gaps = {name: with_frozen_line(None, frozen) for name in UNCALIBRATED_ADAPTERS}, []
    spec = MetaSetBuild(domains, served, frozen, options.windows, options.window_images, config.source.batch_size,
                        None if data is None else str(data))
    path = Path(work_dir) / "metaset.jsonl"
    _start_again_if_changed(path, {"model": calibration.model, "model_sha256": calibration.model_sha256,
                                   "adapters": sorted(served), "hyperparameters": calibration.hyperparameters,
                                   "window_images": options.window_images, "batch_size": config.source.batch_size,
                                   "data": spec.data}, log)
    log(f"full-range meta-set: {len(domains)} domains x {options.windows} windows of {options.window_images} images, "
        f"frozen model and {', '.join(served)} ({path})")
    wanted = set(domains)
    windows = [w for w in build(spec, config, path, log, readers)
               if w["domain"] in wanted and w["window"] < options.windows]
    fitted = fit_full_range(calibration, windows, adapter if adapts else None, gaps)
    for target, rule in fitted.calibration.rules.items():
        for region in ("inside", "outside"):
            ranked = ", ".join(f"{c['estimator']} (MAE {c['mae']:.1f}, 90% [{c['low']:+.1f}, {c['high']:+.1f}])"
                               for c in rule[region]) or "none (too few windows)"
            log(f"{target} rule, {region} the support: {ranked}")
    return fitted


def adapts_by_name(adapter: str) -> bool:
    """Whether the adapter a calibration is named for adapts: a registered adapter says so
    (`source` does not); a user's own adapter object (any other name) is taken to adapt."""
    return adapter not in ADAPTERS or ADAPTERS.info(adapter).adapts


def _start_again_if_changed(path: Path, made_with: dict, log: Callable[[str], None]) -> None:
    """Remove `path`'s windows when its sidecar says they were made with other settings."""
    sidecar = path.with_suffix(".json")
    made_with = json.loads(json.dumps(made_with))
    if path.exists() and (not sidecar.exists() or json.loads(sidecar.read_text()) != made_with):
        log(f"{path} was made with other settings; building the meta-set again")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(made_with, indent=1))
