"""How the evaluation suite judges one run's estimates against the labelled truth (DESIGN.md 6).

Per target (source, online) and per estimator, over the run's probe windows: MAE, bias and the
worst window's error (points), the share of windows whose interval holds the truth (where the
rows carry an interval) and the share flagged out of support (where they carry a flag). The
headline is read from the probe rows; each estimator from the estimates table. Columns that a
release does not write are absent, and the figure is then None ("n/a" in the table): the suite
reads whatever interval and support columns a release has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

TARGETS = ("source", "online")
#: Probe-row columns of a headline's interval, per target, in the order they are looked for.
INTERVAL_COLUMNS = {t: [(f"est_{t}_lo", f"est_{t}_hi"), (f"est_{t}_low", f"est_{t}_high")] for t in TARGETS}
#: Probe-row columns saying a headline's window is out of the calibration's support.
SUPPORT_COLUMNS = {t: [f"est_{t}_out_of_support", "est_out_of_support", "out_of_support"] +
                   (["est_extrapolated"] if t == "source" else []) for t in TARGETS}


@dataclass(frozen=True)
class Score:
    """One estimate's figures over a run's windows (points; shares in [0, 1]; None: not available)."""

    windows: int            # windows with both an estimate and the truth
    missing: int            # windows with the truth but no estimate
    mae: float | None
    bias: float | None      # mean of estimate - truth
    worst: float | None     # the largest absolute error of a window
    coverage: float | None  # share of windows with an interval that holds the truth
    out_of_support: float | None  # share of windows flagged

    def row(self) -> dict:
        return asdict(self)


def _values(column: Sequence | None, n: int) -> np.ndarray:
    if column is None:
        return np.full(n, np.nan)
    return np.array([np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                     for v in column], dtype=np.float64)


def score(estimates: Sequence, truths: Sequence, lows: Sequence | None = None, highs: Sequence | None = None,
          flags: Sequence | None = None) -> Score:
    """The figures of one estimate's windows; None entries are windows without a value."""
    est, truth = _values(estimates, len(truths)), _values(truths, len(truths))
    if len(est) != len(truth):
        raise ValueError(f"{len(est)} estimates for {len(truth)} windows of truth")
    known = ~np.isnan(truth)
    both = known & ~np.isnan(est)
    error = est[both] - truth[both]
    coverage = None
    if lows is not None and highs is not None:
        lo, hi = _values(lows, len(truth)), _values(highs, len(truth))
        with_interval = known & ~np.isnan(lo) & ~np.isnan(hi)
        if with_interval.any():
            coverage = float(((lo <= truth) & (truth <= hi))[with_interval].mean())
    support = None
    if flags is not None:
        flagged = _values(flags, len(truth))[known]
        flagged = flagged[~np.isnan(flagged)]
        support = float(flagged.mean()) if len(flagged) else None
    return Score(int(both.sum()), int((known & np.isnan(est)).sum()),
                 float(np.abs(error).mean()) if len(error) else None, float(error.mean()) if len(error) else None,
                 float(np.abs(error).max()) if len(error) else None, coverage, support)


def _first(columns: dict, names: Sequence) -> list | None:
    return next((columns[n] for n in names if n in columns), None)


def headline_scores(probes: dict[str, list]) -> dict[str, tuple[Score, str]]:
    """target -> (the headline's score, the estimators it came from) from a run's probe columns."""
    out = {}
    for target in TARGETS:
        lows = highs = None
        for lo, hi in INTERVAL_COLUMNS[target]:
            if lo in probes and hi in probes:
                lows, highs = probes[lo], probes[hi]
                break
        methods = sorted({m for m in probes.get(f"est_{target}_method", []) if m})
        out[target] = (score(probes[f"est_{target}_acc"], probes[f"true_{target}_acc"], lows, highs,
                             _first(probes, SUPPORT_COLUMNS[target])), "+".join(methods))
    return out


def window_rows(probes: dict[str, list]) -> list[dict]:
    """One row per probe window and target: the headline's value, interval, out-of-support flag and
    method against the truth (None where the release writes no such column), so a suite's
    per-case figures can be traced to its windows without the run directories."""
    rows = []
    for target in TARGETS:
        interval = next(((probes[lo], probes[hi]) for lo, hi in INTERVAL_COLUMNS[target]
                         if lo in probes and hi in probes), None)
        flags = _first(probes, SUPPORT_COLUMNS[target])
        methods = probes.get(f"est_{target}_method")
        for i, step in enumerate(probes["step"]):
            estimate, truth = probes[f"est_{target}_acc"][i], probes[f"true_{target}_acc"][i]
            low, high = (interval[0][i], interval[1][i]) if interval else (None, None)
            rows.append({"step": step, "target": target, "truth": truth, "estimate": estimate,
                         "error": None if estimate is None or truth is None else estimate - truth,
                         "low": low, "high": high,
                         "covered": None if None in (low, high, truth) else bool(low <= truth <= high),
                         "out_of_support": None if flags is None else flags[i],
                         "method": None if methods is None else methods[i]})
    return rows


def estimator_scores(probes: dict[str, list], estimates: dict[str, list]) -> dict[tuple[str, str], Score]:
    """(target, feed/estimator) -> score, each estimator's readings against its target's truth
    on the probe row of the same step."""
    truth = {t: dict(zip(probes["step"], probes[f"true_{t}_acc"])) for t in TARGETS}
    keys = sorted({(t, f"{f}/{e}") for t, f, e in zip(estimates["target"], estimates["feed"], estimates["estimator"])})
    out = {}
    for target, key in keys:
        rows = [i for i, (t, f, e) in enumerate(zip(estimates["target"], estimates["feed"], estimates["estimator"]))
                if t == target and f"{f}/{e}" == key and estimates["step"][i] in truth[target]]
        pick = lambda column: None if column not in estimates else [estimates[column][i] for i in rows]  # noqa: E731
        out[(target, key)] = score(pick("value"), [truth[target][estimates["step"][i]] for i in rows],
                                   pick("interval_low"), pick("interval_high"), pick("extrapolated"))
    return out


def read_columns(run_dir: Path, table: str) -> dict[str, list]:
    """A run's table as columns (its finished Parquet parts), read without the checkout's readers
    so any release's run directory reads the same way."""
    parts = sorted((Path(run_dir) / table).glob("*.parquet"))
    if not parts:
        return {}
    import pyarrow as pa

    data = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")
    return data.to_pydict()
