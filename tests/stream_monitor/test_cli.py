"""The command line, through typer's runner (in-process)."""

import re

import pytest
from typer.testing import CliRunner

from stream_monitor.cli import ADAPTER_HELP, ADAPTER_NAMES, app
from stream_monitor.metrics.sink import read_table
from tests.conftest import write_glyph_folder

runner = CliRunner()


def test_list_streams_prints_the_27_official_names():
    result = runner.invoke(app, ["list", "streams"])
    assert result.exit_code == 0
    assert len(result.output.split()) == 27 and "baseline_0_transition+speed_5000_seed_45" in result.output


def test_list_unknown_suggests():
    result = runner.invoke(app, ["list", "stream"])
    assert result.exit_code == 2 and "Did you mean 'streams'" in result.output


def test_bad_stream_name_is_a_clear_error():
    result = runner.invoke(app, ["run", "--stream", "baseline_25_transition+speed_1000_seed_43"])
    assert result.exit_code == 2 and "Unknown CCC stream" in result.output


def test_unknown_source_lists_valid_ones():
    result = runner.invoke(app, ["run", "--source", "cc"])
    assert result.exit_code == 2 and "Valid sources: ccc, heldout, heldout-ccc, imagefolder" in " ".join(result.output.split())


def test_imagefolder_needs_data():
    result = runner.invoke(app, ["run", "--source", "imagefolder"])
    assert result.exit_code == 2 and "needs --data DIR" in result.output


def local(tmp_path, *args: str) -> list[str]:
    """A short in-process run (unit tests never start Ray) into tmp_path/runs."""
    return ["run", "--no-ray", "--no-dashboard", "--out", str(tmp_path / "runs"), "--set", "probe.size=64",
            "--set", "probe.every=2", *args]


def test_short_run_on_the_embedded_default(tmp_path):
    result = runner.invoke(app, local(tmp_path, "--max-images", "192"))
    assert result.exit_code == 0, result.output
    assert "embedded/baseline_20_transition+speed_1000_seed_43" in result.output
    assert "embedded glyphs (not ImageNet)" in result.output
    assert "online accuracy" in result.output and "img/s" in result.output
    assert "embedded_resnet20" in result.output and "Summary (finished)" in result.output
    assert "probe step 2 at 128, window" in result.output  # the reference set (64 images) is full after step 1
    run_dir = next((tmp_path / "runs").iterdir())
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "run.json", "steps", "probes", "events",
                                                   "checkpoint.pt"}


def test_unknown_adapter_suggests():
    result = runner.invoke(app, ["run", "--adapter", "tnet"])
    assert result.exit_code == 2 and "Did you mean 'tent'" in result.output


def test_unknown_config_key_suggests():
    result = runner.invoke(app, ["run", "--set", "adapter.lrr=0.1"])
    assert result.exit_code == 2 and "Did you mean 'lr'" in result.output


def test_short_tent_run_serves_adapted_predictions(tmp_path):
    result = runner.invoke(app, local(tmp_path, "--adapter", "tent", "--max-images", "128", "--lr", "0.001"))
    assert result.exit_code == 0, result.output
    assert "tent" in result.output and "lr=0.001" in result.output


def test_short_eata_run_estimates_its_fisher_from_the_stream(tmp_path):
    result = runner.invoke(app, local(tmp_path, "--adapter", "eata", "--max-images", "128"))
    assert result.exit_code == 0, result.output
    assert "eata" in result.output


def test_resume_continues_a_run_to_a_longer_stop(tmp_path):
    assert runner.invoke(app, local(tmp_path, "--max-images", "128")).exit_code == 0
    run_dir = next((tmp_path / "runs").iterdir())
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--max-images", "256", "--no-dashboard"])
    assert result.exit_code == 0, result.output
    assert "resumed at step 2, position 128" in result.output
    assert read_table(run_dir, "steps").column("step").to_pylist() == [1, 2, 3, 4]


@pytest.mark.parametrize("args, message", [
    (["--lr=-1"], r"adapter.lr must be > 0"),
    (["--reset-every=0"], r"adapter.reset_every must be >= 1 steps"),
    (["--restore-prob=2"], r"adapter.restore_prob must be a probability from 0 to 1"),
    (["--set", "metrics.rows_per_part=0"], r"metrics.rows_per_part must be >= 1, got 0"),
    (["--max-images=-5"], r"runtime.max_images must be >= 1 images \(or null: the whole stream, `--max-images 0`\), "
                          r"got -5"),
    (["--set", "evaluator.frozen_every=-1"], r"evaluator.frozen_every must be >= 0 batches"),
])
def test_bad_values_fail_before_a_run_directory_exists(tmp_path, args, message):
    result = runner.invoke(app, local(tmp_path, *args))
    assert result.exit_code == 2 and re.search(r"error: " + message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_folder_that_is_no_run_says_what_to_pass(tmp_path):
    result = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run directory" in " ".join(result.output.split())


def test_list_adapters_shows_the_registry_descriptions():
    from stream_monitor.adapters import ADAPTERS

    result = runner.invoke(app, ["list", "adapters"])
    shown = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 0
    for info in ADAPTERS.infos():
        assert f"{info.name} {' '.join(info.description.split())}" in shown


def test_the_adapter_help_names_every_registered_adapter():
    from stream_monitor.adapters import ADAPTERS

    assert sorted(ADAPTER_NAMES) == ADAPTERS.names()
    assert all(name in ADAPTER_HELP for name in ADAPTERS.names())


def test_list_adapters_and_estimators():
    adapters = runner.invoke(app, ["list", "adapters"])
    assert adapters.exit_code == 0 and "rdumb" in adapters.output and "em-inf" in adapters.output
    estimators = runner.invoke(app, ["list", "estimators"])
    assert "weighted-flips" in estimators.output and "spread-flips" in estimators.output
    assert "atc-mc" in estimators.output and "served -> online, frozen -> source" in estimators.output
    assert "sentinel" in estimators.output and "aetta" in estimators.output
    assert "anchored-nuclear-norm" in estimators.output and "headline:" in estimators.output


def test_show_config_prints_yaml_that_loads_back(tmp_path):
    result = runner.invoke(app, ["show-config", "--set", "probe.every=25"])
    assert result.exit_code == 0
    (tmp_path / "c.yaml").write_text(result.output)
    from stream_monitor.config import load_config

    assert load_config(tmp_path / "c.yaml").probe.every == 25


def test_report_writes_html_for_a_run(tmp_path):
    assert runner.invoke(app, local(tmp_path, "--max-images", "256")).exit_code == 0
    run_dir = next((tmp_path / "runs").iterdir())
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report" / "index.html").exists() and (run_dir / "report" / "accuracy.png").exists()


def test_report_of_a_missing_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "stream-monitor run --out DIR" in " ".join(result.output.split())


def test_calibrate_for_another_model_needs_an_image_folder(tmp_path):
    result = runner.invoke(app, ["calibrate", "--set", "model.name=resnet18", "--out", str(tmp_path / "c.json")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "for resnet18, pass --data DIR, an ImageFolder of its classes" in message
    result = runner.invoke(app, ["calibrate", "--data", str(tmp_path), "--streams",
                                 "baseline_40_transition+speed_1000_seed_3", "--out", str(tmp_path / "c.json")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "with an image folder (--data) the meta-set is fixed domains" in message


def test_list_detectors_marks_the_default_set():
    result = runner.invoke(app, ["list", "detectors"])
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert result.exit_code == 0 and "default" in lines["entropy-ema"] and "default" not in lines["flip-rate"]


def test_list_detectors_shows_the_registry_descriptions():
    from stream_monitor.estimation.detectors import DETECTORS

    result = runner.invoke(app, ["list", "detectors"])
    shown = " ".join(result.output.split())
    for info in DETECTORS.infos():
        assert info.description and " ".join(info.description.split()) in shown


def test_unknown_detectors_are_clear_errors(tmp_path):
    result = runner.invoke(app, ["run", "--set", "estimation.detectors=entropy-ema,flip-rat"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Unknown detector 'flip-rat'. Did you mean 'flip-rate'?" in message
    result = runner.invoke(app, ["eval", str(tmp_path), "--detectors", "marginal-entrop"])
    assert result.exit_code == 2 and "Did you mean 'marginal-entropy'?" in " ".join(result.output.split())


def test_a_missing_data_folder_fails_before_ray_starts(tmp_path):
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"error: --data {tmp_path / 'nowhere'}: no such folder. Pass a folder of CCC shard streams" in text


def test_a_missing_image_folder_says_what_to_pass(tmp_path):
    (tmp_path / "file.txt").write_text("")
    result = runner.invoke(app, ["run", "--source", "imagefolder", "--data", str(tmp_path / "file.txt")])
    assert result.exit_code == 2
    assert "not a folder. Pass a folder of class sub-folders of images" in " ".join(result.output.split())


def test_a_missing_weights_file_says_what_to_pass(tmp_path):
    result = runner.invoke(app, ["run", "--weights", str(tmp_path / "w.pt")])
    assert result.exit_code == 2
    assert f"model.weights {tmp_path / 'w.pt'}: no such file. Pass --weights FILE" in " ".join(result.output.split())


def test_a_resume_checks_the_data_folder_again(tmp_path):
    folder = tmp_path / "images"
    write_glyph_folder(folder, images=20)
    assert runner.invoke(app, local(tmp_path, "--source", "imagefolder", "--data", str(folder),
                                    "--max-images", "10")).exit_code == 0
    run_dir = next((tmp_path / "runs").iterdir())
    folder.rename(tmp_path / "moved")
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--no-ray"])
    assert result.exit_code == 2 and f"--data {folder}: no such folder" in " ".join(result.output.split())
