"""The run loop in-process (no Ray): schedule, rows, label isolation, resume exactness, failures, NaN.

The runs read the golden run's calibration (tests/stream_monitor/golden/calibration.json, made by
the tests' own make_golden.py) for the frozen model's feed, never the shipped files: a new shipped
calibration must not change what these tests see."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stream_monitor.calibration import Calibration
from stream_monitor.config import ConfigError, load_config
from stream_monitor.estimation.detectors import FUSED
from stream_monitor.estimation.pipeline import HEADLINE_ORDER
from stream_monitor.estimation.window import scale
from stream_monitor.metrics.sink import INFLIGHT, read_table
from stream_monitor.runtime import runner, start
from stream_monitor.runtime.checkpoint import PREVIOUS, load_checkpoint
from stream_monitor.runtime.local import LocalExecutor
from stream_monitor.runtime.loop import RunLoop
from stream_monitor.runtime.messages import Images, Truth
from stream_monitor.runtime.runner import RunError, prepare_resume, run
from stream_monitor.runtime.workers import AdapterWorker
from stream_monitor.schedule import ProbeSchedule

from .golden.make_golden import CALIBRATION

BATCH, STEPS, CYCLE, EVERY = 32, 40, 15, 5
N = BATCH * STEPS
# flips at every snapshot (the default counts them at a cycle's last one only: test_flips_by_default...)
BASE = ["runtime.use_ray=false", "adapter.name=tent", f"probe.every={EVERY}", f"probe.cycle={CYCLE}",
        f"probe.flips_every={EVERY}", "probe.size=64", "runtime.checkpoint_every=10", "runtime.threads=1", f"source.batch_size={BATCH}",
        f"estimation.frozen_calibration={CALIBRATION}"]
TIMING = ["wall_time", "step_ms", "probe_ms", "time", "run_id"]  # differ between two runs of one stream
RUN_EVENTS = ("start", "resume", "stop", "error", "repair")  # the invocations' own; the rest follow the steps


def config(max_images: int = N, *extra: str):
    return load_config(None, [*BASE, f"runtime.max_images={max_images}", *extra])


def rows(run_dir, table: str) -> list[dict]:
    data = read_table(run_dir, table)
    return data.drop_columns([c for c in TIMING if c in data.column_names]).to_pylist()


def loop_events(run_dir, ignore: tuple[str, ...] = ()) -> list[tuple]:
    return [(e["step"], e["kind"], e["origin"], e["message"], e["value"]) for e in rows(run_dir, "events")
            if e["kind"] not in RUN_EVENTS + ignore]


def assert_same_run(run_dir, reference, ignore: tuple[str, ...] = ()) -> None:
    assert rows(run_dir, "steps") == rows(reference, "steps")
    assert rows(run_dir, "probes") == rows(reference, "probes")
    assert rows(run_dir, "estimates") == rows(reference, "estimates")  # both feeds' estimators resumed
    assert loop_events(run_dir, ignore) == loop_events(reference, ignore)


class Spy:
    """A worker whose calls are logged with their (resolved) arguments and results."""

    def __init__(self, name: str, worker, log: list) -> None:
        self._name, self._worker, self._log = name, worker, log

    def __getattr__(self, method: str):
        target = getattr(self._worker, method)

        def call(*args):
            out = target(*args)
            self._log.append((self._name, method, args, out))
            return out

        return call


class RecordingExecutor(LocalExecutor):
    def __init__(self, workers: dict) -> None:
        self.log: list = []
        super().__init__({name: Spy(name, w, self.log) for name, w in workers.items()})
        RecordingExecutor.last = self


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run of 40 steps, every call to the workers recorded."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(start, "LocalExecutor", RecordingExecutor)
        outcome = run(config(), run_dir)
    return outcome, run_dir, RecordingExecutor.last.log


# ---- schedule ------------------------------------------------------------------------------------
def schedule(*overrides: str, reset_every: int | None = None) -> ProbeSchedule:
    return ProbeSchedule.of(load_config(None, list(overrides)), reset_every)


def test_probe_schedule_of_the_paper_cycle():
    paper = schedule("probe.cycle=1000", "probe.every=50")
    due = [s for s in range(3001) if paper.probe_due(s)]
    assert due[:20] == [*range(50, 1000, 50), 990]
    assert due == [c + k for c in (0, 1000, 2000) for k in [*range(50, 1000, 50), 990]]
    assert not any(paper.probe_due(s) for s in (0, 1000, 2000, 3000))
    assert [s for s in range(3001) if paper.cycle_due(s)] == [0, 1000, 2000, 3000]


def test_cycle_defaults_to_the_reset_period_and_probes_can_be_off():
    every_200 = schedule("adapter.reset_every=200", "probe.every=50")
    assert [s for s in range(1, 201) if every_200.probe_due(s)] == [50, 100, 150, 190]
    assert schedule("probe.every=50", reset_every=200) == every_200  # the adapter's own period (RDumb's)
    assert schedule().cycle == 1000
    off = schedule("probe.enabled=false")
    assert not any(off.probe_due(s) or off.cycle_due(s) for s in range(2001))


def test_flips_are_counted_at_a_cycles_last_snapshot_unless_flips_every_says_more():
    paper = schedule("probe.cycle=1000", "probe.every=100")
    assert [s for s in range(1, 2001) if paper.flips_due(s)] == [990, 1990]  # Entropy Enigma's 990 of 1,000
    often = schedule("probe.cycle=1000", "probe.every=100", "probe.flips_every=500")
    assert [s for s in range(1, 1001) if often.flips_due(s)] == [500, 990]
    every = schedule("probe.cycle=1000", "probe.every=100", "probe.flips_every=100")
    assert [s for s in range(1, 1001) if every.flips_due(s)] == [s for s in range(1, 1001) if every.probe_due(s)]
    for bad in ("probe.flips_every=150", "probe.flips_every=0"):
        with pytest.raises(ConfigError, match="multiple of probe.every"):
            load_config(None, ["probe.every=100", bad])


def test_flips_by_default_only_at_the_last_snapshot_of_a_cycle_the_others_estimate(tmp_path):
    run_dir = tmp_path / "run"
    outcome = run(load_config(None, [b for b in BASE if not b.startswith("probe.flips_every")]
                              + [f"runtime.max_images={N}"]), run_dir)
    assert outcome.status == "finished", outcome.error
    probes = read_table(run_dir, "probes").to_pylist()
    assert [p["step"] for p in probes] == [5, 10, 20, 25, 35, 40]
    counted = [p["step"] for p in probes if p["flips"] is not None]
    assert counted == [10, 25, 40]  # cycle step 10 of 15: the last snapshot of each cycle
    for p in probes:
        assert p["cycle"] == p["step"] // CYCLE and p["cycle_step"] == p["step"] % CYCLE
        assert 0 <= p["est_online_acc"] <= 100  # every snapshot step carries the window's estimates
        if p["flips"] is None:
            assert p["weighted_flips"] is None and p["probe_size"] is None and p["probe_ms"] is None
    # the flips-based estimates exist only where flips were counted
    flips_steps = {r["step"] for r in read_table(run_dir, "estimates").to_pylist()
                   if r["estimator"] in ("weighted-flips", "spread-flips")}
    assert flips_steps <= set(counted)


# ---- one uninterrupted run -----------------------------------------------------------------------
def test_steps_cover_the_stream_contiguously(baseline):
    outcome, run_dir, _ = baseline
    assert outcome.status == "finished" and outcome.error is None and outcome.images == N
    steps = read_table(run_dir, "steps").to_pylist()
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [(r["start"], r["stop"]) for r in steps] == [(k * BATCH, (k + 1) * BATCH) for k in range(STEPS)]
    assert all(r["images"] == BATCH and r["skipped"] == 0 for r in steps)
    assert all(r["correct"] is not None and 0 <= r["correct"] <= BATCH for r in steps)
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in steps)
    scored = [r["step"] for r in steps if r["frozen_seen"] is not None]
    assert scored == list(range(1, STEPS + 1, 8))  # evaluator.frozen_every = 8
    # the frozen model's top-class share, label-free, on the same batches (the top-class-share baseline)
    assert [r["step"] for r in steps if r["frozen_top_class_share"] is not None] == scored
    assert all(1 / BATCH <= r["frozen_top_class_share"] <= 1 for r in steps if r["step"] in scored)
    # ASR's flip rate against the frozen model: on the scored batches only, a share of the batch
    assert [r["step"] for r in steps if r["frozen_flip_rate"] is not None] == scored
    assert all(0 <= r["frozen_flip_rate"] <= 1 for r in steps if r["step"] in scored)


def test_probe_rows_follow_the_schedule(baseline):
    _, run_dir, _ = baseline
    probes = read_table(run_dir, "probes").to_pylist()
    expected = [s for s in range(1, STEPS + 1) if s % CYCLE and s % CYCLE % EVERY == 0]
    assert [p["step"] for p in probes] == expected == [5, 10, 20, 25, 35, 40]
    for p in probes:
        cycle = p["step"] // CYCLE
        assert (p["cycle"], p["cycle_step"], p["probe_size"]) == (cycle, p["step"] % CYCLE, 64)
        assert p["position"] == p["window_stop"] == p["step"] * BATCH
        assert p["window_start"] == cycle * CYCLE * BATCH
        assert 0 <= p["flips"] <= p["probe_size"] and 0 <= p["weighted_flips"] <= p["flips"]
        assert 0 <= p["est_online_acc"] <= 100 and 0 <= p["true_online_acc"] <= 100


def frozen_stats():
    return Calibration.load(CALIBRATION).window_stats(frozen=True)


def test_probe_rows_headline_the_first_estimator_of_the_order_with_a_value(baseline):
    _, run_dir, _ = baseline
    estimates = read_table(run_dir, "estimates").to_pylist()
    for p in read_table(run_dir, "probes").to_pylist():
        found = {(e["estimator"], e["target"]): e["value"] for e in estimates
                 if e["step"] == p["step"] and e["value"] is not None}
        assert len(found) == len({(e["estimator"], e["feed"]) for e in estimates if e["step"] == p["step"]
                                  and e["value"] is not None})  # an estimator's target tells its feed
        for target, order in HEADLINE_ORDER.items():
            first = next(name for name in order if (name, target) in found)
            assert p[f"est_{target}_method"] == first
            assert p[f"est_{target}_acc"] == pytest.approx(found[first, target])
    # the frozen-feed calibration gives the frozen model's Sentinel and nuclear norm; the served feed,
    # with no adapter calibration, the nuclear norm on the frozen model's line: both anchor
    probes = read_table(run_dir, "probes").to_pylist()
    assert json.loads((run_dir / "run.json").read_text())["adapter_calibrated"] is False
    assert {p["est_source_method"] for p in probes} == {"sentinel"}
    assert {p["est_online_method"] for p in probes} == {"anchored-nuclear-norm"}
    # ... through the frozen model's line, which the served nuclear norm shares here
    for p in probes:
        found = {(e["estimator"], e["feed"]): e for e in estimates if e["step"] == p["step"]}
        gap = found["nuclear-norm", "served"]["value"] - found["nuclear-norm", "frozen"]["value"]
        raw = found["nuclear-norm", "served"]["score"] - found["nuclear-norm", "frozen"]["score"]
        assert p["est_online_acc"] == pytest.approx(min(100.0, max(0.0, p["est_source_acc"] + gap)), abs=1e-3)
        assert gap == pytest.approx(raw * frozen_stats().nuclear_fit[0], abs=1e-3)
        assert p["est_online_gap"] == pytest.approx(p["est_online_acc"] - p["est_source_acc"], abs=1e-3)


def test_events_and_checkpoint(baseline):
    _, run_dir, _ = baseline
    events = read_table(run_dir, "events").to_pylist()
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert {"start", "cycle", "checkpoint", "stop"} <= set(kinds) and "error" not in kinds
    assert [e["step"] for e in events if e["kind"] == "cycle"] == [0, 15, 30]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [10, 20, 30, 40]  # each once
    checkpoint = load_checkpoint(run_dir)
    assert (checkpoint.state.step, checkpoint.state.position) == (STEPS, N)
    assert checkpoint.adapter["num_steps"] == STEPS and checkpoint.probe["cycle"] == 2
    assert not list(run_dir.rglob(".part-*.tmp"))


def test_labels_never_reach_adapter_or_probe(baseline):
    _, _, log = baseline
    truths = [o for name, method, _, out in log if name.startswith("stream") and method == "read"
              for o in out if isinstance(o, Truth)]
    labels = [t.labels for t in truths]
    assert len(truths) == STEPS and all(len(x) == BATCH for x in labels)

    def arrays(value):
        assert not isinstance(value, Truth)
        if isinstance(value, np.ndarray):
            yield value
        elif isinstance(value, Images):
            yield from (v for v in vars(value).values() if isinstance(v, np.ndarray))
        elif isinstance(value, dict):
            for v in value.values():
                yield from arrays(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from arrays(v)

    seen = {(name, method) for name, method, _, _ in log}
    assert {("adapter", "step"), ("probe", "add_reference"), ("probe", "evaluate")} <= seen
    passed = [a for name, _, args, _ in log if name in ("adapter", "probe") for a in arrays(args)]
    assert sum(a.dtype == np.uint8 for a in passed) >= STEPS  # the images did arrive
    for a in passed:
        assert not any(a.shape == x.shape and np.array_equal(a, x) for x in labels)


def test_source_target_estimators_read_the_frozen_models_outputs(baseline):
    _, run_dir, log = baseline
    truths = [o for name, method, _, out in log if name.startswith("stream") and method == "read"
              for o in out if isinstance(o, Truth)]
    scored = [t for t in truths if t.frozen_probabilities is not None]
    assert scored and all(np.array_equal(t.frozen_probabilities.argmax(1), t.frozen_predictions) for t in scored)
    estimates = rows(run_dir, "estimates")
    ac = [e for e in estimates if e["estimator"] == "average-confidence" and e["feed"] == "frozen"]
    # no served calibration for tent, so no f: no flips readings (those are (served, source))
    assert ac and {(e["feed"], e["target"]) for e in estimates} == {("served", "online"), ("frozen", "source")}
    # the frozen feed's temperature is the frozen-feed calibration's
    temperature = frozen_stats().temperature
    assert temperature != 1.0
    for e in ac:  # the tempered mean max-softmax of the frozen model on the window
        inside = [t.frozen_probabilities for t in scored if e["window_start"] <= t.start < e["window_stop"]]
        if not inside:
            assert e["value"] is None
            continue
        assert e["value"] == pytest.approx(100 * scale(np.concatenate(inside), temperature).max(1).mean(), abs=1e-3)
    online = {e["step"]: e["value"] for e in estimates if e["estimator"] == "average-confidence" and e["feed"] == "served"}
    assert any(online[e["step"]] != e["value"] for e in ac)  # two feeds, two estimates


# ---- resume --------------------------------------------------------------------------------------
def test_resume_after_a_shorter_run_is_exact(baseline, tmp_path):
    run_dir = tmp_path / "run"
    assert run(config(N // 2), run_dir).status == "finished"
    assert load_checkpoint(run_dir).state.step == STEPS // 2
    outcome = run(prepare_resume(run_dir, [f"runtime.max_images={N}"]), run_dir, resume=True)
    assert outcome.status == "finished" and outcome.images == N // 2
    assert_same_run(run_dir, baseline[1])
    kinds = [e["kind"] for e in read_table(run_dir, "events").to_pylist()]
    assert kinds.count("resume") == 1 and kinds.count("start") == 1


def test_resume_after_a_requested_stop_is_exact(baseline, tmp_path, monkeypatch):
    class StopAfter13(RunLoop):
        def _emit(self, hook, row):
            super()._emit(hook, row)
            if hook == "on_step" and row["step"] == 13:
                self.request_stop()

    monkeypatch.setattr(runner, "RunLoop", StopAfter13)
    run_dir = tmp_path / "run"
    first = run(config(), run_dir)
    assert first.status == "stopped"
    stopped_at = load_checkpoint(run_dir).state.step
    assert 13 <= stopped_at < STEPS and stopped_at == first.state.step  # in-flight steps drained
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(1, stopped_at + 1))
    monkeypatch.setattr(runner, "RunLoop", RunLoop)
    assert run(prepare_resume(run_dir), run_dir, resume=True).status == "finished"
    assert_same_run(run_dir, baseline[1], ignore=("checkpoint",))  # plus one at the stop


@pytest.mark.slow
def test_resume_after_a_crash_drops_rows_past_the_checkpoint(baseline, tmp_path, monkeypatch):
    """A driver that died after step 20 with its last checkpoint at step 10: closed parts hold rows
    of steps 11..20 and a part was being written."""
    save = runner.save_checkpoint
    monkeypatch.setattr(runner, "save_checkpoint",
                        lambda run_dir, state, *a: save(run_dir, state, *a) if state.step <= 10 else None)
    run_dir = tmp_path / "run"
    run(config(N // 2), run_dir)
    assert load_checkpoint(run_dir).state.step == 10
    assert max(read_table(run_dir, "steps")["step"].to_pylist()) == 20
    assert max(read_table(run_dir, "probes")["step"].to_pylist()) == 20
    for table in ("steps", "probes", "events"):
        (run_dir / INFLIGHT / table / ".part-00099.parquet.tmp").write_bytes(b"PAR1 half a part")
        (run_dir / table / ".part-00098.parquet.tmp").write_bytes(b"PAR1 an older version's open part")
    monkeypatch.setattr(runner, "save_checkpoint", save)
    assert run(prepare_resume(run_dir, [f"runtime.max_images={N}"]), run_dir, resume=True).status == "finished"
    assert not list(run_dir.rglob(".part-*.tmp"))
    assert_same_run(run_dir, baseline[1])


@pytest.mark.slow
def test_a_failing_worker_fails_the_run_which_resumes(baseline, tmp_path, monkeypatch):
    step, calls = AdapterWorker.step, itertools.count(1)

    def flaky(self, images):
        if next(calls) == 34:
            raise RuntimeError("device lost")
        return step(self, images)

    monkeypatch.setattr(AdapterWorker, "step", flaky)
    run_dir = tmp_path / "run"
    outcome = run(config(), run_dir)
    assert outcome.status == "failed" and "adapter failed: RuntimeError: device lost" in outcome.error
    assert outcome.state.step == 33
    events = read_table(run_dir, "events").to_pylist()
    assert events[-1]["kind"] == "error" and "device lost" in events[-1]["message"]
    assert not list(run_dir.rglob(".part-*.tmp"))  # the sink closed its parts
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(1, 34))
    assert load_checkpoint(run_dir).state.step == 30  # a checkpoint at a cycle start
    monkeypatch.setattr(AdapterWorker, "step", step)
    assert run(prepare_resume(run_dir), run_dir, resume=True).status == "finished"
    assert_same_run(run_dir, baseline[1])


# ---- damage, concurrency and SIGTERM -------------------------------------------------------------
@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """A finished run of the first 20 steps: checkpoints at 10 (previous) and 20, parts of steps 1-10 and 11-20."""
    run_dir = tmp_path_factory.mktemp("half") / "run"
    assert run(config(N // 2), run_dir).status == "finished"
    return run_dir


def copy_of(half_run, tmp_path):
    return shutil.copytree(half_run, tmp_path / "run")


def flip(path, size: int = 4096, at: int | None = None) -> None:
    """Flip `size` bytes at `at` (default: the middle) of a file, as a failing disk or a bad copy would."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - size // 2) if at is None else at
    for k in range(start, min(len(data), start + size)):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def resume(run_dir, messages: list[str], max_images: int = N):
    return run(prepare_resume(run_dir, [f"runtime.max_images={max_images}"]), run_dir, resume=True,
               log=messages.append)


def events_of(run_dir, kind: str) -> list[dict]:
    return [e for e in read_table(run_dir, "events").to_pylist() if e["kind"] == kind]


def test_a_damaged_latest_checkpoint_resumes_from_the_previous(baseline, half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    flip(run_dir / "checkpoint.pt")
    messages: list[str] = []
    assert resume(run_dir, messages).status == "finished"
    said = "\n".join(messages)
    assert "resume: checkpoint checkpoint.pt cannot be used (sha256 mismatch: the file is damaged); moved to " \
           "quarantine/checkpoint.pt" in said
    assert "resuming from the previous checkpoint (checkpoint.previous.pt, step 10); the rows after it are " \
           "dropped and written again" in said
    repairs = [e["message"] for e in events_of(run_dir, "repair")]
    assert len(repairs) == 2 and "sha256 mismatch" in repairs[0] and "step 10" in repairs[1]
    assert all(e["step"] == 10 for e in events_of(run_dir, "repair"))
    assert (run_dir / "quarantine" / "checkpoint.pt").is_file()
    assert_same_run(run_dir, baseline[1])  # steps 11-20 computed again: nothing lost
    assert load_checkpoint(run_dir).state.step == STEPS


def test_both_checkpoints_damaged_is_a_clear_error(half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    flip(run_dir / "checkpoint.pt")
    flip(run_dir / PREVIOUS)
    with pytest.raises(RunError, match=r"No checkpoint of .*run can be used \(checkpoint.pt: sha256 mismatch: the "
                       r"file is damaged; checkpoint.previous.pt: sha256 mismatch: the file is damaged\), so the run "
                       r"cannot resume. Start a new run, or restore checkpoint.pt from a backup"):
        resume(run_dir, [])
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(1, 21))  # nothing touched


def test_a_damaged_part_after_the_previous_checkpoint_is_written_again(baseline, half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    flip(run_dir / "steps" / "part-00001.parquet", 64, at=16)  # steps 11-20; the footer at the end is intact
    messages: list[str] = []
    assert resume(run_dir, messages).status == "finished"
    said = "\n".join(messages)
    assert re.search(r"resume: steps/part-00001.parquet cannot be read \(unreadable \(.*\)\); moved to "
                     r"quarantine/steps-part-00001.parquet. Its rows \(steps 11 to 20\) follow the checkpoint at "
                     r"step 10 and are written again", said), said
    assert "checkpoint checkpoint.pt (step 20) set aside to quarantine/checkpoint.pt" in said
    assert not events_of(run_dir, "error") and len(events_of(run_dir, "repair")) == 3
    assert_same_run(run_dir, baseline[1])


def test_a_lost_part_is_reported_with_its_rows(half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    part = run_dir / "steps" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])  # steps 1-10, footer lost; no checkpoint precedes them
    messages: list[str] = []
    assert resume(run_dir, messages).status == "finished"
    loss = r"steps/part-00000.parquet cannot be read \(unreadable \(.*\)\); moved to quarantine/steps-part-00000" \
           r".parquet. 10 rows of steps \(steps 1 to 10\) are lost: no checkpoint precedes them, so the tables " \
           r"and the summary miss them; start a new run to have them"
    assert re.search("resume: " + loss, "\n".join(messages))
    errors = events_of(run_dir, "error")
    assert len(errors) == 1 and re.fullmatch(loss, errors[0]["message"]) and errors[0]["value"] == 10
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(11, STEPS + 1))
    assert (run_dir / "quarantine" / "steps-part-00000.parquet").stat().st_size == 100


def test_a_second_run_of_a_directory_is_refused_while_the_first_holds_it(half_run, tmp_path, monkeypatch):
    run_dir = copy_of(half_run, tmp_path)
    refused: list[str] = []

    class ResumeAgainAt25(RunLoop):
        def _emit(self, hook, row):
            super()._emit(hook, row)
            if hook == "on_step" and row["step"] == 25:
                with pytest.raises(RunError) as error:
                    resume(run_dir, [])
                refused.append(str(error.value))

    monkeypatch.setattr(runner, "RunLoop", ResumeAgainAt25)
    assert resume(run_dir, []).status == "finished"
    assert len(refused) == 1
    assert re.fullmatch(rf"Run directory {re.escape(str(run_dir))} is in use by process {os.getpid()} \(a "
                        rf"`stream-monitor run` or `--resume` of it\). Wait for it to end, or stop it \(Ctrl-C in its "
                        rf"terminal, or `kill {os.getpid()}`: it checkpoints first\), then resume with "
                        rf"`stream-monitor run --resume {re.escape(str(run_dir))}`.", refused[0])
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(1, STEPS + 1))  # no race on the parts
    monkeypatch.setattr(runner, "RunLoop", RunLoop)
    assert resume(run_dir, []).status == "finished"  # the first one ended: the lock is free


def test_the_lock_of_a_process_that_died_does_not_block(half_run, tmp_path):
    run_dir = copy_of(half_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(run_dir / '.lock')!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=rf"is in use by process {holder.pid} .*`kill {holder.pid}`"):
            resume(run_dir, [], N // 2)
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)  # a stale file, and no lock
    assert resume(run_dir, [], N // 2).status == "finished"


def test_sigterm_drains_checkpoints_and_resumes_exactly(baseline, tmp_path):
    from typer.testing import CliRunner

    from stream_monitor.cli import app

    out = tmp_path / "runs"
    args = [f"--set={o}" for o in BASE] + ["--no-dashboard", f"--max-images={N}", f"--out={out}"]
    root = str(Path(__file__).resolve().parents[2])  # this checkout, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    driver = subprocess.Popen([sys.executable, "-m", "stream_monitor", "run", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/checkpoint.pt")):  # the first checkpoint, at step 10 of 40
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0]
            time.sleep(0.05)
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, output  # stopped, not finished (cli.EXIT_CODES)
    assert "stopping (SIGTERM): finishing the steps in flight and writing a checkpoint" in output
    assert "Summary (stopped)" in output and "Stopped. Resume with: stream-monitor run --resume" in output
    assert "Traceback" not in output
    run_dir = next(out.iterdir())
    stopped_at = load_checkpoint(run_dir).state.step
    assert 10 <= stopped_at < STEPS
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(1, stopped_at + 1))
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--no-dashboard"])
    assert result.exit_code == 0 and "Summary (finished)" in result.output, result.output
    assert_same_run(run_dir, baseline[1], ignore=("checkpoint",))  # plus one at the stop


# ---- a diverging adapter -------------------------------------------------------------------------
def test_nan_loss_does_not_stop_the_loop(tmp_path):
    run_dir = tmp_path / "run"
    outcome = run(config(640, "adapter.lr=1e30"), run_dir)
    assert outcome.status == "finished", outcome.error
    steps = read_table(run_dir, "steps").to_pylist()
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert any(r["loss"] is None for r in steps)  # the loss diverged ...
    for r in steps:  # ... and no NaN reaches a row
        for column in ("loss", "grad_norm", "mean_entropy", "mean_confidence", "marginal_entropy"):
            assert r[column] is None or math.isfinite(r[column])
    probes = read_table(run_dir, "probes").to_pylist()
    assert [p["step"] for p in probes] == [5, 10, 20]
    for p in probes:
        assert math.isfinite(p["weighted_flips"]) and 0 <= p["flips"] <= p["probe_size"]
        assert p["est_online_acc"] is None or math.isfinite(p["est_online_acc"])
    # the first non-finite step is flagged at once: a warning event on that step, no warm-up
    first = next(r["step"] for r in steps if r["diverged"])
    assert all(not r["diverged"] for r in steps if r["step"] < first)
    assert all(r["loss"] is not None for r in steps if r["step"] < first)
    warnings = [e for e in read_table(run_dir, "events").to_pylist() if e["kind"] == "warning"]
    assert warnings[0]["origin"] == "divergence" and warnings[0]["step"] == first
    assert f"diverged at step {first}" in warnings[0]["message"] and warnings[0]["detectors"] == "divergence"
    fused = next(e for e in warnings if e["origin"] == FUSED)  # the warning itself names what fired
    assert fused["step"] == first and fused["detectors"] == "divergence"
    assert fused["message"].startswith("diverged (divergence): divergence: the adapter diverged at step")


def test_one_divergence_resets_once_though_steps_in_flight_diverged_too(tmp_path):
    run_dir = tmp_path / "run"
    assert run(config(640, "adapter.lr=1e30", "estimation.reset_on_warning=true"), run_dir).status == "finished"
    steps = read_table(run_dir, "steps").to_pylist()
    resets = [e["step"] for e in read_table(run_dir, "events").to_pylist()
              if e["kind"] == "reset" and e["origin"] == "driver"]
    first = next(r["step"] for r in steps if r["diverged"])
    assert resets and resets[0] == first
    # each later reset needs a divergence of the reset model, never a stale step of the old one
    assert all(later - earlier > 4 for earlier, later in zip(resets, resets[1:])), resets


def test_reset_on_warning_resets_the_adapter_and_rearms_the_detectors(tmp_path, monkeypatch):
    from stream_monitor.estimation.detectors import CollapseDetector, Verdict
    from stream_monitor.runtime import loop as loop_module

    class FiresAfterEight(CollapseDetector):
        name = "divergence"  # stands in for one of the fused warning's detectors: only those reset

        def reset(self):
            self.seen = 0

        def update_step(self, row):
            self.seen += 1

        def compute(self):
            return Verdict(self.seen >= 8, f"{self.seen} steps since the last reset", float(self.seen))

    monkeypatch.setattr(loop_module, "build_detectors", lambda names, setup: [FiresAfterEight()])
    monkeypatch.setattr(start, "LocalExecutor", RecordingExecutor)
    assert run(config(N, "estimation.reset_on_warning=true"), tmp_path / "run").status == "finished"
    events = rows(tmp_path / "run", "events")
    warned = [e["step"] for e in events if e["kind"] == "warning" and e["origin"] == FUSED]
    assert warned == [e["step"] for e in events if e["kind"] == "warning" and e["origin"] == "divergence"]
    recovered = [e["step"] for e in events if e["kind"] == "reset" and e["origin"] == "driver"]
    # re-armed after each reset, and counting only steps run after it: the two steps already in flight
    # when the warning came ran on the weights that warned, so each warning needs 8 fresh steps
    assert warned == recovered == [8, 18, 28, 38]
    resets = [method for name, method, _, _ in RecordingExecutor.last.log if name == "adapter" and method == "reset"]
    assert len(resets) == len(warned)


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.time, "strftime", lambda fmt: "20261202-063123")
    first, second = runner.new_run_dir(config(), tmp_path), runner.new_run_dir(config(), tmp_path)
    assert first != second and first.is_dir() and second.is_dir() and second.name.endswith("-2")


def test_the_risk_test_reads_the_served_error_proxy_and_replays_as_it_ran(tmp_path):
    """With a calibration of the served feed (the golden run's: its clean error and ATC threshold),
    the step rows carry the error proxy's counts, and on CCC, where the served error is far above
    the clean error, the sequential test certifies it; `eval`'s replay gives the same warning."""
    from stream_monitor.evaluation import replay_warnings, warning_intervals

    from .golden import make_golden

    cfg = load_config(None, [*make_golden.overrides("calibration"), "estimation.detectors=risk-test",
                             "estimation.warning=risk-test"])
    assert run(cfg, tmp_path / "run").status == "finished"
    steps = read_table(tmp_path / "run", "steps").to_pylist()
    assert all(0 <= r["proxy_flagged"] <= r["proxy_seen"] == r["images"] for r in steps)
    warnings = [e for e in rows(tmp_path / "run", "events") if e["kind"] == "warning"]
    assert warnings and warnings[0]["origin"] == "risk-test" and "false-alarm budget delta 0.05" in warnings[0]["message"]
    for event in warnings:  # the detector's and the fused warning's events carry the test's bounds and budget
        assert event["delta"] == 0.05 and event["lower_bound"] > event["upper_bound"] > 0
        assert event["detectors"] == "risk-test"
    assert [e["origin"] for e in warnings[:2]] == ["risk-test", FUSED]
    assert replay_warnings(tmp_path / "run", ["risk-test"])["risk-test"] == warning_intervals(tmp_path / "run")


@pytest.mark.slow
def test_a_window_outside_the_support_is_flagged_falls_back_and_writes_one_event(tmp_path):
    """A source rule whose support no real window reaches (every feature near 1,000): every probe
    window is outside, its headline is the rule's outside choice with an interval, and one
    `support` event says so when the first window leaves the support."""
    from stream_monitor.estimation.headline import Choice, HeadlineRule
    from stream_monitor.estimation.readings import Target
    from stream_monitor.estimation.support import SUPPORT_FEATURES, Support

    far = Support(low=(1000.0,) * len(SUPPORT_FEATURES), high=(1001.0,) * len(SUPPORT_FEATURES),
                  scale=(1.0,) * len(SUPPORT_FEATURES))
    rule = HeadlineRule(Target.SOURCE, inside=(Choice("sentinel", 2.0, -5.0, 5.0, 50),),
                        outside=(Choice("average-confidence", 10.0, -30.0, 5.0, 50),), support=far)
    calibration = Calibration.load(CALIBRATION)
    calibration.rules = {"source": rule.to_dict()}
    path = calibration.save(tmp_path / "far.json")
    run_dir = tmp_path / "run"
    outcome = run(load_config(None, [*BASE, "runtime.max_images=640", f"estimation.frozen_calibration={path}"]),
                  run_dir)
    assert outcome.status == "finished", outcome.error
    probes = [p for p in read_table(run_dir, "probes").to_pylist() if p["est_source_acc"] is not None]
    assert probes and all(p["est_source_out_of_support"] for p in probes)
    assert {p["est_source_method"] for p in probes} == {"average-confidence"}
    assert all(p["est_source_lo"] < p["est_source_acc"] <= p["est_source_hi"] or p["est_source_hi"] == 100.0
               for p in probes)
    support = [e for e in read_table(run_dir, "events").to_pylist() if e["kind"] == "support"]
    assert len(support) == 1 and "outside the calibration's support" in support[0]["message"]
