"""The command line, through typer's runner (in-process)."""

from typer.testing import CliRunner

from stream_monitor.cli import app

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
    assert result.exit_code == 2 and "Valid sources: ccc, imagefolder" in result.output


def test_imagefolder_needs_data():
    result = runner.invoke(app, ["run", "--source", "imagefolder"])
    assert result.exit_code == 2 and "needs --data DIR" in result.output


def test_short_run_on_the_embedded_default():
    result = runner.invoke(app, ["run", "--max-images", "192", "--window", "64"])
    assert result.exit_code == 0, result.output
    assert "embedded/baseline_20_transition+speed_1000_seed_43" in result.output
    assert "accuracy" in result.output and "img/s" in result.output
    assert "embedded_resnet20@" in result.output and "Summary" in result.output
    assert result.output.count("acc ") == 3


def test_unknown_adapter_suggests():
    result = runner.invoke(app, ["run", "--adapter", "tnet"])
    assert result.exit_code == 2 and "Did you mean 'tent'" in result.output


def test_short_tent_run_serves_adapted_predictions():
    result = runner.invoke(app, ["run", "--adapter", "tent", "--max-images", "128", "--window", "64", "--lr", "0.001"])
    assert result.exit_code == 0, result.output
    assert "tent" in result.output and result.output.count("acc ") == 2


def test_short_eata_run_estimates_its_fisher_from_the_stream():
    result = runner.invoke(app, ["run", "--adapter", "eata", "--max-images", "128", "--window", "64"])
    assert result.exit_code == 0, result.output
    assert "eata" in result.output
