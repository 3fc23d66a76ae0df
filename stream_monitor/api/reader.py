"""Reading a run directory after (or during) a run: tables as Arrow or pandas, probes as records.

Every function takes a run directory of `stream-monitor run` or of `Monitor` alike and reads it
through `rundir.RunDirectory` (closed Parquet parts only, so a running run can be read).

    >>> probes = read_probes(result.run_dir)            # list[ProbeReport]
    >>> steps = read_table(result.run_dir, "steps", "pandas")
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from ..rundir import TABLE_NAMES, RunDirectory, RunDirectoryError
from .records import EventReport, ProbeReport, calibrated

__all__ = ["read_events", "read_probes", "read_table"]

FORMATS = ("arrow", "pandas")


def read_table(run_dir: str | os.PathLike[str], name: str, as_: str = "arrow") -> Any:
    """Table `name` (steps, probes, events or estimates) as a `pyarrow.Table`, or a pandas DataFrame.

    Raises:
        RunDirectoryError: not a run directory, an unknown table, or an unknown format.
    """
    if name not in TABLE_NAMES:
        raise RunDirectoryError(f"Unknown table {name!r}. Valid tables: {', '.join(TABLE_NAMES)}.")
    if as_ not in FORMATS:
        raise RunDirectoryError(f"Unknown table format {as_!r}. Valid formats: {', '.join(FORMATS)}.")
    table = RunDirectory(run_dir).table(name)
    if as_ == "pandas":
        try:
            import pandas  # noqa: F401  (pyarrow's to_pandas needs it)
        except ImportError:
            raise RunDirectoryError("pandas is not installed: `pip install pandas`, or read the table as "
                                    "as_='arrow'.") from None
        return table.to_pandas()
    return table


def read_probes(run_dir: str | os.PathLike[str]) -> list[ProbeReport]:
    """The run's probe windows as `ProbeReport`s, the records a monitor's callbacks received."""
    directory = RunDirectory(run_dir)
    estimates: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in directory.rows("estimates"):
        estimates[row["step"]].append(row)
    active: list[str] = []
    events = sorted(directory.rows("events"), key=lambda r: r["wall_time"])
    probes = directory.rows("probes")
    is_calibrated = calibrated(directory)
    out, k = [], 0
    for probe in probes:
        # a detector's warning is written before the probe row of its step, as the live callbacks see it
        while k < len(events) and events[k]["wall_time"] <= probe["wall_time"]:
            event = events[k]
            if event["kind"] == "warning":
                active.append(event["origin"])
            elif event["kind"] == "clear" and event["origin"] in active:
                active.remove(event["origin"])
            k += 1
        out.append(ProbeReport.from_rows(probe, estimates[probe["step"]], is_calibrated, active))
    return out


def read_events(run_dir: str | os.PathLike[str]) -> list[EventReport]:
    """The run's events (start, cycle, checkpoint, reset, warning, clear, error, stop) in order."""
    return [EventReport.from_row(r) for r in RunDirectory(run_dir).rows("events")]
