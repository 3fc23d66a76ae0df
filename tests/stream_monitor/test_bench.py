"""`stream-monitor bench`: the plan, the submitted entrypoint, and local runs that skip and resume."""

import json

import pytest

from stream_monitor.bench import (OUTCOME_FILE, PROGRESS_FILE, SUMMARY_COLUMNS, job_entrypoint, live_rows, plan,
                                  run_local, write_summary)

SMALL = ["runtime.max_images=640", "probe.every=4", "probe.size=128", "runtime.threads=1",
         "runtime.checkpoint_every=4"]


def test_plan_crosses_streams_seeds_and_adapters_without_duplicates():
    jobs = plan(["baseline_20_transition+speed_1000_seed_43"] * 2, ["tent", "rdumb"], seeds=[43, 44])
    assert [(j.adapter, j.stream[-7:]) for j in jobs] == [
        ("tent", "seed_43"), ("rdumb", "seed_43"), ("tent", "seed_44"), ("rdumb", "seed_44")]
    assert len(plan(["all"], ["source"])) == 27
    assert jobs[0].name == "tent-baseline_20_s1000_seed_43"


def test_plan_names_the_valid_choices_of_a_bad_name():
    with pytest.raises(ValueError, match="tent"):
        plan(["baseline_20_transition+speed_1000_seed_43"], ["tnet"])
    with pytest.raises(ValueError, match="seed 43/44/45"):
        plan(["baseline_20_transition+speed_1000_seed_7"], ["tent"])


def test_a_submitted_bench_runs_the_same_arguments_on_the_cluster():
    argv = ["--adapters", "tent", "--submit", "http://head:8265", "--address=10.0.0.1:6379", "--out", "/nfs/b"]
    assert job_entrypoint(argv) == "stream-monitor bench --adapters tent --out /nfs/b --address auto"


def test_local_bench_finishes_skips_finished_runs_and_resumes_stopped_ones(tmp_path):
    jobs = plan(["baseline_20_transition+speed_1000_seed_43"], ["source", "tent"], overrides=SMALL)
    rows = run_local(jobs, tmp_path)
    assert [r["status"] for r in rows] == ["finished", "finished"] and [r["images"] for r in rows] == [640, 640]
    assert all(r["true_online_acc"] is not None for r in rows)
    tent = tmp_path / jobs[1].name
    steps_before = sorted(p.name for p in (tent / "steps").iterdir())
    # A finished run is not run again.
    assert run_local(jobs[1:], tmp_path)[0]["attempts"] == 1
    assert sorted(p.name for p in (tent / "steps").iterdir()) == steps_before
    # A run that did not finish (its outcome says stopped) resumes from its checkpoint, as attempt 2.
    (tent / OUTCOME_FILE).write_text(json.dumps({"status": "stopped"}))
    again = run_local(jobs[1:], tmp_path)[0]
    assert again["status"] == "finished" and again["attempts"] == 2 and again["images"] == 640
    assert json.loads((tent / PROGRESS_FILE).read_text())["attempt"] == 2
    assert [r["status"] for r in live_rows(jobs, tmp_path)] == ["finished", "finished"]


def test_bench_cli_refuses_an_unknown_adapter_before_running(tmp_path):
    from typer.testing import CliRunner

    from stream_monitor.cli import app

    result = CliRunner().invoke(app, ["bench", "--adapters", "tnet", "--out", str(tmp_path / "b"), "--no-ray"])
    assert result.exit_code == 2 and "tent" in result.output
    assert not (tmp_path / "b").exists()


def test_summary_parquet_has_one_schema_whatever_the_runs_reached(tmp_path):
    """A bench whose runs all stopped early (every number null) still writes typed columns that union with a
    finished bench's summary."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    early = {"adapter": "tent", "stream": "s", "run_dir": "out/tent-s", "status": "failed", "error": "boom"}
    done = {**early, "status": "finished", "error": None, "attempts": 1, "images": 640, "true_online_acc": 51.5,
            "est_online_acc": 50.0, "online_acc_mae": 1.5, "warnings": 0, "resets": 2, "img_per_s": 99.5}
    for name, row in (("a", early), ("b", done)):
        (tmp_path / name).mkdir()
        write_summary([row], tmp_path / name)
    table = ds.dataset([tmp_path / "a" / "summary.parquet", tmp_path / "b" / "summary.parquet"]).to_table()
    assert table.column_names == list(SUMMARY_COLUMNS) and not any(pa.types.is_null(t) for t in table.schema.types)
    assert table["images"].to_pylist() == [None, 640] and table.schema.field("true_online_acc").metadata == {
        b"unit": b"percent"}
