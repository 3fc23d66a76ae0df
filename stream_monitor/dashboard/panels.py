"""The dashboard's panels: plain classes that render one `DashboardState` through the rich console protocol.

Each panel is built per frame around an immutable state, so rendering never races the driver. Panels that
must fit a fixed region (chart, warnings, events) size themselves from the options the console passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..metrics.schema import FUSED_ORIGIN as FUSED
from .state import DashboardState, ProbeSummary

__all__ = [
    "AccuracyChart",
    "EventsPanel",
    "Header",
    "HealthPanel",
    "ThroughputPanel",
    "WarningsPanel",
    "flips_line",
    "format_duration",
    "format_hyperparameters",
    "format_percent",
    "format_position",
    "y_range",
]

# (AccuracyPoint field, legend label, style, dashed); truths are dashed so they stay apart without colour.
# Drawn in this order, so estimates end up on top where lines share a cell.
SERIES = (
    (2, "true source", "blue", True),
    (4, "true online", "green", True),
    (1, "est source", "bright_cyan", False),
    (3, "est online", "bright_yellow", False),
)

#: The dim style of each estimate's interval band, by its series index.
BAND_STYLES = {1: "dark_cyan", 3: "yellow4"}

# Braille dot bits by (column, row) inside a 2 x 4 cell (Unicode block U+2800).
_BRAILLE_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))

EVENT_STYLES = {
    "warning": "bold red", "error": "bold red", "clear": "green", "reset": "yellow", "cycle": "cyan",
    "skipped": "magenta", "start": "dim", "resume": "dim", "stop": "dim", "checkpoint": "dim",
    "repair": "yellow",
}
HEALTH_STYLES = {"ok": "green", "slow": "yellow", "diverged": "bold red", "dead": "bold red"}


# -- formatting ------------------------------------------------------------------------------------------------

def format_percent(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.1f}%"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_position(value: float) -> str:
    """Compact stream positions for axis labels: 950, 12.5k, 7.5M."""
    value = float(value)
    for bound, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= bound:
            return f"{value / bound:.3g}{suffix}"
    return f"{value:.0f}"


def format_hyperparameters(hyperparameters: dict[str, Any], limit: int = 12) -> str:
    """`k=v` pairs with floats shortened; nested values are summarised rather than spelled out."""
    parts = []
    for key, value in list(hyperparameters.items())[:limit]:
        if isinstance(value, float):
            text = f"{value:.3g}"
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value) if len(value) <= 4 else f"[{len(value)} items]"
        elif isinstance(value, dict):
            text = f"{{{len(value)} keys}}"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    if len(hyperparameters) > limit:
        parts.append(f"+{len(hyperparameters) - limit} more")
    return " ".join(parts)


def flips_line(probe: ProbeSummary) -> str:
    """The probe's last counted flips: snapshots count them only every probe.flips_every steps
    (by default at the cycle's last one), the others carry the window estimates alone."""
    if probe.flips is None:
        return f"cycle {probe.cycle} · no flips counted yet"
    weighted = f" · weighted {probe.weighted_flips:.1f}" if probe.weighted_flips is not None else ""
    return (f"cycle {probe.cycle} · {probe.flips}/{probe.probe_size} flips at step {probe.flips_cycle_step} "
            f"of cycle {probe.flips_cycle}{weighted}")


def _clock(wall_time: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall_time)) if wall_time else "--:--:--"


def _line(*parts: str | tuple[str, str]) -> Text:
    """One line that is cut with an ellipsis instead of wrapping (fixed-height regions)."""
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


# -- panels ----------------------------------------------------------------------------------------------------

class Header:
    """Run id, stream, what the images are, model and weights, adapter and its options, device."""

    rows = 5

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def __rich__(self) -> RenderableType:
        info = self.state.info
        if info is None:
            return Panel(Text("waiting for the run to start", style="dim"), title="stream-monitor")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True, min_width=7)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        span = f"positions {info.start:,} → {info.stop:,}" if info.stop > info.start else f"from {info.start:,}"
        probe = f"probe every {info.probe_every} steps × {info.probe_size} imgs" if info.probe_every else "probe off"
        labels = "" if info.has_labels else " · no labels"
        grid.add_row("run", f"{info.run_id} on {info.device} · {span} · batch {info.batch_size} · {probe}{labels}")
        grid.add_row("stream", info.stream)
        # The base decides what the accuracies mean (glyphs are not ImageNet), so it gets its own loud line.
        grid.add_row("base", Text(info.base, style="bold yellow"))
        grid.add_row("model", info.model)
        grid.add_row("adapter", Text.assemble((info.adapter, "bold"), "  ",
                                              (format_hyperparameters(info.hyperparameters), "dim")))
        return Panel(grid, title=f"stream-monitor · {info.run_id}", title_align="left", border_style="blue")


class AccuracyChart:
    """Accuracy (%) of each probe window against stream position, drawn with braille dots to fit its space.

    One series per style: estimates solid, ground truth dashed; source and online in different colours. The
    true online line comes from probe rows when they carry it and from the step rows' rolling accuracy otherwise
    (then labelled "rolling"). The y axis zooms to the data (`y_range`), so lines a few points apart stay apart.
    """

    def __init__(self, state: DashboardState, height: int = 12) -> None:
        self.state = state
        self.height = height  # used when the console does not fix one (printed outside a Layout)

    def _series(self) -> list[tuple[int, str, str, bool, list[tuple[int, float | None]]]]:
        points = self.state.accuracy.points
        out = []
        for index, label, style, dashed in SERIES:
            values = [(p.position, p[index]) for p in points]
            if index == 4 and not any(v is not None for _, v in values) and len(self.state.online_series):
                values = list(self.state.online_series.points)
                label = f"true online (rolling {format_position(self.state.rolling_images)})"
            if any(v is not None for _, v in values):
                out.append((index, label, style, dashed, values))
        # the risk test's two bounds as accuracies: it alarms when the first falls under the second
        risk = self.state.risk_series.points
        if risk:
            out.append((5, "risk test: online acc. upper bound", "magenta", False,
                        [(x, 100.0 * (1.0 - lower)) for x, lower, _ in risk]))
            out.append((6, "risk test: alarm level", "red", True, [(x, 100.0 * (1.0 - upper)) for x, _, upper in risk]))
        return out

    def _x_range(self, series: Sequence[tuple[Any, ...]]) -> tuple[float, float]:
        info = self.state.info
        xs = [x for *_, values in series for x, _ in values]
        if info is not None and info.stop > info.start:
            # The full run on the axis: the lines grow left to right as the stream is served.
            lo, hi = float(info.start), float(max([info.stop, *xs]))
        elif xs:
            lo, hi = float(min(xs)), float(max(xs))
        else:
            lo, hi = 0.0, 1.0
        return lo, hi if hi > lo else lo + 1.0

    def _legend(self, series: Sequence[tuple[Any, ...]], width: int) -> list[Text]:
        """Legend entries with each series' newest value, packed into at most two lines."""
        if not series:
            info = self.state.info
            waiting = "probe off" if info is not None and not info.probe_every else "waiting for probe reports"
            return [_line((waiting, "dim"))]
        entries = []
        for _, label, style, dashed, values in sorted(series, key=lambda s: s[0]):
            # The newest value even when it is missing: an estimator warming up after a new probe cycle.
            missing = "n/a" if dashed else "n/a (warming up)"
            entries.append(Text.assemble(("╌╌" if dashed else "──", style), f" {label} ",
                                         (format_percent(values[-1][1], missing), "bold")))
        if any(p.source_interval or p.online_interval for p in self.state.accuracy.points):
            entries.append(Text.assemble(("┃┃", BAND_STYLES[1]), " 90% interval"))
        lines = [Text(no_wrap=True, overflow="ellipsis")]
        for entry in entries:
            if lines[-1].cell_len and lines[-1].cell_len + 2 + entry.cell_len > width and len(lines) < 2:
                lines.append(Text(no_wrap=True, overflow="ellipsis"))
            if lines[-1].cell_len:
                lines[-1].append("  ")
            lines[-1].append_text(entry)
        return lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = max(1, options.height or self.height)
        # Exactly `height` lines, so a Panel around the chart keeps its size whatever the data.
        lines = self._lines(options.max_width, height)[:height]
        yield from lines + [Text("")] * (height - len(lines))

    def _lines(self, width: int, height: int) -> list[Text]:
        series = self._series()
        legend = self._legend(series, width)
        label_width = 5
        cols, rows = width - label_width - 1, height - len(legend) - 2  # x axis and its labels below
        if cols < 4 or rows < 2:
            return legend
        lo, hi = self._x_range(series)
        # the axis follows the accuracies and their intervals; the risk test's bounds (often near 100%)
        # would flatten them, so they are drawn only where they fall inside it (the legend has their values)
        bands = [end for p in self.state.accuracy.points for band in (p[5], p[6]) if band is not None for end in band]
        y_lo, y_hi = y_range([v for index, *_, values in series if index <= 4 for _, v in values if v is not None]
                             + bands)
        dots_w, dots_h = cols * 2, rows * 4
        bits = [[0] * cols for _ in range(rows)]
        owner: list[list[str | None]] = [[None] * cols for _ in range(rows)]

        def plot(x: int, y: int, style: str) -> None:
            if 0 <= x < dots_w and 0 <= y < dots_h:
                bits[y // 4][x // 2] |= _BRAILLE_BITS[x % 2][y % 4]
                owner[y // 4][x // 2] = style

        def to_dot(position: float, value: float) -> tuple[int, int]:
            x = round((position - lo) / (hi - lo) * (dots_w - 1))
            y = round((y_hi - min(y_hi, max(y_lo, value))) / (y_hi - y_lo) * (dots_h - 1))
            return x, y

        # the headlines' 90% intervals as a band under the lines (estimation/headline.py)
        for index, style in ((5, BAND_STYLES[1]), (6, BAND_STYLES[3])):
            for p in self.state.accuracy.points:
                if p[index] is not None:
                    (x, top), (_, bottom) = to_dot(p.position, p[index][1]), to_dot(p.position, p[index][0])
                    for y in range(top, bottom + 1):
                        plot(x, y, style)

        for index, _, style, dashed, values in series:
            previous: tuple[int, int] | None = None
            counter = 0
            for position, value in values:
                if value is None or (index > 4 and not y_lo <= value <= y_hi):
                    previous = None  # a gap (estimator warming up), not a line through it
                    continue
                current = to_dot(position, value)
                for x, y in _segment(previous or current, current):
                    if not dashed or counter % 4 < 2:
                        plot(x, y, style)
                    counter += 1
                previous = current

        ticks = {}
        # Few rows quantise a mid tick too coarsely to be honest, so short charts only mark the ends.
        step = (y_hi - y_lo) / 4
        for tick in (y_hi - k * step for k in range(5)) if rows >= 5 else (y_hi, y_lo):
            ticks.setdefault(to_dot(lo, tick)[1] // 4, tick)
        lines = list(legend)
        for row in range(rows):
            line = Text(no_wrap=True, overflow="crop")
            line.append(f"{ticks[row]:>3.0f}% ┤" if row in ticks else " " * (label_width - 1) + " │", "dim")
            line.append_text(_row_text(bits[row], owner[row]))
            lines.append(line)
        lines.append(Text(" " * label_width + "└" + "─" * cols, style="dim", no_wrap=True, overflow="crop"))
        lines.append(_x_labels(lo, hi, cols, label_width + 1))
        return lines


def y_range(values: Sequence[float], min_span: float = 20.0) -> tuple[float, float]:
    """The chart's accuracy axis: the data's range padded to multiples of 5 points, at least `min_span` wide
    (so noise of a point or two does not fill the chart), inside 0-100; 0-100 when there is no data."""
    if not values:
        return 0.0, 100.0
    lo, hi = max(0.0, min(values) - 2.0), min(100.0, max(values) + 2.0)
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = max(0.0, middle - min_span / 2), min(100.0, middle + min_span / 2)
        lo, hi = (0.0, min_span) if lo == 0.0 else (100.0 - min_span, 100.0) if hi == 100.0 else (lo, hi)
    return 5.0 * math.floor(lo / 5.0), 5.0 * math.ceil(hi / 5.0)


def _segment(a: tuple[int, int], b: tuple[int, int]) -> Iterable[tuple[int, int]]:
    """Dots of the straight line from a to b (Bresenham), b included, a only when a == b."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
    err = dx + dy
    x, y = x0, y0
    if a == b:
        yield b
        return
    while (x, y) != (x1, y1):
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x += sx
        if e2 <= dx:
            err += dx
            y += sy
        yield x, y


def _row_text(bits: list[int], owner: list[str | None]) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    for value, style in zip(bits, owner):
        text.append(chr(0x2800 + value) if value else " ", style or "")
    return text


def _x_labels(lo: float, hi: float, cols: int, indent: int) -> Text:
    chars = [" "] * cols
    marks = [(0, lo), (cols - 1, hi)]
    if cols >= 30:
        marks.insert(1, (cols // 2, (lo + hi) / 2))
    taken = -1
    for at, value in marks:
        label = format_position(value)
        start = max(0, min(at - len(label) // 2, cols - len(label)))
        if start <= taken:
            continue
        chars[start:start + len(label)] = label
        taken = start + len(label)
    return Text(" " * indent + "".join(chars), style="dim", no_wrap=True, overflow="crop")


class WarningsPanel:
    """Active collapse warnings with their origin and evidence; sized by its region, never cut mid-warning."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        warnings = self.state.warnings
        if not warnings:
            yield Panel(_line(("no collapse warnings", "green")), title="collapse warnings", title_align="left",
                        border_style="green", height=options.height)
            return
        fused = next((w for w in warnings if w.origin == FUSED), None)
        # the title names the fused warning's detectors; the lines give each detector's own evidence once
        listed = [w for w in warnings if w.origin != FUSED] or list(warnings)
        room = max(1, (options.height or len(listed) + 2) - 2)
        shown = listed if len(listed) <= room else listed[-(room - 1):] if room > 1 else ()
        lines = [_warning_line(w) for w in shown]
        if len(shown) < len(listed):
            lines.insert(0, _line((f"... {len(listed) - len(shown)} earlier warnings", "dim red")))
        if fused is None:  # only advisory detectors fire
            title, border = f"no collapse warning; advisories ({len(warnings)})", "yellow"
        else:
            fired = fused.detectors or ""
            title = ("DIVERGED" if "divergence" in fired.split(",") else "COLLAPSE WARNING") + f" ({fired})"
            border = "bold red"
        yield Panel(Group(*lines), title=title, title_align="left", border_style=border, height=options.height)


def _warning_line(w: Any) -> Text:
    """The fused warning's line names its detectors; an advisory detector's line is dimmer."""
    if w.origin == FUSED:
        return _line(("! ", "bold red"), (w.detectors or "warning", "bold red"), f" (step {w.step:,}): ", w.message)
    style = "bold red" if w.message.startswith("collapse warning") else "yellow"
    return _line(("! " if style == "bold red" else "· ", style), (w.origin, "bold"), f" (step {w.step:,}): ", w.message)


class ThroughputPanel:
    """Progress over the run's stream span, img/s, ETA, and the latest step and probe readouts."""

    #: the progress bar and at most nine readouts (the last: which estimator each headline comes
    #: from, its interval and the out-of-support flag, which a shorter panel cut off)
    rows = 10

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        state = self.state
        total, fraction = state.total, state.fraction
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=float(total or 1), completed=float(state.done if total else 0),
                                width=max(4, min(40, options.max_width - 8)), pulse=total is None),
                    Text(f"{100 * fraction:5.1f}%" if fraction is not None else "  ...", style="bold"))
        yield bar
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, min_width=9)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        grid.add_row("images", _line((f"{state.done:,}", "bold"), f" / {total:,}" if total else "",
                                     f" · {state.skipped:,} skipped"))
        step = state.last_step
        rate = "-" if state.rate is None else f"{state.rate:,.0f}"
        grid.add_row("speed", _line((rate, "bold"), " img/s",
                                    *([f" · {step.step_ms:.0f} ms/step"] if step and step.step_ms else [])))
        grid.add_row("time", _line(f"{format_duration(state.elapsed_seconds)} elapsed · ETA ",
                                   (format_duration(state.eta_seconds), "bold")))
        if step is not None:
            grid.add_row("step", _line(f"{step.step:,} · resets {state.resets:,}",
                                       *([(" · no update", "dim")] if step.update_skipped else [])))
            stats: list[str | tuple[str, str]] = []
            if step.mean_entropy is not None:
                stats.append(f"entropy {step.mean_entropy:.3f}")
            if step.top_class_share is not None:
                stats += [" · " if stats else "", f"top class {100 * step.top_class_share:.0f}%"]
            grid.add_row("stats", _line(*stats) if stats else _line(("n/a", "dim")))
            if step.domain:
                grid.add_row("domain", _line((step.domain, "italic")))
        if state.rolling_online_acc is not None:
            source = state.rolling_source_acc
            grid.add_row("truth", _line((f"rolling {format_position(state.rolling_images)}: ", "dim"), "online ",
                                        (format_percent(state.rolling_online_acc), "bold"),
                                        *([" · source ", (format_percent(source), "bold")] if source is not None else [])))
        elif state.info is not None and not state.info.has_labels:
            grid.add_row("truth", _line(("no labels: estimates only", "dim")))
        probe = state.last_probe
        if probe is not None:
            grid.add_row("probe", _line(flips_line(probe),
                                        *([" · ", ("extrapolated", "yellow")] if probe.extrapolated else [])))
            methods = [f"{target} by {method}" + (f" [{interval[0]:.0f}, {interval[1]:.0f}]" if interval else "")
                       for target, method, interval in
                       (("source", probe.est_source_method, probe.source_interval),
                        ("online", probe.est_online_method, probe.online_interval)) if method]
            if methods:  # which estimator each headline comes from, with its 90% interval (estimation/headline.py);
                # the support flag first, so a narrow panel cuts the method names, not the warning
                grid.add_row("estimates", _line(*([(f"out of support: {', '.join(probe.out_of_support)}", "bold yellow"),
                                                   " · "] if probe.out_of_support else []),
                                                (" · ".join(methods), "dim")))
        yield grid


class EventsPanel:
    """The latest events, newest last, as many as the region holds."""

    def __init__(self, state: DashboardState, limit: int = 10) -> None:
        self.state = state
        self.limit = limit

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        count = max(1, options.height or self.limit)
        events = self.state.events[-count:]
        if not events:
            yield _line(("no events yet", "dim"))
            return
        for event in events:
            style = EVENT_STYLES.get(event.kind, "")
            yield _line((_clock(event.wall_time), "dim"), f" {event.step:>7,} ", (f"{event.kind:<11}", style),
                        (event.origin, "bold"), ": ", event.message)


class HealthPanel:
    """Actor health: ok, slow, diverged or dead, with the detail the driver gave."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def __rich__(self) -> RenderableType:
        if not self.state.health:
            return Text("no actor reports yet", style="dim")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1, style="dim")
        for actor in self.state.health:
            grid.add_row(actor.name, Text(actor.status, style=HEALTH_STYLES.get(actor.status, "")), actor.detail)
        return grid
