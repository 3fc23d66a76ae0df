"""eval: estimator MAE per target and warnings against labelled collapse events, on hand-made tables."""

import json
from dataclasses import asdict
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_monitor.config import dump_config, load_config
from stream_monitor.estimation.context import EstimationContext
from stream_monitor.evaluation import collapse_events, evaluate, score_warnings
from stream_monitor.metrics.schema import ESTIMATE_SCHEMA, EVENT_SCHEMA, PROBE_SCHEMA, STEP_SCHEMA, empty_row
from stream_monitor.rundir import CONTEXT_FILE, FORMAT, RunDirectoryError
from stream_monitor.runtime.observer import RunInfo


def write(run_dir, name, schema, rows):
    """One Parquet part of table `name`, in a run directory with the config, run.json and the
    (empty) estimation context a run writes first."""
    if not (run_dir / "config.yaml").exists():
        dump_config(load_config(None, []), run_dir / "config.yaml")
        info = RunInfo("r", str(run_dir), "stream", "glyphs", "embedded_resnet20 c95a89135c2e", "rdumb",
                       num_classes=10, adapter_calibrated=False)
        (run_dir / "run.json").write_text(json.dumps({"format": FORMAT, **asdict(info)}))
        (run_dir / CONTEXT_FILE).write_text(json.dumps(EstimationContext().to_dict()))
    (run_dir / name).mkdir(parents=True, exist_ok=True)
    # run_id and time are what the sink adds to every row
    full = [{**empty_row(schema), **r, "run_id": "r",
             "time": datetime.fromtimestamp(r.get("wall_time", 0.0), tz=timezone.utc)} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), run_dir / name / "part-00000.parquet")


def steps(online, source, batch=1000):
    """One step of `batch` images per entry: online/source accuracy (%) of that batch."""
    return [{"step": k + 1, "start": k * batch, "stop": (k + 1) * batch, "images": batch, "skipped": 0,
             "wall_time": float(k), "correct": int(on * batch / 100), "frozen_correct": int(so * batch / 100),
             "frozen_seen": batch} for k, (on, so) in enumerate(zip(online, source))]


def probe(step, est_s, true_s, est_o, true_o, extrapolated=False):
    return {"step": step, "position": step * 1000, "wall_time": 0.0, "cycle": 0, "cycle_step": step,
            "probe_size": 1000, "flips": 0, "weighted_flips": 0.0, "est_source_acc": est_s,
            "est_source_method": "weighted-flips", "est_extrapolated": extrapolated, "est_online_acc": est_o,
            "est_online_method": "average-confidence", "true_source_acc": true_s, "true_online_acc": true_o}


def estimate(step, estimator, feed, target, value, extrapolated=None):
    return {"step": step, "position": step * 1000, "cycle": 0, "cycle_step": step, "estimator": estimator,
            "feed": feed, "target": target, "value": value, "extrapolated": extrapolated}


def test_mae_bias_and_worst_per_estimator_and_target(tmp_path):
    write(tmp_path, "steps", STEP_SCHEMA, steps([50] * 4, [40] * 4))
    write(tmp_path, "probes", PROBE_SCHEMA, [probe(1, 42, 40, 70, 50), probe(2, 35, 40, 60, 50, True),
                                              probe(3, None, 40, 55, None)])
    write(tmp_path, "estimates", ESTIMATE_SCHEMA, [
        estimate(1, "weighted-flips", "served", "source", 42.0, False),
        estimate(2, "weighted-flips", "served", "source", 35.0, True),
        *(estimate(step, "average-confidence", "served", "online", value)
          for step, value in ((1, 70.0), (2, 60.0), (3, 55.0)))])
    write(tmp_path, "events", EVENT_SCHEMA, [])
    scores = {(s.estimator, s.target): s for s in evaluate(tmp_path)["estimators"]}
    flips = scores["weighted-flips", "source"]
    assert (flips.windows, flips.mae, flips.bias, flips.worst, flips.extrapolated) == (2, 3.5, -1.5, 5.0, 1)
    ac = scores["average-confidence", "online"]
    assert (ac.windows, ac.mae, ac.bias) == (2, 15.0, 15.0)
    # the headline of each window is the first estimator of the order with a value: here the only one
    from dataclasses import replace

    assert scores["headline", "source"] == replace(flips, estimator="headline")
    assert scores["headline", "online"] == replace(ac, estimator="headline")


def test_collapse_events_need_a_sustained_gap(tmp_path):
    # windows of 5 steps x 1,000 images: fine, collapsed, collapsed, fine, collapsed (alone), fine
    online = [40] * 5 + [20] * 10 + [40] * 5 + [20] * 5 + [40] * 5
    write(tmp_path, "steps", STEP_SCHEMA, steps(online, [35] * 30))
    events = collapse_events(tmp_path, window=5000, margin=5.0, sustain=2)
    assert [(e.start, e.stop, e.gap) for e in events] == [(5000, 15000, 15.0)]


def test_warnings_recall_lead_time_and_false_alarms(tmp_path):
    online = [40] * 10 + [20] * 10 + [40] * 30
    write(tmp_path, "steps", STEP_SCHEMA, steps(online, [35] * 50))
    # a warning at step 8 (position 8,000: 2,000 images before the event at 10,000), one far later
    write(tmp_path, "events", EVENT_SCHEMA, [
        {"step": 8, "wall_time": 0.0, "kind": "warning", "origin": "entropy-ema", "message": "m"},
        {"step": 45, "wall_time": 0.0, "kind": "warning", "origin": "top-class-share", "message": "m"}])
    events = collapse_events(tmp_path)
    score = score_warnings(tmp_path, events, horizon=5000)
    assert (score.events, score.detected, score.lead_times, score.false_alarms) == (1, 1, (2000,), 1)
    assert score.recall == 1.0 and score.false_alarms_per_million == pytest.approx(1e6 / 50_000)


def test_a_warning_still_active_from_an_earlier_fire_detects_a_later_event(tmp_path):
    # events at 10,000-20,000 and 40,000-50,000; entropy-ema fires at 9,000 and is never cleared,
    # aetta-drop fires at 30,000 and clears at 31,000
    online = [40] * 10 + [20] * 10 + [40] * 20 + [20] * 10 + [40] * 10
    write(tmp_path, "steps", STEP_SCHEMA, steps(online, [35] * 60))
    write(tmp_path, "events", EVENT_SCHEMA, [
        {"step": 9, "wall_time": 0.0, "kind": "warning", "origin": "entropy-ema", "message": "m"},
        {"step": 30, "wall_time": 0.0, "kind": "warning", "origin": "aetta-drop", "message": "m"},
        {"step": 31, "wall_time": 0.0, "kind": "clear", "origin": "aetta-drop", "message": "m"}])
    events = collapse_events(tmp_path)
    assert [(e.start, e.stop) for e in events] == [(10000, 20000), (40000, 50000)]
    score = score_warnings(tmp_path, events, horizon=5000)
    # the second event: entropy-ema still on (lead capped at the horizon); aetta-drop's fire at 30,000
    # is before 40,000 - 5,000, so it is a false alarm
    assert (score.detected, score.lead_times, score.false_alarms) == (2, (1000, 5000), 1)


def test_a_folder_that_is_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="is not a run directory.*stream-monitor run"):
        evaluate(tmp_path)


def test_replayed_detectors_give_the_live_runs_own_warnings(tmp_path):
    from stream_monitor.config import load_config
    from stream_monitor.evaluation import replay_warnings, warning_intervals
    from stream_monitor.runtime.runner import run

    names = ["entropy-ema", "top-class-share", "marginal-entropy", "online-below-source"]
    cfg = load_config(None, ["adapter.name=tent", "adapter.lr=0.5", "source.batch_size=16", "runtime.max_images=960",
                             "runtime.use_ray=false", "runtime.threads=1", "probe.every=20", "probe.size=64",
                             "dashboard.enabled=false", f"estimation.detectors={','.join(names)}"])
    assert run(cfg, tmp_path / "run").status == "finished"
    own = warning_intervals(tmp_path / "run")
    # Tent at lr 0.5 collapses within the 60 steps: the entropy detectors fire; top-class-share does
    # not (the source model puts as many of these 16-image batches on one class, 50-56%)
    assert len(own) == 2
    replayed = replay_warnings(tmp_path / "run", names)
    assert sorted(i for intervals in replayed.values() for i in intervals) == own
    result = evaluate(tmp_path / "run", detectors=["top-class-share", "flip-rate"])
    assert set(result["per_detector"]) == {"top-class-share", "flip-rate"}
    # replayed as if the frozen model had scored every 16th batch, not every 8th: the agreement
    # check sees half its batches and warns no earlier; a cadence the run's does not divide is refused
    every8 = replay_warnings(tmp_path / "run", ["chance-agreement"])["chance-agreement"]
    assert every8 and replay_warnings(tmp_path / "run", ["chance-agreement"], frozen_every=8)["chance-agreement"] == every8
    every16 = replay_warnings(tmp_path / "run", ["chance-agreement"], frozen_every=16)["chance-agreement"]
    assert every16 != every8 and (not every16 or every16[0][0] > every8[0][0])
    with pytest.raises(ValueError, match="multiple of 8"):
        replay_warnings(tmp_path / "run", ["chance-agreement"], frozen_every=12)


def test_replay_scores_a_detector_the_run_did_not_have(tmp_path):
    write(tmp_path, "steps", STEP_SCHEMA, [{**row, "top_class_share": 0.2 if k < 60 else 0.95}
                                           for k, row in enumerate(steps([40] * 60 + [10] * 40, [35] * 100))])
    write(tmp_path, "probes", PROBE_SCHEMA, [])
    write(tmp_path, "events", EVENT_SCHEMA, [])  # the run itself warned of nothing
    result = evaluate(tmp_path, detectors=["top-class-share"])
    assert result["warnings"].events == 1 and result["warnings"].detected == 1
    assert result["per_detector"]["top-class-share"].lead_times[0] < 0  # the EMA needs a few steps
    assert evaluate(tmp_path)["warnings"].detected == 0
