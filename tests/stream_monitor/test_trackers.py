"""The optional trackers: TensorBoard scalars of a run, MLflow runs of a bench, read back with their own readers."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from stream_monitor.cli import app
from stream_monitor.config import load_config
from stream_monitor.trackers import TrackerMissing, tracker_observers

runner = CliRunner()
SMALL = ["--set", "probe.size=64", "--set", "probe.every=2", "--set", "evaluator.frozen_every=1"]


def test_tensorboard_scalars_at_stream_positions(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["run", "--no-ray", "--no-dashboard", "--out", str(tmp_path / "runs"),
                                 "--max-images", "256", "--tensorboard", str(tmp_path / "tb"), *SMALL])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    (logdir,) = (tmp_path / "tb").iterdir()
    assert logdir.name == run_dir.name  # one TensorBoard folder per run
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"estimate/online_acc", "true/online_acc", "true/source_acc", "step/mean_entropy"} <= tags
    online = events.Scalars("true/online_acc")
    # probes at steps 2 and 4 -> stream positions 128 and 256 (64 images a step)
    assert [e.step for e in online] == [128, 256]
    assert all(0 <= e.value <= 100 for e in online)
    from stream_monitor.metrics.sink import read_table

    probes = read_table(run_dir, "probes").to_pylist()
    assert [round(e.value, 3) for e in online] == [round(p["true_online_acc"], 3) for p in probes]


def test_a_tracker_that_is_not_installed_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    with pytest.raises(TrackerMissing, match=r"pip install 'tta-stream-monitor\[tensorboard\]'"):
        tracker_observers(load_config(None, [f"metrics.tensorboard={str(tmp_path)!r}"]))
    result = runner.invoke(app, ["run", "--no-ray", "--out", str(tmp_path / "runs"), "--tensorboard",
                                 str(tmp_path / "tb")])
    assert result.exit_code == 2 and "stream-monitor[tensorboard]" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()  # refused before anything was created
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = runner.invoke(app, ["bench", "--no-ray", "--out", str(tmp_path / "b"), "--mlflow", "file:///x"])
    assert result.exit_code == 2 and "stream-monitor[mlflow]" in " ".join(result.output.split())
    assert not (tmp_path / "b").exists()


def test_bench_logs_one_mlflow_run_per_job(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for opt-in use only

    uri = (tmp_path / "mlruns").as_uri()
    args = ["bench", "--no-ray", "--adapters", "source,tent", "--out", str(tmp_path / "bench"), "--max-images",
            "128", "--set", "probe.size=64", "--set", "probe.every=2", "--mlflow", uri, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [r["status"] for r in document["runs"]] == ["finished", "finished"]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("stream-monitor-bench")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {r["run"] for r in document["runs"]}
    for row in document["runs"]:
        logged = runs[row["run"]]
        assert logged.info.run_id == row["mlflow_run_id"] and logged.info.status == "FINISHED"
        info = json.loads((tmp_path / "bench" / row["run"] / "run.json").read_text())
        assert logged.data.params["adapter"] == info["adapter"] == row["adapter"]
        assert logged.data.params["stream"] == info["stream"] and logged.data.params["stop"] == "128"
        assert logged.data.metrics["images"] == 128
        assert logged.data.metrics["true_online_acc"] == pytest.approx(row["true_online_acc"])
    # the same bench again (all finished, nothing re-run) updates those runs instead of adding two
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_an_unusable_mlflow_store_fails_before_any_run(tmp_path):
    result = runner.invoke(app, ["bench", "--no-ray", "--out", str(tmp_path / "b"), "--mlflow", "nosuch://place"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "error: MLflow cannot use the tracking URI" in text
    assert not (tmp_path / "b").exists()
