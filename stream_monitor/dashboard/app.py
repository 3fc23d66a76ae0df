"""The run observers people look at: a `rich.live` dashboard for terminals and plain lines for everything else.

Both keep a `DashboardState` that the driver thread replaces whole on every row. `Dashboard` owns one `Live`
whose `get_renderable` builds the layout from whichever state is current, so the refresh thread never sees a
half-updated object (style_anchors.md 3). Without a TTY, `Live` draws nothing until exit, hence `PlainReporter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from stream_monitor.runtime.observer import RunInfo

from .panels import (
    AccuracyChart,
    EventsPanel,
    Header,
    HealthPanel,
    ThroughputPanel,
    WarningsPanel,
    flips_line,
    format_duration,
    format_hyperparameters,
    format_percent,
    format_position,
)
from .state import DashboardState

__all__ = ["Dashboard", "DashboardView", "PlainReporter", "make_reporter", "progress_line", "summary_table"]

HEADER_SIZE = Header.rows + 2
WARNINGS_SIZE = 6      # four warnings, or three and a "... earlier" line, inside the border
THROUGHPUT_SIZE = ThroughputPanel.rows + 2
WIDE = 90              # below this many columns the side panels go under the chart


class DashboardView:
    """The whole dashboard for one state, laid out for the space the console offers.

    Header and warnings have fixed sizes and come first, so a short terminal cuts the event log, never a
    collapse warning.
    """

    def __init__(self, state: DashboardState, bottom_margin: int = 0) -> None:
        self.state = state
        self.bottom_margin = bottom_margin  # a non-screen Live leaves a line for the cursor, or the frame scrolls

    def layout(self, width: int) -> Layout:
        state = self.state
        root = Layout(name="root")
        chart = Layout(Panel(AccuracyChart(state), title="accuracy per probe window vs stream position",
                             title_align="left"),
                       name="chart", ratio=3, minimum_size=8)
        throughput = Layout(Panel(ThroughputPanel(state), title="throughput", title_align="left"),
                            name="throughput", size=THROUGHPUT_SIZE)
        health = Layout(Panel(HealthPanel(state), title="actors", title_align="left"), name="health", minimum_size=3)
        events = Layout(Panel(EventsPanel(state), title="events", title_align="left"), name="events", ratio=1,
                        minimum_size=3)
        main = Layout(name="main", ratio=1)
        if width >= WIDE:
            side = Layout(name="side", ratio=2)
            side.split_column(throughput, health)
            top = Layout(name="top", ratio=2)
            top.split_row(chart, side)
            main.split_column(top, events)
        else:
            health.size = min(6, len(state.health) + 2) if state.health else 3
            main.split_column(chart, throughput, health, events)
        root.split_column(
            Layout(Header(state), name="header", size=HEADER_SIZE),
            Layout(WarningsPanel(state), name="warnings", size=WARNINGS_SIZE),
            main,
        )
        return root

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or max(HEADER_SIZE + WARNINGS_SIZE + 6, options.size.height - self.bottom_margin)
        yield from self.layout(options.max_width).__rich_console__(console, options.update(height=height))


class Dashboard:
    """A live terminal dashboard observing a run (implements `RunObserver`); use it as a context manager.

    Args:
        console (Console, optional): where to draw. Defaults to a new `Console()`.
        refresh_per_second (float): redraws per second. Defaults to 2 (probe reports come every few seconds).
        screen (bool): use the alternate screen (full screen). Defaults to False.
        auto_refresh (bool): redraw from Live's thread. When False the driver thread redraws instead: on every
            start, probe, event and health change, and on steps at most `refresh_per_second` times a second.
        summary (bool): print `summary_table` after the display closes. Defaults to True.

    Example:
        >>> with Dashboard() as dashboard:
        ...     run_loop(observers=[sink, dashboard])
    """

    def __init__(self, console: Console | None = None, refresh_per_second: float = 2.0, screen: bool = False, *,
                 auto_refresh: bool = True, summary: bool = True, state: DashboardState | None = None) -> None:
        self.console = console if console is not None else Console()
        self._state = state if state is not None else DashboardState()
        self._auto_refresh = auto_refresh
        self._min_interval = 1.0 / refresh_per_second
        self._summary = summary
        self._last_draw = float("-inf")
        self._started = self._closed = False
        self._bottom_margin = 0 if screen else 1  # set before Live, whose constructor already renders once
        self._live = Live(console=self.console, screen=screen, auto_refresh=auto_refresh,
                          refresh_per_second=refresh_per_second, get_renderable=self._renderable)

    @property
    def state(self) -> DashboardState:
        return self._state

    def _renderable(self) -> RenderableType:
        # One read of the reference: the frame is built from a single, complete state.
        return DashboardView(self._state, self._bottom_margin)

    def _swap(self, state: DashboardState, urgent: bool = True) -> None:
        self._state = state
        if self._started and not self._auto_refresh:
            now = time.monotonic()
            if urgent or now - self._last_draw >= self._min_interval:
                self._last_draw = now
                self._live.refresh()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the display (call from the driver's main thread)."""
        if self._closed:
            raise RuntimeError("This Dashboard was closed; make a new one for the next run")
        if not self._started:
            self._live.start(refresh=True)
            self._started = True

    def close(self) -> None:
        """Stop the display, keeping its last frame, then print the summary. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._live.stop()
        if self._summary and self._state.info is not None:
            self.console.print(summary_table(self._state))

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def refresh(self) -> None:
        """Redraw now."""
        if self._started and not self._closed:
            self._live.refresh()

    def log(self, message: RenderableType) -> None:
        """Print above the live display (driver thread only)."""
        self._live.console.print(message)

    # -- RunObserver -------------------------------------------------------------------------------------------

    def on_start(self, info: RunInfo) -> None:
        self._swap(self._state.apply_start(info, wall_time=time.time()))
        if not self._closed:
            self.start()

    def on_step(self, row: dict[str, Any]) -> None:
        self._swap(self._state.apply_step(row), urgent=False)

    def on_probe(self, row: dict[str, Any]) -> None:
        self._swap(self._state.apply_probe(row))

    def on_event(self, row: dict[str, Any]) -> None:
        self._swap(self._state.apply_event(row))

    def on_health(self, name: str, status: str, detail: str = "") -> None:
        """Actor health (ok, slow, diverged or dead); not part of `RunObserver`, the runner calls it when it knows."""
        self._swap(self._state.apply_health(name, status, detail))


class PlainReporter:
    """The same observer for non-TTY output (CI, pipes, --no-dashboard): plain, greppable lines.

    One line per probe report and per event, and a progress line at most every `every_seconds`.

    Args:
        console (Console, optional): where to print. Defaults to a new `Console()`.
        every_seconds (float): least time between progress lines. Defaults to 10.
        clock (Callable[[], float]): monotonic seconds, for rate-limiting. Defaults to `time.monotonic`.
        summary (bool): print `summary_table` on close. Defaults to True.
    """

    def __init__(self, console: Console | None = None, every_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, *, summary: bool = True) -> None:
        self.console = console if console is not None else Console()
        self.every_seconds = every_seconds
        self._clock = clock
        self._summary = summary
        self._state = DashboardState()
        self._last_progress: float | None = None
        self._closed = False

    @property
    def state(self) -> DashboardState:
        return self._state

    def log(self, message: Any) -> None:
        if isinstance(message, str):
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(message)

    def on_start(self, info: RunInfo) -> None:
        self._state = self._state.apply_start(info, wall_time=time.time())
        span = f"positions {info.start:,} -> {info.stop:,}" if info.stop > info.start else f"from {info.start:,}"
        self.log(f"run {info.run_id}: {info.adapter} on {info.stream} ({info.base}) - model {info.model} - "
                 f"{info.device} - {span} - batch {info.batch_size}")
        if info.hyperparameters:
            self.log(f"adapter {info.adapter}: {format_hyperparameters(info.hyperparameters)}")

    def on_step(self, row: dict[str, Any]) -> None:
        self._state = self._state.apply_step(row)
        now = self._clock()
        if self._last_progress is None or now - self._last_progress >= self.every_seconds:
            self._last_progress = now
            self.log(progress_line(self._state))

    def on_probe(self, row: dict[str, Any]) -> None:
        self._state = self._state.apply_probe(row)
        probe = self._state.last_probe
        assert probe is not None
        self.log(f"probe step {probe.step:,} at {probe.position:,}, window: "
                 f"est source {format_percent(probe.est_source_acc)}{_method(probe.est_source_method)} "
                 f"(true {format_percent(probe.true_source_acc)}) | "
                 f"est online {format_percent(probe.est_online_acc)}{_method(probe.est_online_method)} "
                 f"(true {format_percent(probe.true_online_acc)}) | "
                 f"{flips_line(probe)}")

    def on_event(self, row: dict[str, Any]) -> None:
        self._state = self._state.apply_event(row)
        event = self._state.events[-1]
        kind = event.kind.upper() if event.kind in ("warning", "error") else event.kind
        self.log(f"{kind} {event.origin} step {event.step:,}: {event.message}")

    def on_health(self, name: str, status: str, detail: str = "") -> None:
        before = next((h.status for h in self._state.health if h.name == name), None)
        self._state = self._state.apply_health(name, status, detail)
        if status != before:
            self.log(f"actor {name}: {status}" + (f" ({detail})" if detail else ""))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._summary and self._state.info is not None:
            self.console.print(summary_table(self._state))


def progress_line(state: DashboardState) -> str:
    """The plain-text progress readout: done, img/s, ETA and the latest step statistics."""
    total, fraction = state.total, state.fraction
    parts = [f"progress {100 * fraction:.1f}%" if fraction is not None else "progress",
             f"{state.done:,}" + (f"/{total:,}" if total else "") + " img",
             "img/s n/a" if state.rate is None else f"{state.rate:,.0f} img/s",
             f"ETA {format_duration(state.eta_seconds)}"]
    step = state.last_step
    if step is not None and step.mean_entropy is not None:
        parts.append(f"entropy {step.mean_entropy:.3f}")
    if step is not None and step.top_class_share is not None:
        parts.append(f"top class {100 * step.top_class_share:.0f}%")
    if state.rolling_online_acc is not None:
        parts.append(f"true online (rolling {format_position(state.rolling_images)}) "
                     f"{format_percent(state.rolling_online_acc)}")
    if state.skipped:
        parts.append(f"skipped {state.skipped:,}")
    return " | ".join(parts)


def make_reporter(console: Console | None = None, enabled: bool = True, *, refresh_per_second: float = 2.0,
                  screen: bool = False, every_seconds: float = 10.0, summary: bool = True) -> Dashboard | PlainReporter:
    """The dashboard when `enabled` and the console is a real terminal, plain lines otherwise.

    `Live` only animates on a terminal that is not dumb; anywhere else it would show nothing until exit.

    Example:
        >>> reporter = make_reporter(Console(), enabled=not no_dashboard)
    """
    console = console if console is not None else Console()
    if enabled and console.is_terminal and not console.is_dumb_terminal:
        return Dashboard(console, refresh_per_second=refresh_per_second, screen=screen, summary=summary)
    return PlainReporter(console, every_seconds=every_seconds, summary=summary)


def _method(name: str | None) -> str:
    """The headline's estimator, as the dashboard's legend names it."""
    return f" [{name}]" if name else ""


def _pair(estimated: float | None, true: float | None) -> str:
    text = f"est {format_percent(estimated)} · true {format_percent(true)}"
    if estimated is not None and true is not None:
        text += f" · error {estimated - true:+.1f}"
    return text


def summary_table(state: DashboardState) -> Table:
    """The end-of-run summary: images, time, speed, estimated against true accuracies, warnings and resets."""
    info = state.info
    table = Table(title=f"run {info.run_id}" if info is not None else "run summary", title_justify="left",
                  show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    if info is not None:
        table.add_row("stream", info.stream)
        table.add_row("base", info.base)
        table.add_row("adapter", f"{info.adapter} on {info.model}")
    total = state.total
    table.add_row("images", f"{state.done:,}" + (f" of {total:,}" if total else "")
                  + f" ({state.images:,} served, {state.skipped:,} skipped)")
    table.add_row("wall time", format_duration(state.elapsed_seconds))
    rate = state.mean_rate
    table.add_row("throughput", "n/a" if rate is None else f"{rate:,.0f} img/s")
    probe = state.last_probe
    if probe is not None:
        table.add_row("source acc, last window", _pair(probe.est_source_acc, probe.true_source_acc))
        table.add_row("source acc, mean of windows", _pair(state.mean_accuracy(1), state.mean_accuracy(2)))
        table.add_row("online acc, last window", _pair(probe.est_online_acc, probe.true_online_acc))
        table.add_row("online acc, mean of windows", _pair(state.mean_accuracy(3), state.mean_accuracy(4)))
        table.add_row("probe reports", f"{state.probe_count:,}")
    else:
        table.add_row("estimates", "no probe reports")
    if state.run_online_acc is not None:
        source = f", frozen source {format_percent(state.run_source_acc)}" if state.run_source_acc is not None else ""
        table.add_row("true acc, run (every image)", f"online {format_percent(state.run_online_acc)}{source}")
    warnings = state.count("warning")
    table.add_row("collapse warnings", f"{warnings:,}" + (f" ({len(state.warnings)} still active)"
                                                          if state.warnings else ""),
                  style="red" if warnings else None)
    table.add_row("resets", f"{state.resets:,}")
    table.add_row("skipped images", f"{state.skipped:,}")
    if state.count("error"):
        table.add_row("errors", f"{state.count('error'):,}", style="bold red")
    return table
