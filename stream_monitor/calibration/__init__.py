"""Calibration files and what they give a run.

- `format`: the file (`Calibration`), its provenance and the check that it fits a run.
- `fit`: the fitting maths (f per snapshot step, nuclear-norm lines, the Sentinel's training set);
  `merging`: calibrations made in parallel made into one, every fit made again.
- `resolve`: from files to a run's `EstimationContext`, with one precedence.

The meta-set driver that runs the probe protocol to make a file is `stream_monitor.calibrate`;
nothing here imports the runtime.
"""

from .fit import fit_flips
from .merging import merge
from .format import FORMAT, Calibration, CalibrationMismatch, Provenance
from .resolve import SHIPPED, resolve_context

__all__ = ["FORMAT", "SHIPPED", "Calibration", "CalibrationMismatch", "Provenance", "fit_flips", "merge",
           "resolve_context"]
