"""The dashboard: pure state transitions, panels rendered into a capture console, the plain reporter."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from stream_monitor.dashboard import (
    AccuracyChart,
    Dashboard,
    DashboardState,
    DashboardView,
    EventsPanel,
    Header,
    HealthPanel,
    PlainReporter,
    ThroughputPanel,
    WarningsPanel,
    make_reporter,
    summary_table,
)
from stream_monitor.dashboard.state import Series
from stream_monitor.dashboard.panels import flips_line, y_range
from stream_monitor.metrics.schema import EVENT_SCHEMA, FUSED_ORIGIN, PROBE_SCHEMA, STEP_SCHEMA, empty_row
from stream_monitor.runtime.observer import RunInfo

BRAILLE = re.compile("[\u2801-\u28ff]")
STREAM = "baseline_20_transition+speed_1000_seed_43"
BASE = "embedded glyphs (not ImageNet)"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)


def capture_console(width: int = 100, height: int = 40) -> Console:
    return Console(width=width, height=height, force_terminal=True, color_system=None, legacy_windows=False,
                   _environ={})


def render(renderable, width: int = 100, height: int = 40) -> str:
    console = capture_console(width, height)
    console.begin_capture()
    console.print(renderable)
    return console.end_capture()


def make_info(**changes) -> RunInfo:
    fields = dict(run_id="run-0042", run_dir="/tmp/run-0042", stream=STREAM, base=BASE,
                  model="embedded_resnet20 c95a8913", adapter="tent", hyperparameters={"lr": 0.00025, "steps": 1},
                  device="cuda:0", start=0, stop=6400, batch_size=64, probe_every=10, probe_size=256)
    return RunInfo(**(fields | changes))


def step_row(step: int, wall_time: float, correct: int | None = 48, skipped: int = 0, **extra) -> dict:
    return empty_row(STEP_SCHEMA) | dict(step=step, start=step * 64, stop=(step + 1) * 64, images=64 - skipped,
                                         skipped=skipped, wall_time=wall_time, mean_entropy=1.25,
                                         top_class_share=0.125, correct=correct) | extra


def probe_row(step: int, est_source: float | None = 60.0, true_source: float | None = 55.0, **extra) -> dict:
    return empty_row(PROBE_SCHEMA) | dict(step=step, position=step * 64, wall_time=100.0 + step, cycle=0,
                                          cycle_step=step, probe_size=256, flips=12, weighted_flips=7.5,
                                          est_source_acc=est_source, true_source_acc=true_source,
                                          est_online_acc=70.0, true_online_acc=72.0) | extra


def event_row(kind: str, origin: str = "entropy-floor", message: str = "mean entropy 0.05 < 0.1 for 20 steps",
              step: int = 7) -> dict:
    return empty_row(EVENT_SCHEMA) | dict(step=step, wall_time=100.0 + step, kind=kind, origin=origin,
                                          message=message)


def running_state(steps: int = 50) -> DashboardState:
    state = DashboardState().apply_start(make_info(), wall_time=99.0)
    for step in range(steps):
        state = state.apply_step(step_row(step, 100.0 + 0.5 * step))
        if step % 10 == 9:
            state = state.apply_probe(probe_row(step + 1))
    return state


# -- state ---------------------------------------------------------------------------------------------------------

def test_transitions_are_pure():
    start = DashboardState().apply_start(make_info())
    after_step = start.apply_step(step_row(0, 100.0))
    after_probe = after_step.apply_probe(probe_row(1))
    after_event = after_probe.apply_event(event_row("warning"))
    after_health = after_event.apply_health("adapter", "ok", "12 ms/step")
    assert (start.steps, start.position, start.images) == (0, 0, 0)
    assert after_step.steps == 1 and after_step.position == 64 and not len(after_step.accuracy)
    assert len(after_probe.accuracy) == 1 and not after_probe.warnings and not after_probe.events
    assert after_event.warnings and not after_event.health
    assert after_health.health[0].detail == "12 ms/step"


def test_progress_throughput_and_eta():
    state = DashboardState().apply_start(make_info(start=640, stop=6400))
    for step in range(10, 20):  # resumed at position 640, one step every half second
        state = state.apply_step(step_row(step, 100.0 + 0.5 * step, skipped=1 if step == 12 else 0))
    assert state.done == 640 and state.total == 5760 and state.fraction == pytest.approx(640 / 5760)
    assert state.rate == pytest.approx(128.0)  # 64 positions per 0.5 s
    assert state.eta_seconds == pytest.approx((5760 - 640) / 128.0)
    assert state.skipped == 1 and state.images == 639
    assert state.last_step is not None and state.last_step.mean_entropy == pytest.approx(1.25)


def test_simultaneous_results_do_not_blow_up_the_rate():
    state = DashboardState().apply_start(make_info())
    state = state.apply_step(step_row(0, 100.0)).apply_step(step_row(1, 101.0))
    for step in range(2, 6):  # ray.wait handed four results over at once
        state = state.apply_step(step_row(step, 101.0))
    assert 64 <= state.rate < 64 + 4 * 64 / state.throughput_tau + 1e-9


def test_rolling_true_online_accuracy_and_null_without_labels():
    state = DashboardState(rolling_images=128).apply_start(make_info())
    for step, correct in enumerate([64, 32, 16]):
        state = state.apply_step(step_row(step, 100.0 + step, correct=correct))
    assert state.rolling_online_acc == pytest.approx(100 * 48 / 128)  # the first step left the window
    assert state.run_online_acc == pytest.approx(100 * 112 / 192)
    assert state.online_series.points[-1] == (192, pytest.approx(37.5))

    unlabelled = DashboardState().apply_start(make_info(has_labels=False)).apply_step(step_row(0, 100.0, correct=None))
    assert unlabelled.rolling_online_acc is None and unlabelled.run_online_acc is None
    assert not len(unlabelled.online_series)


def test_warning_is_added_updated_and_cleared_by_origin():
    state = DashboardState().apply_event(event_row("warning"))
    state = state.apply_event(event_row("warning", origin="top-class", message="top class 93% of predictions"))
    state = state.apply_event(event_row("warning", message="mean entropy 0.02 < 0.1 for 40 steps", step=9))
    assert [(w.origin, w.message) for w in state.warnings] == [
        ("top-class", "top class 93% of predictions"), ("entropy-floor", "mean entropy 0.02 < 0.1 for 40 steps")]
    cleared = state.apply_event(event_row("clear", message="entropy recovered"))
    assert [w.origin for w in cleared.warnings] == ["top-class"]
    assert cleared.count("warning") == 3 and cleared.count("clear") == 1 and len(cleared.events) == 4


def test_events_are_bounded_and_resets_are_not_counted_twice():
    state = DashboardState(max_events=5).apply_start(make_info())
    for step in range(8):
        state = state.apply_event(event_row("reset", origin="adapter", message=f"reset {step}", step=step))
        state = state.apply_step(step_row(step, 100.0 + step, reset=True))
    assert [e.message for e in state.events] == [f"reset {step}" for step in range(3, 8)]
    assert state.resets == 8


def test_health_keeps_first_report_order_and_rejects_unknown_status():
    state = DashboardState().apply_health("adapter", "ok").apply_health("stream-0", "slow", "queue empty 3 s")
    state = state.apply_health("adapter", "dead", "ActorDiedError")
    assert [(h.name, h.status) for h in state.health] == [("adapter", "dead"), ("stream-0", "slow")]
    with pytest.raises(ValueError, match="valid: ok, slow, diverged, dead"):
        state.apply_health("probe", "sleepy")
    diverged = state.apply_health("adapter", "diverged", "non-finite loss, gradient or logits since step 7")
    assert diverged.health[0].status == "diverged"


def test_series_downsamples_evenly_and_always_shows_the_newest_point():
    series = Series(capacity=10)
    for value in range(100):
        series = series.append(value)
    kept = series.kept
    assert len(kept) <= 10 and kept[0] == 0
    assert len({b - a for a, b in zip(kept, kept[1:])}) == 1  # evenly spaced
    assert series.points[-1] == 99
    with pytest.raises(ValueError, match="even number"):
        Series(capacity=7)


def test_probe_means_and_latest_report():
    state = DashboardState().apply_start(make_info())
    state = state.apply_probe(probe_row(10, est_source=None)).apply_probe(probe_row(20, est_source=50.0))
    state = state.apply_probe(probe_row(30, est_source=70.0, true_source=65.0))
    assert state.mean_accuracy(1) == pytest.approx(60.0) and state.mean_accuracy(2) == pytest.approx(55.0 + 10 / 3)
    assert state.last_probe is not None and state.last_probe.position == 30 * 64 and state.probe_count == 3
    assert state.accuracy.points[0].est_source_acc is None


def test_a_snapshot_without_flips_keeps_the_last_counted_ones_on_show():
    no_flips = dict(flips=None, weighted_flips=None, probe_size=None)
    state = DashboardState().apply_start(make_info()).apply_probe(probe_row(10, **no_flips))
    assert state.last_probe.flips is None and flips_line(state.last_probe) == "cycle 0 · no flips counted yet"
    state = state.apply_probe(probe_row(20)).apply_probe(probe_row(30, cycle=1, cycle_step=5, **no_flips))
    assert state.last_probe.step == 30 and state.last_probe.est_online_acc == 70.0  # the estimates are this step's
    assert flips_line(state.last_probe) == "cycle 1 · 12/256 flips at step 20 of cycle 0 · weighted 7.5"


# -- panels --------------------------------------------------------------------------------------------------------

def test_header_shows_stream_base_model_adapter_and_device():
    text = render(Header(running_state()))
    for expected in ("run-0042", STREAM, BASE, "embedded_resnet20 c95a8913", "tent", "lr=0.00025", "cuda:0"):
        assert expected in text


def test_warnings_panel_shows_evidence_or_says_none():
    assert "no collapse warnings" in render(WarningsPanel(running_state()))
    state = running_state().apply_event(event_row("warning"))
    text = render(WarningsPanel(state))
    assert "entropy-floor" in text and "mean entropy 0.05 < 0.1 for 20 steps" in text


def test_warnings_panel_fits_its_height_and_says_how_many_are_hidden():
    state = running_state()
    for index in range(6):
        state = state.apply_event(event_row("warning", origin=f"detector-{index}", message=f"evidence {index}"))
    console = capture_console()
    lines = console.render_lines(WarningsPanel(state), console.options.update(height=6), new_lines=False)
    text = "\n".join("".join(segment.text for segment in line) for line in lines)
    assert len(lines) == 6 and "evidence 5" in text and "3 earlier warnings" in text


def test_throughput_panel_shows_percentage_rate_and_step_stats():
    text = render(ThroughputPanel(running_state()))
    assert "50.0%" in text and "img/s" in text and "ETA" in text and "entropy 1.250" in text
    assert "online 75.0%" in text  # 48 of 64 correct
    assert "estimates" not in text  # no probe yet
    state = running_state().apply_probe(probe_row(20, est_source_method="sentinel",
                                                  est_online_method="anchored-nuclear-norm"))
    assert "source by sentinel · online by anchored-nuclear-norm" in render(ThroughputPanel(state))


def test_events_and_health_panels():
    state = running_state().apply_event(event_row("reset", origin="adapter", message="periodic reset"))
    state = state.apply_health("source-1", "slow", "queue empty 3 s")
    assert "adapter: periodic reset" in render(EventsPanel(state))
    assert "no events yet" in render(EventsPanel(running_state()))
    text = render(HealthPanel(state))
    assert "source-1" in text and "slow" in text and "queue empty 3 s" in text
    assert "no actor reports yet" in render(HealthPanel(running_state()))


def _glyph_rows(text: str) -> list[tuple[int, int]]:
    return [(row, match.start()) for row, line in enumerate(text.splitlines()) for match in BRAILLE.finditer(line)]


def test_chart_places_a_high_value_above_a_low_value():
    state = DashboardState().apply_start(make_info(stop=10_000))
    for position in range(0, 10_001, 500):  # one series: 90 % in the first half, 10 % in the second
        value = 90.0 if position < 5000 else 10.0
        state = state.apply_probe(probe_row(0, position=position, est_source=value, true_source=None,
                                            est_online_acc=None, true_online_acc=None))
    text = render(AccuracyChart(state, height=20))
    lines = text.splitlines()
    glyphs = _glyph_rows(text)
    middle = sum(col for _, col in glyphs) / len(glyphs)
    left = [row for row, col in glyphs if col < middle - 10]
    right = [row for row, col in glyphs if col > middle + 10]
    assert left and right and max(left) < min(right)
    fifty = next(row for row, line in enumerate(lines) if "50% ┤" in line)
    assert max(left) < fifty < min(right)
    assert "est source 10.0%" in text and "95% ┤" in text and " 5% ┤" in text  # zoomed to 10-90, padded


@pytest.mark.parametrize("values, expected", [
    ([], (0.0, 100.0)),
    ([12.0, 30.0, 18.5], (10.0, 35.0)),       # the data's range, padded to multiples of 5
    ([50.0, 51.0], (40.0, 65.0)),             # never narrower than 20 points: noise must not fill the chart
    ([1.0, 3.0], (0.0, 20.0)),
    ([99.0, 100.0], (80.0, 100.0)),
    ([0.0, 100.0], (0.0, 100.0)),
])
def test_y_range_zooms_to_the_data(values, expected):
    assert y_range(values) == expected


def test_lines_a_few_points_apart_land_on_different_rows():
    state = DashboardState().apply_start(make_info(stop=10_000))
    for position in range(0, 10_001, 500):  # 12 % and 30 %: one text row apart on a 0-100 axis of 12 rows
        state = state.apply_probe(probe_row(0, position=position, est_source=12.0, true_source=None,
                                            est_online_acc=30.0, true_online_acc=None))
    rows = {row for row, _ in _glyph_rows(render(AccuracyChart(state, height=14)))}
    assert max(rows) - min(rows) >= 6


def test_chart_fills_the_height_it_is_given_and_shows_truth_from_steps_without_probe_truth():
    state = running_state()
    for height in (1, 2, 3, 5, 12, 30):
        assert len(render(AccuracyChart(state, height=height)).splitlines()) == max(height, 1)
    state = DashboardState().apply_start(make_info())
    for step in range(20):
        state = state.apply_step(step_row(step, 100.0 + step))
    text = render(AccuracyChart(state, height=10))
    assert "true online (rolling 5k) 75.0%" in text and BRAILLE.search(text)
    assert "waiting for probe reports" in render(AccuracyChart(DashboardState(), height=10))


def test_whole_layout_renders_every_panel():
    state = running_state().apply_event(event_row("warning")).apply_health("adapter", "ok")
    text = render(DashboardView(state))
    assert len(text.splitlines()) == 40
    for expected in (STREAM, BASE, "tent", "%", "mean entropy 0.05", "accuracy per probe window", "adapter",
                     "events"):
        assert expected in text
    assert BRAILLE.search(text)
    assert "no collapse warnings" in render(DashboardView(running_state()))


@pytest.mark.parametrize("width,height", [(40, 40), (40, 12), (100, 10), (200, 60)])
def test_small_and_large_consoles_do_not_crash(width, height):
    state = running_state().apply_event(event_row("warning")).apply_health("adapter", "slow", "x" * 300)
    for renderable in (Header(state), AccuracyChart(state), WarningsPanel(state), ThroughputPanel(state),
                       EventsPanel(state), HealthPanel(state), DashboardView(state), summary_table(state)):
        render(renderable, width=width, height=height)
    assert "no collapse warnings" in render(DashboardView(running_state()), width=width, height=height)


def test_summary_table_compares_estimates_with_ground_truth():
    state = running_state().apply_event(event_row("warning")).apply_event(event_row("reset", origin="adapter"))
    text = render(summary_table(state))
    for expected in ("3,200 of 6,400", "img/s", "est 60.0% · true 55.0%", "est 70.0% · true 72.0%",
                     "collapse warnings", "resets", "skipped images"):
        assert expected in text


# -- observers -----------------------------------------------------------------------------------------------------

def test_dashboard_context_manager_renders_without_auto_refresh():
    console = capture_console()
    console.begin_capture()
    with Dashboard(console, auto_refresh=False) as dashboard:
        dashboard.on_start(make_info())
        for step in range(5):
            dashboard.on_step(step_row(step, 100.0 + step))
        dashboard.on_probe(probe_row(5))
        dashboard.on_event(event_row("warning"))
        dashboard.on_health("adapter", "ok")
        dashboard.log("a message above the display")
    dashboard.close()  # a second close is harmless
    text = console.end_capture()
    assert STREAM in text and BASE in text and "a message above the display" in text
    assert "mean entropy 0.05 < 0.1" in text and "est 60.0% · true 55.0%" in text  # the frame, then the summary
    assert dashboard.state.steps == 5
    with pytest.raises(RuntimeError, match="closed"):
        dashboard.start()


def test_plain_reporter_prints_probes_and_events_and_rate_limits_progress():
    now = [0.0]
    console = Console(file=io.StringIO(), width=100)
    reporter = PlainReporter(console, every_seconds=10.0, clock=lambda: now[0], summary=False)
    reporter.on_start(make_info())
    for step in range(30):
        now[0] = float(step)
        reporter.on_step(step_row(step, 100.0 + step))
    reporter.on_probe(probe_row(30))
    reporter.on_event(event_row("warning"))
    reporter.on_event(event_row("reset", origin="adapter", message="periodic reset"))
    reporter.close()
    lines = console.file.getvalue().splitlines()
    assert lines[0].startswith("run run-0042: tent on " + STREAM) and BASE in lines[0]
    assert sum(line.startswith("progress") for line in lines) == 3  # t = 0, 10, 20
    probe = next(line for line in lines if line.startswith("probe"))
    assert "est source 60.0% (true 55.0%)" in probe and "est online 70.0% (true 72.0%)" in probe
    assert "WARNING entropy-floor step 7: mean entropy 0.05 < 0.1 for 20 steps" in lines
    assert "reset adapter step 7: periodic reset" in lines


def test_plain_reporter_prints_the_summary_on_close():
    console = Console(file=io.StringIO(), width=100)
    reporter = PlainReporter(console, clock=lambda: 0.0)
    reporter.on_start(make_info())
    reporter.on_step(step_row(0, 100.0))
    reporter.close()
    assert "collapse warnings" in console.file.getvalue()


def test_make_reporter_needs_a_terminal_and_enabled():
    assert isinstance(make_reporter(Console(file=io.StringIO()), enabled=True), PlainReporter)
    assert isinstance(make_reporter(capture_console(), enabled=False), PlainReporter)
    assert isinstance(make_reporter(capture_console(), enabled=True), Dashboard)


def test_the_headline_interval_is_a_band_and_out_of_support_is_flagged():
    state = DashboardState().apply_start(make_info(stop=10_000))
    plain = state.apply_probe(probe_row(0, position=5000, est_source=50.0, true_source=None,
                                        est_online_acc=None, true_online_acc=None))
    banded = state.apply_probe(probe_row(0, position=5000, est_source=50.0, true_source=None, est_online_acc=None,
                                         true_online_acc=None, est_source_lo=20.0, est_source_hi=80.0))
    assert banded.accuracy.points[-1].source_interval == (20.0, 80.0)
    plain_rows = {row for row, _ in _glyph_rows(render(AccuracyChart(plain, height=20)))}
    band_text = render(AccuracyChart(banded, height=20))
    assert len({row for row, _ in _glyph_rows(band_text)}) > len(plain_rows) + 3  # the band spans 20-80%
    assert "90% interval" in band_text
    flagged = running_state().apply_probe(probe_row(20, est_source_method="average-confidence", est_source_lo=40.0,
                                                    est_source_hi=95.0, est_source_out_of_support=True))
    text = render(ThroughputPanel(flagged))
    assert "source by average-confidence [40, 95]" in text and "out of support: source" in text


def test_the_fused_warning_titles_the_panel_and_names_its_detectors_advisories_alone_do_not():
    advisory = running_state().apply_event(event_row("warning", origin="asr", message="advisory: entropy low"))
    text = render(WarningsPanel(advisory))
    assert "no collapse warning; advisories (1)" in text and "asr" in text and "advisory: entropy low" in text
    fused = advisory.apply_event(event_row("warning", origin=FUSED_ORIGIN, message="collapse warning (risk-test): ...")
                                 | {"detectors": "risk-test"})
    assert "COLLAPSE WARNING (risk-test)" in render(WarningsPanel(fused))
    diverged = fused.apply_event(event_row("clear", origin=FUSED_ORIGIN)).apply_event(
        event_row("warning", origin=FUSED_ORIGIN, message="diverged (divergence,risk-test): ...")
        | {"detectors": "divergence,risk-test"})
    assert "DIVERGED (divergence,risk-test)" in render(WarningsPanel(diverged), width=120)


def test_the_accuracy_chart_draws_the_risk_tests_two_bounds_as_accuracies():
    state = running_state()
    assert not len(state.risk_series)
    for step in range(50, 60):
        state = state.apply_step(step_row(step, 130.0 + step, risk_lower=0.2 + 0.05 * (step - 50), risk_upper=0.4))
    assert state.risk_series.points[-1] == (60 * 64, pytest.approx(0.65), 0.4)
    text = render(AccuracyChart(state, height=20), width=120)
    assert "risk test: online acc. upper bound 35.0%" in text and "risk test: alarm level 60.0%" in text


def test_the_fused_warning_is_the_title_and_each_detectors_evidence_one_line():
    state = running_state().apply_event(event_row("warning", origin="entropy-ema", message="collapse warning: low"))
    state = state.apply_event(event_row("warning", origin=FUSED_ORIGIN, message="collapse warning (entropy-ema): low")
                              | {"detectors": "entropy-ema"})
    text = render(WarningsPanel(state), width=120)
    assert "COLLAPSE WARNING (entropy-ema)" in text
    assert text.count("low") == 1  # the detector's line; the fused warning's own text would repeat it


def test_the_whole_dashboard_keeps_the_estimates_row_of_a_labelled_stream():
    # every readout of the throughput panel (a labelled stream's truth and domain included) fits
    # the size the layout gives it: the headline methods and the support flag are its last row
    stepped = running_state().apply_step(step_row(50, 125.0) | {"noise_a": "fog", "severity_a": 3.0})
    flagged = stepped.apply_probe(probe_row(60, est_online_method="atc-ne", est_online_lo=51.0,
                                            est_online_hi=95.0, est_online_out_of_support=True))
    text = render(DashboardView(flagged), width=160, height=42)
    assert "fog 3" in text and "online by atc-ne [51, 95]" in text and "out of support: online" in text
