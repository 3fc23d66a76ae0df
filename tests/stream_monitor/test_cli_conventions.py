"""The command line's conventions: --version, --json, plain output off a terminal, completion, exit codes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from stream_monitor import __version__
from stream_monitor.cli import EXIT_CODES, app

runner = CliRunner()
ROOT = str(Path(__file__).resolve().parents[2])  # this checkout, not an installed copy


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])), **extra}


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"stream-monitor {__version__}"


def test_help_documents_every_exit_code():
    text = " ".join(runner.invoke(app, ["--help"]).output.split())
    for code in EXIT_CODES:
        assert f"{code} " in text.split("Exit codes:")[1]
    assert "130 stopped by Ctrl-C or SIGTERM" in text


def test_list_json_is_one_document_on_stdout():
    for what in ("adapters", "detectors", "streams", "corruptions", "sources", "estimators", "models"):
        result = runner.invoke(app, ["list", what, "--json"])
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["what"] == what and all("name" in item for item in document["items"])
    adapters = json.loads(runner.invoke(app, ["list", "adapters", "--json"]).stdout)["items"]
    assert {"name": "tent"} .items() <= next(a for a in adapters if a["name"] == "tent").items()
    assert len(json.loads(runner.invoke(app, ["list", "streams", "--json"]).stdout)["items"]) == 27


def test_run_json_and_eval_json_parse_and_keep_logs_off_stdout(tmp_path):
    args = ["run", "--no-ray", "--no-dashboard", "--out", str(tmp_path / "runs"), "--set", "probe.size=64",
            "--set", "probe.every=2", "--max-images", "384", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the whole of stdout is the one document
    assert document["status"] == "finished" and document["summary"]["images"] == 384
    assert document["adapter"] == "rdumb" and Path(document["run_dir"]).is_dir()
    assert "run directory" in result.stderr and "probe step 2" in result.stderr
    evaluated = runner.invoke(app, ["eval", document["run_dir"], "--window", "128", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.stdout)
    assert {"estimators", "warnings", "per_detector"} <= set(scores)
    assert all({"estimator", "target", "mae"} <= set(s) for s in scores["estimators"]) and scores["estimators"]


def test_off_a_terminal_lines_are_not_wrapped_at_80_columns(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "runs"
    result = runner.invoke(app, ["run", "--no-ray", "--out", str(deep), "--set", "probe.enabled=false",
                                 "--max-images", "64"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "run directory" in line and "Summary" not in line)
    assert str(deep) in line and len(line) > 120  # one line, at full length
    assert "\x1b[" not in result.stdout  # no live display, no cursor control


def test_shell_completion_completes_commands_and_options():
    # typer detects the shell from the parent process: run under bash (`; true` keeps bash from exec'ing python)
    script = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m stream_monitor --show-completion; true"],
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert "_STREAM_MONITOR_COMPLETE=complete_bash" in script.stdout, script.stderr
    # what that script asks the program when Tab is pressed after `stream-monitor li`
    done = subprocess.run([sys.executable, "-m", "stream_monitor"], capture_output=True, text=True, timeout=120,
                          env=_env(_STREAM_MONITOR_COMPLETE="complete_bash", COMP_WORDS="stream-monitor li",
                                   COMP_CWORD="1"))
    assert done.stdout.split() == ["list"]
    options = subprocess.run([sys.executable, "-m", "stream_monitor"], capture_output=True, text=True, timeout=120,
                             env=_env(_STREAM_MONITOR_COMPLETE="complete_bash",
                                      COMP_WORDS="stream-monitor run --class", COMP_CWORD="2"))
    assert options.stdout.split() == ["--class-map"]
