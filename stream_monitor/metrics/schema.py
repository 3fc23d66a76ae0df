"""Explicit Arrow schemas of a run's three tables (style_anchors.md 4.8): never inferred.

- `steps`: one row per adapter step (what was served, cheap adapter statistics, and the ground
  truth columns when the stream has labels; those are null otherwise).
- `probes`: one row per probe evaluation of a weight snapshot (Entropy Enigma flips) with the
  label-free estimates beside the ground truth of the same window.
- `events`: starts, resumes, resets, probe cycles, skipped images, collapse warnings, errors,
  windows leaving or re-entering the calibration's support (`support`), and repairs (a resume set a damaged checkpoint or part aside and writes its rows again; rows
  lost for good are an `error` whose value is the number of rows).
- `estimates`: every label-free estimator's value at every probe, long format (one row per
  estimator), on the probe row's window; the truth to judge it by is in `probes`.

Rows travel between the run loop, the Parquet sink, the dashboard and the report as plain dicts
keyed by these column names; `empty_row(schema)` gives a dict with every column present.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 8  # 8: a probe row's flips are null where its snapshot counted none (probe.flips_every); 7: the headlines' 90% intervals and out-of-support flags (probes), an event's detectors and the risk test's bounds (events, steps); 5: run_id and UTC time on every table, units in field metadata; 4: an estimate's feed, ...

#: Columns the sink fills on every row (the loop leaves them null), so a table read on its own, or
#: several runs' tables read as one dataset, say which run a row is from and when, in a real timestamp.
RUN_COLUMNS = ("run_id", "time")


def _unit(unit: str) -> dict[str, str]:
    """Field metadata naming a numeric column's unit, for readers that cannot see this module's comments."""
    return {"unit": unit}


_PCT, _PP, _IMG, _S, _MS, _RATIO = (_unit(u) for u in ("percent", "percentage points", "images", "seconds", "ms",
                                                          "ratio"))


def _run_fields() -> list[pa.Field]:
    return [pa.field("run_id", pa.string(), nullable=False),   # the run directory's name (RunInfo.run_id)
            # wall_time as a timestamp (estimates: when the sink took the row); readers get a datetime, not a float
            pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False)]


STEP_SCHEMA = pa.schema([
    pa.field("step", pa.int64(), nullable=False),           # adapter steps done after this one (1, 2, ...), counted over resets
    pa.field("start", pa.int64(), nullable=False),          # first stream position of the batch
    pa.field("stop", pa.int64(), nullable=False),           # one past the last position
    pa.field("images", pa.int32(), nullable=False, metadata=_IMG),  # images served (stop - start - skipped)
    pa.field("skipped", pa.int32(), nullable=False, metadata=_IMG),  # unreadable images in [start, stop)
    pa.field("wall_time", pa.float64(), nullable=False, metadata=_S),  # unix seconds when the step result arrived
    pa.field("step_ms", pa.float32(), metadata=_MS),        # adapter time for the step, on its device
    pa.field("mean_entropy", pa.float32()),                 # mean softmax entropy of the served logits
    pa.field("mean_confidence", pa.float32()),              # mean max-softmax of the served logits
    pa.field("marginal_entropy", pa.float32()),             # entropy of the batch's mean prediction
    pa.field("top_class_share", pa.float32()),              # share of the most predicted class
    pa.field("frozen_top_class_share", pa.float32()),       # the same for the frozen source model (scored batches)
    pa.field("frozen_flip_rate", pa.float32(), metadata=_RATIO),  # served predictions unlike the frozen model's
    pa.field("num_used", pa.int32(), metadata=_IMG),        # samples that entered the loss
    pa.field("loss", pa.float32()),
    pa.field("grad_norm", pa.float32()),
    pa.field("update_skipped", pa.bool_()),                 # no weight update this step
    pa.field("reset", pa.bool_()),                          # the adapter was reset after this step
    pa.field("diverged", pa.bool_()),                       # a non-finite loss, gradient norm or served logits
    pa.field("risk_lower", pa.float64()),                   # the risk test's lower bound on the running error (rate)
    pa.field("risk_upper", pa.float64()),                   # its alarm level: clean error's upper bound + tolerance
    pa.field("proxy_flagged", pa.int32(), metadata=_IMG),   # served images the label-free error proxy flags
    pa.field("proxy_seen", pa.int32(), metadata=_IMG),      # served images it read (finite outputs)
    pa.field("aetta_acc", pa.float32(), metadata=_PCT),     # AETTA's smoothed accuracy estimate, on its PDD batches
    pa.field("noise_a", pa.string()),                       # CCC info of the batch's first image
    pa.field("severity_a", pa.float32()),
    pa.field("noise_b", pa.string()),
    pa.field("severity_b", pa.float32()),
    pa.field("correct", pa.int32(), metadata=_IMG),         # ground truth: served predictions correct (null unlabelled)
    pa.field("frozen_correct", pa.int32(), metadata=_IMG),  # ground truth: frozen source model correct on the subsample
    pa.field("frozen_seen", pa.int32(), metadata=_IMG),     # images of the batch the frozen model scored
    *_run_fields(),
], metadata={"table": "steps", "schema_version": str(SCHEMA_VERSION)})

PROBE_SCHEMA = pa.schema([
    pa.field("step", pa.int64(), nullable=False),           # adapter steps done when the snapshot was taken
    pa.field("position", pa.int64(), nullable=False),       # stream position reached at that step
    pa.field("wall_time", pa.float64(), nullable=False, metadata=_S),
    pa.field("cycle", pa.int32(), nullable=False),          # probe cycle (a new reference set each cycle)
    pa.field("cycle_step", pa.int64(), nullable=False),     # steps since the cycle started
    # the flips: null where the snapshot counted none (probe.flips_every) or the reference set was not complete
    pa.field("probe_size", pa.int32(), metadata=_IMG),      # reference images
    pa.field("flips", pa.int32(), metadata=_IMG),           # predictions changed since the cycle start
    pa.field("weighted_flips", pa.float64()),               # flips weighted by confidence percentile rank
    pa.field("probe_ms", pa.float32(), metadata=_MS),
    pa.field("spread_size", pa.int32(), metadata=_IMG),     # the spread reference set (uniform over the cycle so far)
    pa.field("spread_flips", pa.int32(), metadata=_IMG),    # its flips since the cycle-start snapshot
    pa.field("spread_weighted_flips", pa.float64()),
    pa.field("est_source_acc", pa.float32(), metadata=_PCT),  # label-free estimate of the source accuracy
    pa.field("est_source_method", pa.string()),             # which estimator produced it
    pa.field("est_extrapolated", pa.bool_()),               # the estimate is outside its fitted range
    pa.field("est_online_acc", pa.float32(), metadata=_PCT),  # label-free estimate of the online accuracy
    pa.field("est_online_method", pa.string()),
    pa.field("est_source_paired", pa.float32(), metadata=_PCT),  # the online estimator's reading of the frozen feed
    pa.field("est_online_gap", pa.float32(), metadata=_PP),  # estimated online minus source accuracy (headline.py)
    pa.field("est_source_lo", pa.float32(), metadata=_PCT),  # the source headline's 90% interval (estimation/headline.py)
    pa.field("est_source_hi", pa.float32(), metadata=_PCT),
    pa.field("est_online_lo", pa.float32(), metadata=_PCT),  # the online headline's 90% interval
    pa.field("est_online_hi", pa.float32(), metadata=_PCT),
    pa.field("est_source_out_of_support", pa.bool_()),      # the frozen feed's window lies outside its calibration's support
    pa.field("est_online_out_of_support", pa.bool_()),      # the served feed's window lies outside its calibration's support
    pa.field("window_start", pa.int64()),                   # stream positions the ground truth covers
    pa.field("window_stop", pa.int64()),
    pa.field("true_online_acc", pa.float32(), metadata=_PCT),  # served predictions' accuracy on the window
    pa.field("true_source_acc", pa.float32(), metadata=_PCT),  # frozen source model's accuracy on the window
    pa.field("warning", pa.bool_()),                        # a collapse warning is active
    *_run_fields(),
], metadata={"table": "probes", "schema_version": str(SCHEMA_VERSION)})

#: The origin of the fused collapse warning's events (their `detectors` name those firing); the
#: detectors' own events have the detector's name as origin.
FUSED_ORIGIN = "warning"
EVENT_KINDS = ("start", "resume", "stop", "checkpoint", "reset", "cycle", "skipped", "warning", "clear", "error",
               "repair", "support")

EVENT_SCHEMA = pa.schema([
    pa.field("step", pa.int64(), nullable=False),           # adapter steps done when it happened
    pa.field("wall_time", pa.float64(), nullable=False, metadata=_S),
    pa.field("kind", pa.string(), nullable=False),          # one of EVENT_KINDS
    pa.field("origin", pa.string(), nullable=False),        # driver, adapter, probe, stream-N, or a detector name
    pa.field("message", pa.string(), nullable=False),       # for people: what happened and the evidence
    pa.field("value", pa.float64()),                        # the number behind it, when there is one
    pa.field("detectors", pa.string()),                     # a warning's or clear's detectors, comma-separated
    pa.field("lower_bound", pa.float64()),                  # the risk test's: the running error's lower bound (rate)
    pa.field("upper_bound", pa.float64()),                  # its alarm level: the clean error's upper bound + tolerance
    pa.field("delta", pa.float64()),                        # its false-alarm budget
    *_run_fields(),
], metadata={"table": "events", "schema_version": str(SCHEMA_VERSION)})

ESTIMATE_SCHEMA = pa.schema([
    pa.field("step", pa.int64(), nullable=False),           # the probe row's step
    pa.field("position", pa.int64(), nullable=False),
    pa.field("cycle", pa.int32(), nullable=False),
    pa.field("cycle_step", pa.int64(), nullable=False),
    pa.field("estimator", pa.string(), nullable=False),     # e.g. weighted-flips, atc-mc, cot
    pa.field("feed", pa.string(), nullable=False),          # served or frozen: the outputs it read
    pa.field("target", pa.string(), nullable=False),        # source (frozen model on the window) or online
    pa.field("value", pa.float32(), metadata=_PCT),         # estimated accuracy, null while not computable
    pa.field("score", pa.float64()),                        # the raw statistic a calibration maps to the value
    pa.field("extrapolated", pa.bool_()),                   # outside the estimator's fitted range
    pa.field("interval_low", pa.float32(), metadata=_PCT),  # an interval of the value, where the estimator gives one
    pa.field("interval_high", pa.float32(), metadata=_PCT),
    pa.field("window_start", pa.int64()),                   # the stream positions it estimates (= the probe row's)
    pa.field("window_stop", pa.int64()),
    pa.field("features", pa.list_(pa.field("element", pa.float32()))),  # the Sentinel's window features (eval re-estimates from them)
    *_run_fields(),
], metadata={"table": "estimates", "schema_version": str(SCHEMA_VERSION)})

TABLES: dict[str, pa.Schema] = {"steps": STEP_SCHEMA, "probes": PROBE_SCHEMA, "events": EVENT_SCHEMA,
                                "estimates": ESTIMATE_SCHEMA}


def empty_row(schema: pa.Schema) -> dict[str, Any]:
    """A row with every column of `schema` set to None."""
    return {name: None for name in schema.names}
