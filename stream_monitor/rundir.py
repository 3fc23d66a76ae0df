"""The one reader of a run directory: what `stream-monitor run` leaves behind, for every tool that reads it.

A run directory (made by `stream_monitor.runtime.runner`):

    RUN_DIR/config.yaml      the resolved RunConfig; written first, so it marks a run directory
    RUN_DIR/run.json         the RunInfo (plus the directory's `format`), once the workers are up
    RUN_DIR/estimation.json  the calibrated statistics and f the run's estimators read, and where from
    RUN_DIR/<table>/part-*.parquet   the tables of `metrics.schema` (closed parts only: any reader opens them)
    RUN_DIR/.inflight/<table>/       the parts being written, moved into <table>/ whole when closed
    RUN_DIR/checkpoint.pt    the last checkpoint (none before the first one), sha256-checked
    RUN_DIR/checkpoint.previous.pt   the one before, which resume falls back to
    RUN_DIR/driver.log       the driver's log
    RUN_DIR/.lock            flock'd while a process runs the directory (held lock: in use)
    RUN_DIR/quarantine/      damaged parts and checkpoints that a resume set aside

Report, bench, eval and calibration read it through `RunDirectory`, so a change of layout or a
new field is made in one place, and a directory from another version fails here with a message
naming both versions instead of deep inside a plot or a fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .calibration.format import Provenance
from .config import RunConfig, load_config
from .estimation.context import EstimationContext
from .metrics.schema import TABLES
from .metrics.sink import read_table
from .runtime.observer import RunInfo
from .schedule import cycle_length

if TYPE_CHECKING:
    from .runtime.checkpoint import Checkpoint

__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "CONTEXT_FILE", "FORMAT", "INFO_FILE", "LOCK_FILE", "LOG_FILE",
           "TABLE_NAMES", "RunDirectory", "RunDirectoryError"]

#: Version of the run directory layout, its tables and run.json's fields; the runner records it as
#: run.json's `format` (4: the headlines' intervals and out-of-support flags in probes; 3: run_id, UTC time and units in every table, open parts in .inflight; 2: estimates by
#: feed, with raw scores; checkpoints of the estimation pipeline).
FORMAT = 4

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"  # the name `runtime.checkpoint` writes (its CHECKPOINT)
CONTEXT_FILE = "estimation.json"  # the EstimationContext the run's estimators read (calibration.resolve)
LOG_FILE = "driver.log"
LOCK_FILE = ".lock"  # `runtime.runner` flocks it for a run's life, so a second run of the directory fails at once
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)  # steps, probes, events, estimates

_HINT = "pass the folder that `stream-monitor run` printed (`stream-monitor run --out DIR` makes one under DIR)"


class RunDirectoryError(ValueError):
    """A folder that is not a readable run directory of this version; the message says what to pass or do."""


class RunDirectory:
    """A run directory, checked once on opening: the folder and its config.yaml exist, and a run.json,
    when there is one, is of this FORMAT with exactly the RunInfo fields.

    A run.json is absent only when the run stopped before its workers started; `info()` and what
    derives from it then raise, while `config()` still works (enough to resume).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunDirectoryError(f"run directory {self.path} does not exist; {_HINT}.")
        if not self.config_path.is_file():
            raise RunDirectoryError(f"{self.path} is not a run directory (no {CONFIG_FILE}); {_HINT}.")
        self._info = _read_info(self.info_path) if self.info_path.is_file() else None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def info_path(self) -> Path:
        return self.path / INFO_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def config(self, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """The run's resolved config, with `overrides` (`section.key=value`, as `--set`) on top."""
        return load_config(self.config_path, overrides)

    def info(self) -> RunInfo:
        """The run's facts from run.json."""
        if self._info is None:
            raise RunDirectoryError(f"{self.path} has no {INFO_FILE}: the run stopped before its workers started, "
                                    f"so its model and adapter are unknown; resume it with "
                                    f"`stream-monitor run --resume {self.path}` or start a new run.")
        return self._info

    @property
    def num_classes(self) -> int:
        """The model's number of classes, as run.json records it."""
        n = self.info().num_classes
        if n < 1:
            raise RunDirectoryError(f"{self.info_path} records num_classes={n}; a run of this version records "
                                    f"its model's class count, so re-run the stream with this version.")
        return n

    def context(self) -> EstimationContext:
        """The estimation context the run resolved when it started (`calibration.resolve`)."""
        path = self.path / CONTEXT_FILE
        if not path.is_file():
            raise RunDirectoryError(f"{self.path} has no {CONTEXT_FILE}: the run stopped before its workers started; "
                                    f"resume it with `stream-monitor run --resume {self.path}` or start a new run.")
        try:
            return EstimationContext.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunDirectoryError(f"{path} cannot be read ({error}); start a new run.") from None

    def table(self, name: str) -> pa.Table:
        """All closed parts of table `name` (one of TABLE_NAMES) in part order; empty with its schema when none."""
        try:
            return read_table(self.path, name)
        except ValueError as error:  # a part of another version's schema
            raise RunDirectoryError(str(error)) from None
        except OSError as error:  # a closed part is published atomically, so this is disk damage or a stray file
            raise RunDirectoryError(f"{error}. Move the part out of {self.path / name}, or resume the run "
                                    f"(`stream-monitor run --resume {self.path}` moves such parts to "
                                    f"quarantine/).") from error

    def rows(self, name: str) -> list[dict[str, Any]]:
        """The rows of table `name` as dicts keyed by column."""
        return self.table(name).to_pylist()

    def checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint whose checksum holds (the previous one when the last is damaged), or None
        when the run wrote none (stopped in its first steps); CheckpointError when none can be used."""
        from .runtime.checkpoint import load_checkpoint  # torch: only for the callers that resume

        return load_checkpoint(self.path)

    def provenance(self) -> Provenance:
        """What a calibration must match: model name, the 12-digit model_sha256 prefix run.json
        keeps, adapter, hyperparameters, probe size and cycle length."""
        info = self.info()
        name, _, digest = info.model.partition(" ")
        config = self.config()
        cycle = cycle_length(config.probe.cycle, info.hyperparameters.get("reset_every"))
        return Provenance(model=name, model_sha256=digest, adapter=info.adapter,
                          hyperparameters=info.hyperparameters, probe_size=info.probe_size, cycle=cycle)


def _read_info(path: Path) -> RunInfo:
    """run.json as a RunInfo, after its format; every RunInfo field must be there and no other."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunDirectoryError(f"{path} cannot be read ({error}); the run's facts are lost, so start a new "
                                f"run.") from None
    if not isinstance(data, dict):
        raise RunDirectoryError(f"{path} holds {type(data).__name__}, not the JSON object `stream-monitor run` "
                                f"writes; start a new run.")
    version = data.pop("format", None)
    if version != FORMAT:
        written = "no format (a run directory from before formats were recorded)" if version is None \
            else f"format {version!r}"
        raise RunDirectoryError(f"{path} has {written}; this version of stream-monitor reads run directory "
                                f"format {FORMAT}. Read it with the version that wrote it, or re-run the stream.")
    names = [f.name for f in fields(RunInfo)]
    missing = [n for n in names if n not in data]
    unknown = sorted(set(data) - set(names))
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise RunDirectoryError(f"{path} does not hold the run facts of this version ({'; '.join(problems)}); "
                                f"it was written by another version of stream-monitor, so re-run the stream.")
    return RunInfo(**data)
