"""The `report` command's engine: one static HTML page with four PNG plots from a run directory.

The run directory is read through `stream_monitor.rundir.RunDirectory` (its config.yaml, run.json
and the steps, probes and events tables). A table may be empty or a column null throughout (a run
stopped early, a stream without labels, the probe off): the report then says what is missing
instead of failing.

Plots are drawn with `matplotlib.figure.Figure` on an Agg canvas, never through pyplot, so the
report leaves the process-wide backend alone.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .metrics.schema import FUSED_ORIGIN
from .rundir import RunDirectory
from .runtime.observer import RunInfo

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["EVENT_ROW_CAP", "PLOTS", "summarise", "write_report"]

PLOTS = ("accuracy.png", "entropy.png", "flips.png", "throughput.png")
EVENT_ROW_CAP = 500
TARGET_WINDOWS = 200          # windowed step series get about this many points
MAX_CYCLE_LEGEND = 10         # more probe cycles than this get a colour bar instead of legend entries
X_LABEL = "stream position (images)"
NO_PROBES = "no probe rows: the probe was off or the run stopped before the first probe"
NO_FLIPS = ("no flips counted: the probe counts them at a cycle's last snapshot (step 990 of 1,000) "
            "unless probe.flips_every says more often, and the run stopped before one")
NO_STEPS = "no step rows: the run stopped before its first step result was written"

Summary = dict[str, float | int | str | None]


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Run:
    """Everything the report reads from a run directory."""

    run_dir: Path
    steps: pa.Table
    probes: pa.Table
    events: pa.Table
    info: RunInfo
    config_text: str


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    if table.num_rows == 0:
        return table
    # Stable, so rows with equal keys keep the order the writer produced them in.
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys]))


def _load(run_dir: Path) -> _Run:
    rundir = RunDirectory(run_dir)
    info = rundir.info()
    # The file as written, comments included: the report shows what the run was given.
    config_text = rundir.config_path.read_text(encoding="utf-8", errors="replace")
    return _Run(run_dir=rundir.path, steps=_sorted(rundir.table("steps"), ["start", "step"]),
                probes=_sorted(rundir.table("probes"), ["step", "position"]),
                events=_sorted(rundir.table("events"), ["wall_time"]), info=info, config_text=config_text)


# ---------------------------------------------------------------------------------------------
# Column helpers (nulls become NaN / False / None so numpy can take over)


def _num(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if col.null_count == len(col):
        return np.full(len(col), np.nan)
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _flag(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(bool)


def _strings(table: pa.Table, name: str) -> list[str]:
    return ["" if v is None else str(v) for v in table.column(name).to_pylist()]


def _has(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


class _Windows:
    """Step rows grouped into windows of `size` stream positions, about `TARGET_WINDOWS` of them."""

    def __init__(self, start: np.ndarray, stop: np.ndarray, target: int = TARGET_WINDOWS) -> None:
        origin = start.min()
        # Never narrower than a typical step: a step's rows cannot be split, so the label would lie.
        self.size = max(1, math.ceil((stop.max() - origin) / target), int(np.median(stop - start)))
        keys, self.index = np.unique((start - origin) // self.size, return_inverse=True)
        self.count = len(keys)
        # A window is plotted at the position it reaches, as probes are.
        self.x = np.full(self.count, -np.inf)
        np.maximum.at(self.x, self.index, stop)

    def total(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.index, weights=np.where(mask, values, 0.0), minlength=self.count)

    def ratio(self, num: np.ndarray, den: np.ndarray, mask: np.ndarray) -> np.ndarray:
        top, bottom = self.total(num, mask), self.total(den, mask)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)

    def mean(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Weighted mean of a per-step mean; steps where it is null do not count."""
        mask = np.isfinite(values)
        return self.ratio(np.where(mask, values, 0.0) * weights, weights, mask)


# ---------------------------------------------------------------------------------------------
# Derived quantities


def _busy_time(run: _Run) -> tuple[np.ndarray, np.ndarray]:
    """Per step row: seconds the run spent on it and whether that is known.

    A step's time runs from the previous result's arrival, or from the start/resume event of its
    session, so the pause between a stop and a resume is not counted. The first step of a session
    without such an event has no known start and is left out of rates.
    """
    wall = _num(run.steps, "wall_time")
    dt = np.full(len(wall), np.nan)
    if len(wall) == 0:
        return dt, np.zeros(0, dtype=bool)
    kinds = np.array(_strings(run.events, "kind"), dtype=object)
    starts = np.sort(_num(run.events, "wall_time")[np.isin(kinds, ("start", "resume"))]) if len(kinds) else np.zeros(0)
    session = np.searchsorted(starts, wall, side="right") - 1
    order = np.argsort(wall, kind="stable")
    previous: float | None = None
    previous_session = None
    for i in order:
        s = int(session[i])
        if s != previous_session:
            previous = float(starts[s]) if s >= 0 else None
            previous_session = s
        if previous is not None:
            dt[i] = wall[i] - previous
        previous = float(wall[i])
    known = np.isfinite(dt) & (dt >= 0)
    return dt, known


def _step_positions(run: _Run) -> Callable[[np.ndarray], np.ndarray]:
    """Map 'adapter steps done' (the events' `step`) to the stream position reached then."""
    done: list[np.ndarray] = []
    position: list[np.ndarray] = []
    if run.steps.num_rows:
        done.append(_num(run.steps, "step") + 1)
        position.append(_num(run.steps, "stop"))
        done.append(np.zeros(1))
        # the first step's start, not run.json's `start`: a resume rewrites that to where it resumed
        position.append(np.array([float(_num(run.steps, "start").min())]))
    if run.probes.num_rows:
        done.append(_num(run.probes, "step"))
        position.append(_num(run.probes, "position"))
    if not done:
        batch = float(run.info.batch_size)
        offset = float(run.info.start)
        return lambda steps: offset + steps * batch
    d, p = np.concatenate(done), np.concatenate(position)
    order = np.argsort(d, kind="stable")
    return lambda steps: np.interp(steps, d[order], p[order])


def _run_end(run: _Run) -> float | None:
    ends = []
    if run.steps.num_rows:
        ends.append(float(np.nanmax(_num(run.steps, "stop"))))
    if run.probes.num_rows:
        ends.append(float(np.nanmax(_num(run.probes, "position"))))
    return max(ends) if ends else None


def _warning_spans(run: _Run) -> list[tuple[str, float, float]]:
    """(origin, from, to) in stream positions: a warning lasts until a clear of the same origin."""
    if run.events.num_rows == 0:
        return []
    kinds, origins = _strings(run.events, "kind"), _strings(run.events, "origin")
    x = _step_positions(run)(_num(run.events, "step"))
    end = _run_end(run)
    open_at: dict[str, float] = {}
    spans = []
    for kind, origin, pos in zip(kinds, origins, x):
        if kind == "warning":
            open_at.setdefault(origin, float(pos))  # a repeated warning extends the open span
        elif kind == "clear" and origin in open_at:
            spans.append((origin, open_at.pop(origin), float(pos)))
    for origin, start in open_at.items():
        spans.append((origin, start, max(start, end if end is not None else start)))
    return spans


def _reset_positions(run: _Run) -> np.ndarray:
    if run.events.num_rows:
        kinds = np.array(_strings(run.events, "kind"), dtype=object)
        if (kinds == "reset").any():
            return _step_positions(run)(_num(run.events, "step")[kinds == "reset"])
    if run.steps.num_rows:
        # Without reset events, the steps' own flag says the reset came right after the step.
        return _num(run.steps, "stop")[_flag(run.steps, "reset")]
    return np.zeros(0)


def _paired(run: _Run, est: str, true: str) -> tuple[float | None, float | None, float | None, int]:
    """Mean estimate, mean truth and MAE over probes that have both; the estimate alone without truth."""
    if run.probes.num_rows == 0:
        return None, None, None, 0
    e, t = _num(run.probes, est), _num(run.probes, true)
    both = np.isfinite(e) & np.isfinite(t)
    if not both.any():
        return _mean(e), _mean(t), None, 0
    return float(e[both].mean()), float(t[both].mean()), float(np.abs(e[both] - t[both]).mean()), int(both.sum())


def _summary(run: _Run) -> Summary:
    steps, probes, events = run.steps, run.probes, run.events
    out: Summary = {k: str(getattr(run.info, k))
                    for k in ("run_id", "stream", "base", "model", "adapter", "device")}
    images = _num(steps, "images")
    out["steps"] = steps.num_rows
    out["images"] = int(np.nansum(images)) if steps.num_rows else 0
    out["skipped"] = int(np.nansum(_num(steps, "skipped"))) if steps.num_rows else 0
    if steps.num_rows:
        out["first_position"] = int(np.nanmin(_num(steps, "start")))
        out["last_position"] = int(np.nanmax(_num(steps, "stop")))
    else:
        out["first_position"] = out["last_position"] = None

    dt, known = _busy_time(run)
    busy = float(dt[known].sum()) if known.any() else 0.0
    out["wall_time_s"] = busy if known.any() else None
    out["img_per_s"] = float(images[known].sum() / busy) if busy > 0 else None
    step_ms = _num(steps, "step_ms")
    out["mean_step_ms"] = _mean(step_ms)

    correct, served = _num(steps, "correct"), images
    has = np.isfinite(correct)
    out["true_online_acc_steps"] = (float(100 * correct[has].sum() / served[has].sum())
                                    if has.any() and served[has].sum() > 0 else None)
    src_correct, src_seen = _num(steps, "frozen_correct"), _num(steps, "frozen_seen")
    has = np.isfinite(src_correct) & np.isfinite(src_seen)
    out["true_source_acc_steps"] = (float(100 * src_correct[has].sum() / src_seen[has].sum())
                                    if has.any() and src_seen[has].sum() > 0 else None)

    out["probes"] = probes.num_rows
    out["probe_cycles"] = int(len(np.unique(_num(probes, "cycle")))) if probes.num_rows else 0
    for name in ("source", "online"):
        est, true, mae, pairs = _paired(run, f"est_{name}_acc", f"true_{name}_acc")
        out[f"est_{name}_acc"], out[f"true_{name}_acc"] = est, true
        out[f"{name}_acc_mae"], out[f"{name}_acc_pairs"] = mae, pairs
        out[f"{name}_interval_width"], out[f"{name}_coverage"], out[f"{name}_out_of_support"] = \
            _interval_summary(probes, name)

    kinds = _strings(events, "kind")
    out["events"] = events.num_rows
    out["warnings"] = kinds.count("warning")
    out["resets"] = int(len(_reset_positions(run)))
    out["errors"] = kinds.count("error")
    return out


def _interval_summary(probes: pa.Table, name: str) -> tuple[float | None, float | None, int]:
    """The `name` headline's mean 90% interval width, the share of probes whose truth it covers
    (over probes with both), and the probes whose window was outside the calibration's support."""
    low, high, true = _num(probes, f"est_{name}_lo"), _num(probes, f"est_{name}_hi"), _num(probes, f"true_{name}_acc")
    has = np.isfinite(low) & np.isfinite(high)
    width = float(np.mean(high[has] - low[has])) if has.any() else None
    both = has & np.isfinite(true)
    coverage = float(np.mean((low[both] <= true[both]) & (true[both] <= high[both]))) if both.any() else None
    return width, coverage, int(_flag(probes, f"est_{name}_out_of_support").sum()) if probes.num_rows else 0


def summarise(run_dir: Path | str) -> Summary:
    """The report's summary numbers for `run_dir`.

    Keys: run facts (`run_id`, `stream`, `base`, `model`, `adapter`, `device`); `steps`, `images`,
    `skipped`, `first_position`, `last_position`; `wall_time_s` (time spent running, pauses between
    a stop and a resume excluded) and `img_per_s` over it; `mean_step_ms`; `true_online_acc_steps`
    and `true_source_acc_steps` (% over all labelled step rows); `probes`, `probe_cycles`; for
    `source` and `online`: `est_*_acc`, `true_*_acc`, `*_acc_mae` (means over probes where both
    exist; with no such probe the means are over whichever exists and the MAE is None) and
    `*_acc_pairs`, `*_interval_width` (the headline's mean 90% interval width), `*_coverage` (the
    share of probes whose truth lies in it) and `*_out_of_support` (probes outside the calibration's
    support); `events`, `warnings`, `resets`, `errors`.

    Raises:
        RunDirectoryError: `run_dir` is not a run directory of this version, or has no run.json.
    """
    return _summary(_load(Path(run_dir)))


# ---------------------------------------------------------------------------------------------
# Plots


def _figure(rows: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6 * rows if rows > 1 else 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(X_LABEL)
    return fig, list(axes)


def _legend(ax: Axes, *extra: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for other in extra:
        h, l = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + l
    if handles:
        ax.legend(handles, labels, loc="best", fontsize="small", framealpha=0.8)


def _plot_accuracy(run: _Run, notes: list[str]) -> Figure | None:
    fig, (ax,) = _figure()
    drawn = False
    if run.probes.num_rows:
        x = _num(run.probes, "position")
        series = [("est_source_acc", "estimated source accuracy", "tab:blue", "--", "o"),
                  ("true_source_acc", "true source accuracy", "tab:blue", "-", "s"),
                  ("est_online_acc", "estimated online accuracy", "tab:orange", "--", "o"),
                  ("true_online_acc", "true online accuracy (probe window)", "tab:orange", "-", "s")]
        for column, label, colour, style, marker in series:
            y = _num(run.probes, column)
            if not _has(y):
                notes.append(f"{column}: null in every probe row, not drawn")
                continue
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], linestyle=style, marker=marker, markersize=3, color=colour, label=label)
            drawn = True
            if column.startswith("est_"):
                _plot_band(ax, run.probes, x, column.split("_")[1], colour)
    else:
        notes.append(NO_PROBES)
    if run.steps.num_rows:
        correct = _num(run.steps, "correct")
        if _has(correct):
            w = _Windows(_num(run.steps, "start"), _num(run.steps, "stop"))
            acc = 100 * w.ratio(correct, _num(run.steps, "images"), np.isfinite(correct))
            ok = np.isfinite(acc)
            ax.plot(w.x[ok], acc[ok], color="tab:orange", alpha=0.45, linewidth=1,
                    label=f"true online accuracy (steps, {w.size}-image windows)")
            drawn = True
        else:
            notes.append("steps: `correct` is null in every row (a stream without labels), no per-window truth")
    else:
        notes.append(NO_STEPS)
    if run.steps.num_rows and "risk_lower" in run.steps.column_names and _has(_num(run.steps, "risk_lower")):
        # the risk test's two bounds as accuracies: it alarms when the first falls under the second
        x, lower, upper = _num(run.steps, "stop"), _num(run.steps, "risk_lower"), _num(run.steps, "risk_upper")
        ok = np.isfinite(lower) & np.isfinite(upper)
        ax.plot(x[ok], 100 * (1 - lower[ok]), color="tab:purple", linewidth=1,
                label="risk test: online accuracy's upper bound")
        ax.plot(x[ok], 100 * (1 - upper[ok]), color="tab:red", linestyle="--", linewidth=1,
                label="risk test: alarm level (clean accuracy's lower bound - tolerance)")
    if not drawn:
        return None
    spans = _warning_spans(run)
    fused = [span for span in spans if span[0] == FUSED_ORIGIN]
    for i, (origin, a, b) in enumerate(fused or spans):  # runs of schema 6 have the fused warning's own events
        ax.axvspan(a, b, color="tab:red", alpha=0.15, label="collapse warning" if i == 0 else None)
    for i, pos in enumerate(_reset_positions(run)):
        ax.axvline(pos, color="tab:gray", linestyle=":", linewidth=1, label="reset" if i == 0 else None)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Estimated vs true accuracy")
    _legend(ax)
    return fig


def _plot_band(ax: Axes, probes: pa.Table, x: np.ndarray, target: str, colour: str) -> None:
    """The `target` headline's 90% interval as a band, and its out-of-support windows as crosses."""
    low, high = _num(probes, f"est_{target}_lo"), _num(probes, f"est_{target}_hi")
    ok = np.isfinite(low) & np.isfinite(high)
    if ok.any():
        ax.fill_between(x[ok], low[ok], high[ok], color=colour, alpha=0.15, linewidth=0,
                        label=f"{target} estimate, 90% interval")
    outside = _flag(probes, f"est_{target}_out_of_support")
    if outside.any():
        ax.plot(x[outside], _num(probes, f"est_{target}_acc")[outside], linestyle="none", marker="x",
                color="tab:red", markersize=6, label=f"{target} window out of support")


def _plot_entropy(run: _Run, notes: list[str]) -> Figure | None:
    if run.steps.num_rows == 0:
        notes.append(NO_STEPS)
        return None
    w = _Windows(_num(run.steps, "start"), _num(run.steps, "stop"))
    images = _num(run.steps, "images")
    fig, (top, bottom) = _figure(2)
    drawn = [False, False]
    for ax, i, column, label, colour in ((top, 0, "mean_entropy", "mean entropy", "tab:purple"),
                                         (top, 0, "marginal_entropy", "marginal entropy", "tab:green"),
                                         (bottom, 1, "mean_confidence", "mean confidence", "tab:blue"),
                                         (bottom, 1, "top_class_share", "top-class share", "tab:red")):
        y = _num(run.steps, column)
        if not _has(y):
            notes.append(f"{column}: null in every step row, not drawn")
            continue
        m = w.mean(y, images)
        ok = np.isfinite(m)
        ax.plot(w.x[ok], m[ok], color=colour, linewidth=1.2, label=label)
        drawn[i] = True
    if not any(drawn):
        return None
    top.set_ylabel("entropy (nats)")
    top.set_title(f"Prediction entropy and confidence ({w.size}-image windows)")
    bottom.set_ylabel("fraction")
    bottom.set_ylim(-0.02, 1.02)
    _legend(top)
    _legend(bottom)
    return fig


def _plot_flips(run: _Run, notes: list[str]) -> Figure | None:
    if run.probes.num_rows == 0:
        notes.append(NO_PROBES)
        return None
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if run.probes.column("flips").null_count == run.probes.num_rows:
        notes.append(NO_FLIPS)
        return None
    x = _num(run.probes, "position")
    cycle = _num(run.probes, "cycle")
    counted = np.isfinite(_num(run.probes, "flips"))  # snapshots that counted flips (probe.flips_every)
    cycles = np.unique(cycle[counted])
    cmap = matplotlib.colormaps["viridis"]
    norm = Normalize(vmin=float(cycles.min()), vmax=float(cycles.max()) if len(cycles) > 1 else float(cycles.min()) + 1)
    few = len(cycles) <= MAX_CYCLE_LEGEND
    fig, axes = _figure(2)
    for ax, column, label in zip(axes, ("flips", "weighted_flips"), ("flips", "weighted flips")):
        y = _num(run.probes, column)
        for c in cycles:
            sel = (cycle == c) & counted
            ax.plot(x[sel], y[sel], marker="o", markersize=3, linewidth=1, color=cmap(norm(c)),
                    label=f"{label}, cycle {int(c)}" if few else None)
        ax.set_ylabel(label)
        if few:
            _legend(ax)
        else:
            ax.plot([], [], color="gray", marker="o", label=f"{label} ({len(cycles)} cycles, colour = cycle)")
            _legend(ax)
            fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="probe cycle")
    size = _num(run.probes, "probe_size")
    title = "Label flips on the probe set at the snapshots that counted them, by cycle"
    if _has(size):
        title += f" (probe size {int(np.nanmax(size))})"
    axes[0].set_title(title)
    return fig


def _plot_throughput(run: _Run, notes: list[str]) -> Figure | None:
    if run.steps.num_rows == 0:
        notes.append(NO_STEPS)
        return None
    w = _Windows(_num(run.steps, "start"), _num(run.steps, "stop"))
    dt, known = _busy_time(run)
    images = _num(run.steps, "images")
    fig, (ax,) = _figure()
    drawn = False
    if known.any():
        rate = w.ratio(images, dt, known)
        ok = np.isfinite(rate)
        ax.plot(w.x[ok], rate[ok], color="tab:blue", linewidth=1.2, label="images / s")
        drawn = True
    else:
        notes.append("wall_time: too few step rows to time a step, no img/s")
    ax.set_ylabel("images / s")
    twin = ax.twinx()
    step_ms = _num(run.steps, "step_ms")
    if _has(step_ms):
        m = w.mean(step_ms, np.ones_like(step_ms))
        ok = np.isfinite(m)
        twin.plot(w.x[ok], m[ok], color="tab:orange", linewidth=1, alpha=0.8, label="adapter step (ms)")
        drawn = True
    else:
        notes.append("step_ms: null in every step row, not drawn")
    if not drawn:
        return None
    twin.set_ylabel("adapter step (ms)")
    ax.set_title(f"Throughput ({w.size}-image windows)")
    _legend(ax, twin)
    return fig


# ---------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1080px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 0.92em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.warning td { background: #fff4e0; } tr.error td { background: #fde4e4; }
.note { color: #7a5a00; } img { max-width: 100%; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""

_SUMMARY_ROWS = [
    ("steps", "adapter steps", "{:d}"),
    ("images", "images served", "{:,d}"),
    ("skipped", "images skipped (unreadable)", "{:,d}"),
    ("first_position", "first stream position", "{:,d}"),
    ("last_position", "last stream position", "{:,d}"),
    ("wall_time_s", "wall time (s, running)", "{:,.1f}"),
    ("img_per_s", "throughput (img/s)", "{:,.1f}"),
    ("mean_step_ms", "mean adapter step (ms)", "{:,.2f}"),
    ("true_online_acc_steps", "true online accuracy over all steps (%)", "{:.2f}"),
    ("true_source_acc_steps", "true source accuracy over all steps (%)", "{:.2f}"),
    ("probes", "probe evaluations", "{:d}"),
    ("probe_cycles", "probe cycles", "{:d}"),
    ("est_source_acc", "mean estimated source accuracy (%)", "{:.2f}"),
    ("true_source_acc", "mean true source accuracy (%)", "{:.2f}"),
    ("source_acc_mae", "source accuracy MAE |est - true| (points)", "{:.2f}"),
    ("source_acc_pairs", "probes with both source values", "{:d}"),
    ("est_online_acc", "mean estimated online accuracy (%)", "{:.2f}"),
    ("true_online_acc", "mean true online accuracy (%)", "{:.2f}"),
    ("online_acc_mae", "online accuracy MAE |est - true| (points)", "{:.2f}"),
    ("online_acc_pairs", "probes with both online values", "{:d}"),
    ("source_interval_width", "source headline: mean 90% interval width (points)", "{:.2f}"),
    ("source_coverage", "source headline: probes whose truth is in the interval", "{:.0%}"),
    ("source_out_of_support", "source windows outside the calibration's support", "{:d}"),
    ("online_interval_width", "online headline: mean 90% interval width (points)", "{:.2f}"),
    ("online_coverage", "online headline: probes whose truth is in the interval", "{:.0%}"),
    ("online_out_of_support", "online windows outside the calibration's support", "{:d}"),
    ("warnings", "collapse warnings", "{:d}"),
    ("resets", "resets", "{:d}"),
    ("errors", "errors", "{:d}"),
]

_PLOT_TITLES = {
    "accuracy.png": "Estimated vs true accuracy",
    "entropy.png": "Entropy, confidence and top-class share",
    "flips.png": "Probe label flips",
    "throughput.png": "Throughput",
}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    return _e(spec.format(value))


def _summary_html(summary: Summary) -> str:
    rows = [f'<tr><th>{_e(label)}</th><td class="num">{_fmt(summary.get(key), spec)}</td></tr>'
            for key, label, spec in _SUMMARY_ROWS]
    notes = []
    for name in ("source", "online"):
        if not summary.get(f"{name}_acc_pairs") and summary.get(f"est_{name}_acc") is not None:
            notes.append(f"No probe has both an estimated and a true {name} accuracy: the mean estimate is over "
                         "all probes and there is no MAE.")
    return "<table>" + "".join(rows) + "</table>" + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _info_html(info: RunInfo) -> str:
    rows = []
    for key, value in asdict(info).items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    return "<h2>Run</h2><table>" + "".join(rows) + "</table>"


def _events_html(run: _Run) -> str:
    events = run.events
    if events.num_rows == 0:
        return '<p class="note">No event rows: the run wrote no events table (or it is empty).</p>'
    shown = events.slice(0, EVENT_ROW_CAP)
    positions = _step_positions(run)(_num(shown, "step"))
    cols = [_strings(shown, c) for c in ("kind", "origin", "message")]
    steps = _num(shown, "step")
    rows = []
    for kind, origin, message, step, pos in zip(*cols, steps, positions):
        cls = f' class="{_e(kind)}"' if kind in ("warning", "error") else ""
        where = f"{int(round(pos)):,}" if math.isfinite(pos) else "&ndash;"
        rows.append(f'<tr{cls}><td>{_e(kind)}</td><td class="num">{_fmt(step, "{:.0f}")}</td>'
                    f'<td class="num">{where}</td><td>{_e(origin)}</td><td>{_e(message)}</td></tr>')
    head = "<tr><th>kind</th><th>step</th><th>position</th><th>origin</th><th>message</th></tr>"
    note = ""
    if events.num_rows > EVENT_ROW_CAP:
        note = (f'<p class="note">Showing the first {EVENT_ROW_CAP} of {events.num_rows:,} events; all of them '
                f"are in {_e(run.run_dir / 'events')}.</p>")
    return note + "<table>" + head + "".join(rows) + "</table>"


def _eval_html(run: _Run) -> str:
    """`stream-monitor eval`'s tables (estimator MAE per target, warnings against collapse events)."""
    from .evaluation import evaluate

    try:
        result = evaluate(run.run_dir)
    except (OSError, ValueError, KeyError) as error:  # a damaged part: the rest of the report still renders
        return f'<p class="note">No evaluation: {_e(error)}</p>'
    rows = "".join(f"<tr><td>{_e(s.estimator)}</td><td>{_e(s.target)}</td><td>{s.windows}</td><td>{s.mae:.2f}</td>"
                   f"<td>{s.bias:+.2f}</td><td>{s.worst:.1f}</td></tr>" for s in result["estimators"])
    table = ("<table><tr><th>estimator</th><th>target</th><th>windows</th><th>MAE (points)</th><th>bias</th>"
             f"<th>worst</th></tr>{rows}</table>") if rows else \
        '<p class="note">No probe row has both an estimate and the truth.</p>'
    w = result["warnings"]
    recall = f"{w.recall:.0%}" if w.recall is not None else "n/a"
    leads = ", ".join(f"{x:,}" for x in w.lead_times) or "-"
    return (table + f"<p>Collapse events (online accuracy more than 5 points below the frozen model for 2+ windows "
            f"of 5,000 images): {w.events}. Warnings: recall {recall}, lead times (images) {leads}, "
            f"{w.false_alarms} false alarm(s), {w.false_alarms_per_million:.1f} per million images.</p>")


def _page(run: _Run, summary: Summary, plots: dict[str, list[str]], drawn: set[str]) -> str:
    run_id = summary.get("run_id") or run.run_dir.name
    facts = " &middot; ".join(f"{_e(k)}: <b>{_e(summary.get(k) or 'unknown')}</b>"
                              for k in ("stream", "base", "model", "adapter"))
    title_facts = ", ".join(_e(summary.get(k) or "unknown") for k in ("stream", "base", "model", "adapter"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>stream-monitor report: {_e(run_id)} ({title_facts})</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>stream-monitor report: {_e(run_id)}</h1>",
        f"<p>{facts}</p>",
        f"<p>Run directory: <code>{_e(run.run_dir)}</code></p>",
    ]
    parts += ["<h2>Summary</h2>", _summary_html(summary), "<h2>Evaluation against the labels</h2>", _eval_html(run),
              "<h2>Plots</h2>"]
    for name in PLOTS:
        parts.append(f"<h3>{_e(_PLOT_TITLES[name])}</h3>")
        if name in drawn:
            parts.append(f'<img src="{_e(name)}" alt="{_e(_PLOT_TITLES[name])}">')
        else:
            parts.append('<p class="note">Not drawn: nothing to plot.</p>')
        # A table missing for several plots is said once per plot, but not twice within one.
        for note in dict.fromkeys(plots.get(name, [])):
            parts.append(f'<p class="note">{_e(note)}</p>')
    parts += ["<h2>Events</h2>", _events_html(run), _info_html(run.info), "<h2>Resolved config</h2>"]
    parts.append(f"<pre>{_e(run.config_text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write the HTML report of `run_dir` and its PNG plots; return the HTML file's path.

    Args:
        run_dir: a run directory made by `stream-monitor run --out DIR`.
        out: the HTML file to write (an existing directory means `index.html` inside it);
            default `RUN_DIR/report/index.html`. The PNGs go beside it.

    Raises:
        RunDirectoryError: `run_dir` is not a run directory of this version, or has no run.json.
    """
    run = _load(Path(run_dir))
    target = Path(out) if out is not None else run.run_dir / "report" / "index.html"
    if target.is_dir():
        target = target / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)

    summary = _summary(run)
    makers = {"accuracy.png": _plot_accuracy, "entropy.png": _plot_entropy,
              "flips.png": _plot_flips, "throughput.png": _plot_throughput}
    notes: dict[str, list[str]] = {}
    drawn: set[str] = set()
    for name, make in makers.items():
        notes[name] = []
        fig = make(run, notes[name])
        png = target.parent / name
        if fig is None:
            # A PNG left by an earlier report of this run would no longer match the page.
            png.unlink(missing_ok=True)
            continue
        fig.savefig(png, format="png")
        drawn.add(name)

    target.write_text(_page(run, summary, notes, drawn), encoding="utf-8")
    return target
