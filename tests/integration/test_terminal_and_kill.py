"""`stream-monitor run` as a user starts it: in a real pseudo-terminal, and killed with SIGKILL."""

import os
import pty
import random
import select
import signal
import subprocess
import sys
import time

import pytest

from stream_monitor.config import load_config
from stream_monitor.metrics.schema import RUN_COLUMNS
from stream_monitor.metrics.sink import read_table
from stream_monitor.runtime.runner import run

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-m", "stream_monitor", "run", "--no-ray"]
SMALL = ["--set", "probe.every=4", "--set", "probe.size=128", "--set", "runtime.checkpoint_every=8",
         "--set", "runtime.threads=1", "--set", "source.batch_size=32"]
# when a row was written and by which run directory: never equal between two runs of one stream
TIMING = {"wall_time", "step_ms", "probe_ms", *RUN_COLUMNS}


def env():
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "110", "LINES": "40", "TERM": "xterm-256color"}


def test_the_dashboard_draws_in_a_pseudo_terminal(tmp_path):
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal side of the pty
        os.execvpe(CLI[0], CLI + ["--max-images", "2560", "--out", str(tmp_path), *SMALL], env())
    screen = b""
    deadline = time.time() + 240
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    _, status = os.waitpid(pid, 0)
    text = screen.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "\x1b[" in text  # cursor control: the live display redraws in place
    for expected in ("embedded glyphs", "baseline_20_transition+speed_1000_seed_43", "rdumb", "no collapse warnings",
                     "img/s", "Summary (finished)"):
        assert expected in text, expected
    assert any(0x2800 <= ord(c) <= 0x28FF for c in text)  # the braille accuracy chart


ARGS = ["--max-images", "3840", "--no-dashboard", *SMALL]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert subprocess.run(CLI + ARGS + ["--out", str(out)], env=env(), capture_output=True).returncode == 0
    return next(out.iterdir())


def start_and_signal(out, signum):
    """Start a run, send `signum` anywhere after its first checkpoint, return (process, run_dir)."""
    child = subprocess.Popen(CLI + ARGS + ["--out", str(out)], env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(out.glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 2.0))
    child.send_signal(signum)
    output, _ = child.communicate(timeout=120)
    return child, next(out.iterdir()), output


def assert_resumes_to(run_dir, reference_dir):
    resumed = run(load_config(run_dir / "config.yaml", ["dashboard.enabled=False"]), run_dir, resume=True)
    assert resumed.status == "finished", resumed.error
    for table in ("steps", "probes"):
        got, want = read_table(run_dir, table), read_table(reference_dir, table)
        keep = [c for c in want.column_names if c not in TIMING]
        assert got.select(keep).to_pylist() == want.select(keep).to_pylist(), table
    kinds = [e["kind"] for e in read_table(run_dir, "events").to_pylist()]
    assert "resume" in kinds and kinds[-1] == "stop"


def test_resume_after_kill_9_gives_the_rows_of_an_uninterrupted_run(tmp_path, reference_dir):
    child, run_dir, _ = start_and_signal(tmp_path, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    assert read_table(run_dir, "steps").num_rows < 120  # it really was killed before the end
    assert_resumes_to(run_dir, reference_dir)


def test_ctrl_c_stops_cleanly_with_a_checkpoint_and_resumes_exactly(tmp_path, reference_dir):
    child, run_dir, output = start_and_signal(tmp_path, signal.SIGINT)
    assert child.returncode == 130, output  # stopped, not finished (cli.EXIT_CODES)
    assert "Stopped. Resume with: stream-monitor run --resume" in " ".join(output.split())
    assert not list(run_dir.rglob(".part-*.tmp"))  # every part closed
    steps = read_table(run_dir, "steps")
    assert 0 < steps.num_rows < 120
    from stream_monitor.runtime.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir).state.step == steps.column("step").to_pylist()[-1]  # nothing lost
    assert_resumes_to(run_dir, reference_dir)
