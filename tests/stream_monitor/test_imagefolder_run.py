"""A run on an image folder: several reshuffled passes, and a resume that reads exactly the same positions."""

from __future__ import annotations

from stream_monitor.config import load_config
from stream_monitor.metrics.sink import read_table
from stream_monitor.runtime.runner import prepare_resume, run
from tests.conftest import write_glyph_folder

TIMING = ["wall_time", "step_ms", "probe_ms", "time", "run_id"]


def _rows(run_dir, table: str) -> list[dict]:
    data = read_table(run_dir, table)
    return data.drop_columns([c for c in TIMING if c in data.column_names]).to_pylist()


def test_a_folder_run_longer_than_the_folder_resumes_exactly(tmp_path):
    folder = write_glyph_folder(tmp_path / "glyphs", images=100)
    base = ["source.kind='imagefolder'", f"source.data={str(folder)!r}", "source.seed=5", "source.batch_size=32",
            "runtime.use_ray=False", "dashboard.enabled=False", "probe.size=32", "probe.every=2",
            "runtime.checkpoint_every=2", "runtime.threads=1", "evaluator.frozen_every=0"]
    whole = run(load_config(None, [*base, "runtime.max_images=320"]), tmp_path / "whole")
    assert whole.status == "finished" and whole.info.stop == 320  # 3.2 passes over 100 images
    assert whole.info.stream == "imagefolder:glyphs"
    half = run(load_config(None, [*base, "runtime.max_images=160"]), tmp_path / "half")
    assert half.status == "finished" and half.info.stop == 160
    longer = prepare_resume(tmp_path / "half", ["runtime.max_images=320"])  # more passes than it started with
    resumed = run(longer, tmp_path / "half", resume=True)
    assert resumed.status == "finished" and resumed.state.position == 320
    assert _rows(tmp_path / "half", "steps") == _rows(tmp_path / "whole", "steps")
    assert _rows(tmp_path / "half", "probes") == _rows(tmp_path / "whole", "probes")
    assert read_table(tmp_path / "whole", "probes").num_rows == 5  # an estimate row at every probe
