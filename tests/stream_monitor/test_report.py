"""The HTML report from synthetic run directories (Parquet parts written with the real schemas; no Ray)."""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_monitor.metrics.schema import EVENT_SCHEMA, PROBE_SCHEMA, STEP_SCHEMA, empty_row
from stream_monitor.report import EVENT_ROW_CAP, NO_FLIPS, NO_PROBES, PLOTS, _load, _warning_spans, summarise, write_report
from stream_monitor.rundir import FORMAT, RunDirectoryError
from stream_monitor.runtime.observer import RunInfo

BATCH = 64
T0 = 1000.0        # the start event's wall time
STEP_S = 0.5       # seconds between step results
N_STEPS = 40
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_INFO = {"format": FORMAT, **asdict(RunInfo(
    run_id="r-<1>", run_dir="x", stream="baseline_20_transition+speed_1000_seed_43",
    base="embedded glyphs (not ImageNet)", model="embedded_resnet20 c95a8913", adapter="tent",
    hyperparameters={"lr": 0.001}, start=0, stop=N_STEPS * BATCH, batch_size=BATCH, num_classes=10))}


def _write(run_dir: Path, table: str, rows: list[dict[str, Any]], part: int = 0, name: str | None = None) -> None:
    schema = {"steps": STEP_SCHEMA, "probes": PROBE_SCHEMA, "events": EVENT_SCHEMA}[table]
    folder = run_dir / table
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "run_id": "r", "time": datetime.fromtimestamp(r["wall_time"], tz=timezone.utc)} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / (name or f"part-{part:05d}.parquet"))


def _step(i: int, labels: bool = True, skipped: int = 0) -> dict[str, Any]:
    row = empty_row(STEP_SCHEMA)
    images = BATCH - skipped
    row.update(step=i, start=i * BATCH, stop=(i + 1) * BATCH, images=images, skipped=skipped,
               wall_time=T0 + (i + 1) * STEP_S, step_ms=12.0 + i % 3, mean_entropy=2.0 - i / N_STEPS,
               mean_confidence=0.3 + i / (2 * N_STEPS), marginal_entropy=4.0, top_class_share=0.1 + i / (4 * N_STEPS),
               num_used=images, loss=1.0, grad_norm=0.5, update_skipped=False, reset=(i == 19),
               noise_a="gaussian_noise", severity_a=1.5)
    if labels:
        row.update(correct=images // 2, frozen_correct=8, frozen_seen=16)
    return row


def _probe(step: int, cycle: int, est_src: float | None, true_src: float | None, est_on: float | None,
           true_on: float | None) -> dict[str, Any]:
    row = empty_row(PROBE_SCHEMA)
    row.update(step=step, position=step * BATCH, wall_time=T0 + step * STEP_S, cycle=cycle, cycle_step=step % 20,
               probe_size=256, flips=step, weighted_flips=step * 0.6, probe_ms=30.0, est_source_acc=est_src,
               est_source_method="linear", est_extrapolated=False, est_online_acc=est_on, est_online_method="linear",
               window_start=(step - 10) * BATCH, window_stop=step * BATCH, true_online_acc=true_on,
               true_source_acc=true_src, warning=False)
    return row


def _event(step: int, kind: str, origin: str = "driver", message: str = "", value: float | None = None) -> dict:
    return {"step": step, "wall_time": T0 + step * STEP_S, "kind": kind, "origin": origin, "message": message,
            "value": value}


PROBES = [  # (step, cycle, est_source, true_source, est_online, true_online)
    (10, 0, 80.0, 78.0, 50.0, 55.0),
    (20, 0, 70.0, 74.0, 40.0, 40.0),
    (30, 1, 60.0, 60.0, 30.0, None),
    (40, 1, None, 50.0, 20.0, 10.0),
]

EVENTS = [
    (0, "start", "driver", "run started"),
    (15, "warning", "entropy-drop", "<script>alert(1)</script> entropy fell"),
    (20, "reset", "adapter", "reset after step 19"),
    (25, "clear", "entropy-drop", "entropy recovered"),
    (30, "error", "stream-0", "boom & bust"),
    (35, "warning", "flips", "flips rising"),
]


def _make_run(run_dir: Path, *, steps: bool = True, probes: bool = True, events: bool = True,
              labels: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("adapter:\n  name: tent\n  lr: 0.001  # <b>not bold</b>\n")
    (run_dir / "run.json").write_text(json.dumps(RUN_INFO))
    if steps:
        rows = [_step(i, labels=labels, skipped=2 if i == 3 else 0) for i in range(N_STEPS)]
        _write(run_dir, "steps", rows[:25], part=0)
        _write(run_dir, "steps", rows[25:], part=1)
        # An open part: same rows again, must not be counted.
        _write(run_dir, "steps", rows, name=".part-00002.parquet.tmp")
    if probes:
        rows = [_probe(s, c, es, ts if labels else None, eo, to if labels else None) for s, c, es, ts, eo, to in PROBES]
        _write(run_dir, "probes", rows)
    if events:
        _write(run_dir, "events", [_event(*e) for e in EVENTS])
    return run_dir


def _img_refs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_full_report_has_four_valid_pngs(tmp_path):
    run_dir = _make_run(tmp_path / "run")
    backend = matplotlib.get_backend()
    index = write_report(run_dir)
    assert index == run_dir / "report" / "index.html" and index.is_file()
    page = index.read_text()
    assert _img_refs(page) == list(PLOTS)
    for name in PLOTS:
        data = (index.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert matplotlib.get_backend() == backend  # the report does not switch the process-wide backend
    assert "<title>stream-monitor report: r-&lt;1&gt; (baseline_20_transition+speed_1000_seed_43" in page
    assert "embedded_resnet20 c95a8913" in page and "tent" in page
    assert "<pre>adapter:\n  name: tent\n  lr: 0.001  # &lt;b&gt;not bold&lt;/b&gt;\n</pre>" in page


def test_summary_numbers(tmp_path):
    s = summarise(_make_run(tmp_path / "run"))
    assert s["run_id"] == "r-<1>" and s["adapter"] == "tent"
    assert s["steps"] == N_STEPS  # the .tmp part is ignored
    images = N_STEPS * BATCH - 2
    assert s["images"] == images and s["skipped"] == 2
    # The start event opens the clock: the last result arrives N_STEPS * STEP_S later.
    assert s["wall_time_s"] == pytest.approx(N_STEPS * STEP_S)
    assert s["img_per_s"] == pytest.approx(images / (N_STEPS * STEP_S))
    assert s["est_source_acc"] == pytest.approx(70.0)
    assert s["true_source_acc"] == pytest.approx((78 + 74 + 60) / 3)
    assert s["source_acc_mae"] == pytest.approx((2 + 4 + 0) / 3) and s["source_acc_pairs"] == 3
    assert s["est_online_acc"] == pytest.approx((50 + 40 + 20) / 3)
    assert s["true_online_acc"] == pytest.approx((55 + 40 + 10) / 3)
    assert s["online_acc_mae"] == pytest.approx((5 + 0 + 10) / 3) and s["online_acc_pairs"] == 3
    assert s["true_online_acc_steps"] == pytest.approx(100 * sum((BATCH - (2 if i == 3 else 0)) // 2
                                                                 for i in range(N_STEPS)) / images)
    assert s["true_source_acc_steps"] == pytest.approx(50.0)
    assert (s["warnings"], s["resets"], s["errors"], s["events"]) == (2, 1, 1, len(EVENTS))
    assert (s["probes"], s["probe_cycles"]) == (4, 2)
    assert all(v is None or isinstance(v, (int, float, str)) for v in s.values())


def test_strings_are_escaped(tmp_path):
    page = write_report(_make_run(tmp_path / "run")).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; entropy fell" in page
    assert "<script>" not in page
    assert "boom &amp; bust" in page and 'class="error"' in page


def test_warning_spans_run_from_warning_to_clear_or_the_end(tmp_path):
    run = _load(_make_run(tmp_path / "run"))
    spans = sorted(_warning_spans(run))
    assert spans == [("entropy-drop", 15 * BATCH, 25 * BATCH), ("flips", 35 * BATCH, N_STEPS * BATCH)]


def test_no_probes(tmp_path):
    run_dir = _make_run(tmp_path / "run", probes=False)
    page = write_report(run_dir).read_text()
    assert NO_PROBES in page
    assert "flips.png" not in _img_refs(page) and "accuracy.png" in _img_refs(page)
    s = summarise(run_dir)
    assert s["probes"] == 0 and s["est_source_acc"] is None and s["source_acc_mae"] is None


def test_probe_rows_without_flips_plot_the_estimates_and_say_why_no_flips(tmp_path):
    run_dir = _make_run(tmp_path / "run", probes=False)
    rows = [_probe(s, c, es, ts, eo, to) | {"flips": None, "weighted_flips": None, "probe_size": None, "probe_ms": None}
            for s, c, es, ts, eo, to in PROBES]  # a run shorter than a probe cycle counts no flips by default
    _write(run_dir, "probes", rows)
    page = write_report(run_dir).read_text()
    assert html.escape(NO_FLIPS) in page and "flips.png" not in _img_refs(page) and "accuracy.png" in _img_refs(page)
    assert summarise(run_dir)["probes"] == len(PROBES)


def test_no_labels(tmp_path):
    run_dir = _make_run(tmp_path / "run", labels=False)
    index = write_report(run_dir)
    page = index.read_text()
    assert "a stream without labels" in page and "true_online_acc: null in every probe row" in page
    assert "accuracy.png" in _img_refs(page)  # the estimates alone are still plotted
    s = summarise(run_dir)
    assert s["true_online_acc_steps"] is None and s["online_acc_mae"] is None and s["online_acc_pairs"] == 0
    assert s["est_online_acc"] == pytest.approx((50 + 40 + 30 + 20) / 4)  # all estimates without truth
    assert "no MAE" in page


def test_no_events(tmp_path):
    run_dir = _make_run(tmp_path / "run", events=False)
    page = write_report(run_dir).read_text()
    assert "No event rows" in page
    s = summarise(run_dir)
    # Without a start event the first step has no known start: it is left out of the rate.
    assert s["wall_time_s"] == pytest.approx((N_STEPS - 1) * STEP_S)
    assert s["img_per_s"] == pytest.approx((N_STEPS * BATCH - 2 - BATCH) / ((N_STEPS - 1) * STEP_S))
    assert s["warnings"] == 0 and s["resets"] == 1  # the steps' reset flag stands in for reset events


def test_run_stopped_before_the_first_step(tmp_path):
    run_dir = _make_run(tmp_path / "run", steps=False, probes=False)
    page = write_report(run_dir).read_text()
    assert _img_refs(page) == [] and NO_PROBES in page and "no step rows" in page
    s = summarise(run_dir)
    assert s["images"] == 0 and s["img_per_s"] is None and s["wall_time_s"] is None


def test_empty_parts_and_no_parts(tmp_path):
    run_dir = _make_run(tmp_path / "run", steps=False, probes=False, events=False)
    for table in ("steps", "probes"):
        _write(run_dir, table, [])
    _write(run_dir, "steps", [_step(0)], name=".part-00000.parquet.tmp")  # only an open part
    page = write_report(run_dir).read_text()
    assert "no step rows" in page and NO_PROBES in page and "No event rows" in page
    assert summarise(run_dir)["steps"] == 0


def test_missing_run_dir_or_run_json_is_a_helpful_error(tmp_path):
    with pytest.raises(RunDirectoryError, match=r"does not exist.*`stream-monitor run --out DIR` makes one"):
        write_report(tmp_path / "nope")
    started = _make_run(tmp_path / "started")
    (started / "run.json").unlink()
    with pytest.raises(RunDirectoryError, match=r"no run\.json: the run stopped before its workers started"):
        summarise(started)


def test_out_path_and_stale_pngs(tmp_path):
    run_dir = _make_run(tmp_path / "run")
    out = tmp_path / "elsewhere" / "r.html"
    assert write_report(run_dir, out) == out
    assert all((out.parent / name).is_file() for name in PLOTS)
    # Rewritten after the probes table is gone: the old flips.png must not linger beside the page.
    for part in (run_dir / "probes").iterdir():
        part.unlink()
    write_report(run_dir, out.parent)
    assert not (out.parent / "flips.png").exists() and (out.parent / "index.html").is_file()


def test_event_table_is_capped(tmp_path):
    run_dir = _make_run(tmp_path / "run", events=False)
    _write(run_dir, "events", [_event(i % N_STEPS, "skipped", "stream-0", f"bad image {i}") for i in range(600)])
    page = write_report(run_dir).read_text()
    assert f"Showing the first {EVENT_ROW_CAP} of 600 events" in page
    assert page.count("<td>skipped</td>") == EVENT_ROW_CAP


def test_many_cycles(tmp_path):
    run_dir = _make_run(tmp_path / "run", probes=False)
    _write(run_dir, "probes", [_probe(s, s // 3, 70.0, 72.0, 60.0, 61.0) for s in range(1, N_STEPS)])
    page = write_report(run_dir).read_text()
    assert _img_refs(page) == list(PLOTS)
    assert summarise(run_dir)["probe_cycles"] == 14  # 1..39 // 3


def test_a_damaged_part_names_itself_and_the_way_out(tmp_path):
    run_dir = _make_run(tmp_path / "run")
    (run_dir / "steps" / "part-00009.parquet").write_bytes(b"not parquet")
    with pytest.raises(RunDirectoryError, match=r"part-00009\.parquet: unreadable part.*quarantine/"):
        write_report(run_dir)


def test_the_accuracy_plot_draws_the_risk_tests_two_bounds(tmp_path):
    from stream_monitor import report

    run_dir = _make_run(tmp_path / "run")
    rows = [_step(i) | {"risk_lower": 0.3 + i / 100, "risk_upper": 0.45} for i in range(N_STEPS)]
    for part in (run_dir / "steps").glob("*"):
        part.unlink()
    _write(run_dir, "steps", rows)
    figure = report._plot_accuracy(report._load(run_dir), [])
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    upper = lines["risk test: online accuracy's upper bound"].get_ydata()
    assert upper[0] == pytest.approx(70.0) and upper[-1] == pytest.approx(100 * (0.7 - (N_STEPS - 1) / 100))
    assert lines["risk test: alarm level (clean accuracy's lower bound - tolerance)"].get_ydata() == \
        pytest.approx([55.0] * N_STEPS)
