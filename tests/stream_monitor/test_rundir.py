"""The run directory reader on small run directories the tests write (the real sink, config and checkpoint)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from stream_monitor.calibration import Provenance
from stream_monitor.config import dump_config, load_config
from stream_monitor.metrics.schema import EVENT_SCHEMA, PROBE_SCHEMA, STEP_SCHEMA, TABLES, empty_row
from stream_monitor.metrics.sink import ParquetSink
from stream_monitor.rundir import (CHECKPOINT_FILE, CONFIG_FILE, FORMAT, INFO_FILE, LOG_FILE, TABLE_NAMES,
                                   RunDirectory, RunDirectoryError)
from stream_monitor.runtime.observer import RunInfo
from stream_monitor.schedule import DEFAULT_CYCLE

INFO = RunInfo(run_id="r1", run_dir="r1", stream="baseline_20_transition+speed_1000_seed_43", base="embedded glyphs",
               model="embedded_resnet20 c95a8913abcd", adapter="tent", hyperparameters={"lr": 0.001}, start=0,
               stop=256, batch_size=64, probe_every=2, probe_size=64, num_classes=10, adapter_calibrated=False)


def _info_json(**changes: Any) -> dict[str, Any]:
    return {"format": FORMAT, **asdict(INFO), **changes}


def _make(path: Path, overrides: tuple[str, ...] = (), info: dict[str, Any] | None = None, rows: bool = True) -> Path:
    path.mkdir(parents=True)
    dump_config(load_config(None, list(overrides)), path / CONFIG_FILE)
    (path / INFO_FILE).write_text(json.dumps(_info_json() if info is None else info))
    if rows:
        with ParquetSink(path) as sink:
            for i in range(4):
                sink.on_step({**empty_row(STEP_SCHEMA), "step": i + 1, "start": 64 * i, "stop": 64 * (i + 1),
                              "images": 64, "skipped": 0, "wall_time": 1.0 + i})
            sink.on_probe({**empty_row(PROBE_SCHEMA), "step": 2, "position": 128, "wall_time": 2.0, "cycle": 0,
                           "cycle_step": 2, "probe_size": 64, "flips": 3, "weighted_flips": 1.5})
            sink.on_event({**empty_row(EVENT_SCHEMA), "step": 0, "wall_time": 0.5, "kind": "start",
                           "origin": "driver", "message": "run started"})
    return path


def test_reads_config_info_tables_and_provenance(tmp_path):
    run = RunDirectory(_make(tmp_path / "run", ("probe.every=2", "probe.cycle=50")))
    assert TABLE_NAMES == tuple(TABLES) and (CHECKPOINT_FILE, LOG_FILE) == ("checkpoint.pt", "driver.log")
    assert run.config_path == run.path / "config.yaml" and run.info_path.name == "run.json"
    assert run.checkpoint_path.name == CHECKPOINT_FILE and run.log_path.name == LOG_FILE
    assert run.config().probe.cycle == 50 and run.config(["probe.size=32"]).probe.size == 32
    assert run.info() == INFO and run.num_classes == 10
    steps = run.table("steps")
    assert steps.schema.names == STEP_SCHEMA.names and steps.column("step").to_pylist() == [1, 2, 3, 4]
    assert [r["flips"] for r in run.rows("probes")] == [3] and run.rows("events")[0]["kind"] == "start"
    estimates = run.table("estimates")  # no part written: empty, with its schema
    assert estimates.num_rows == 0 and estimates.schema.names == TABLES["estimates"].names
    assert run.provenance() == Provenance("embedded_resnet20", "c95a8913abcd", "tent", {"lr": 0.001}, 64, 50)
    assert repr(run) == f"RunDirectory({str(run.path)!r})"


def test_cycle_follows_the_reset_period_else_the_default(tmp_path):
    reset = RunDirectory(_make(tmp_path / "a", info=_info_json(hyperparameters={"reset_every": 300}), rows=False))
    assert reset.provenance().cycle == 300
    assert RunDirectory(_make(tmp_path / "b", rows=False)).provenance().cycle == DEFAULT_CYCLE


def test_checkpoint_is_none_until_one_is_written(tmp_path):
    from stream_monitor.runtime.checkpoint import save_checkpoint
    from stream_monitor.runtime.loop import LoopState

    run = RunDirectory(_make(tmp_path / "run", rows=False))
    assert run.checkpoint() is None
    save_checkpoint(run.path, LoopState(step=4, position=256), {"w": 1}, None)
    checkpoint = run.checkpoint()
    assert checkpoint is not None and checkpoint.state.step == 4 and checkpoint.adapter == {"w": 1}


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirectoryError, match=r"run directory .*nope does not exist; pass the folder that "
                                                 r"`stream-monitor run` printed"):
        RunDirectory(tmp_path / "nope")
    with pytest.raises(RunDirectoryError, match=r"is not a run directory \(no config\.yaml\); pass the folder"):
        RunDirectory(tmp_path)


def test_without_run_json_only_the_config_is_known(tmp_path):
    path = _make(tmp_path / "run", ("probe.size=32",), rows=False)
    (path / INFO_FILE).unlink()
    run = RunDirectory(path)
    assert run.config().probe.size == 32  # enough to resume
    for read in (run.info, run.provenance, lambda: run.num_classes):
        with pytest.raises(RunDirectoryError, match=r"no run\.json: the run stopped before its workers started.*"
                                                    r"stream-monitor run --resume"):
            read()


@pytest.mark.parametrize("text, message", [
    ("{not json", r"run\.json cannot be read .*start a new run"),
    ("[1, 2]", r"run\.json holds list, not the JSON object"),
])
def test_unreadable_run_json(tmp_path, text, message):
    path = _make(tmp_path / "run", rows=False)
    (path / INFO_FILE).write_text(text)
    with pytest.raises(RunDirectoryError, match=message):
        RunDirectory(path)


def test_another_format_names_both_versions(tmp_path):
    path = _make(tmp_path / "run", info=_info_json(format=FORMAT + 1), rows=False)
    with pytest.raises(RunDirectoryError, match=rf"has format {FORMAT + 1}; this version of stream-monitor reads run "
                                                rf"directory format {FORMAT}\. Read it with the version that wrote it"):
        RunDirectory(path)


def test_a_run_json_without_format_is_from_another_version(tmp_path):
    info = _info_json()
    del info["format"]
    path = _make(tmp_path / "run", info=info, rows=False)
    with pytest.raises(RunDirectoryError, match=rf"has no format \(a run directory from before formats were "
                                                rf"recorded\); this version .* reads run directory format {FORMAT}"):
        RunDirectory(path)


def test_run_json_must_hold_exactly_the_run_info_fields(tmp_path):
    info = _info_json(colour="blue")
    del info["num_classes"], info["adapter_calibrated"]
    path = _make(tmp_path / "run", info=info, rows=False)
    with pytest.raises(RunDirectoryError, match=r"does not hold the run facts of this version \(missing num_classes, "
                                                r"adapter_calibrated; unknown colour\); .*re-run the stream"):
        RunDirectory(path)


def test_num_classes_must_be_recorded(tmp_path):
    run = RunDirectory(_make(tmp_path / "run", info=_info_json(num_classes=0), rows=False))
    with pytest.raises(RunDirectoryError, match=r"records num_classes=0"):
        run.num_classes


def test_a_damaged_part_or_an_unknown_table(tmp_path):
    run = RunDirectory(_make(tmp_path / "run"))
    (run.path / "probes" / "part-00007.parquet").write_bytes(b"not parquet")
    with pytest.raises(RunDirectoryError, match=r"part-00007\.parquet: unreadable part.*Move the part out of .*probes"
                                                r".*moves such parts to quarantine/"):
        run.rows("probes")
    assert run.table("steps").num_rows == 4  # the other tables stay readable
    with pytest.raises(ValueError, match=r"unknown table 'step'; valid tables: steps, probes"):
        run.table("step")


def test_importing_the_reader_starts_no_runtime():
    code = ("import sys, stream_monitor.rundir; print(sorted(m for m in ('ray', 'stream_monitor.calibrate', "
            "'stream_monitor.runtime.runner', 'stream_monitor.runtime.loop') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
