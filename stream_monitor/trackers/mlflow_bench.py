"""A bench's runs as MLflow runs: one per job, its run.json as parameters, its summary as metrics.

Logged through `mlflow.tracking.MlflowClient` against an explicit tracking URI (a local
``file:`` store, a database, or a tracking server), never the process-global fluent API, so
nothing else in the process is redirected. A bench run again with the same `out` updates the
MLflow run of each job (found by its ``stream_monitor.run_dir`` tag) instead of adding one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..rundir import INFO_FILE

__all__ = ["METRICS", "log_bench"]

#: summary-row column -> MLflow metric (accuracies in %, as everywhere in stream-monitor)
METRICS = ("images", "true_online_acc", "est_online_acc", "online_acc_mae", "true_source_acc", "est_source_acc",
           "warnings", "resets", "img_per_s", "attempts")
RUN_DIR_TAG = "stream_monitor.run_dir"
_MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "KILLED"}


def log_bench(rows: list[dict[str, Any]], names: list[str], tracking_uri: str,
              experiment: str = "stream-monitor-bench") -> list[str]:
    """Log each bench row (`bench.summary_row`) as an MLflow run named after its job; the run ids.

    Args:
        rows: the bench's summary rows, in job order.
        names: the job names (the run directory names), one per row.
        tracking_uri: where MLflow stores runs, e.g. ``file:///tmp/mlruns`` or ``http://host:5000``.
        experiment: the MLflow experiment, created when missing.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    run_ids = []
    for name, row in zip(names, rows):
        run_dir = str(row["run_dir"])
        previous = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
                                      max_results=1)
        params = _params(Path(run_dir))
        if previous:
            run_id = previous[0].info.run_id
            logged = previous[0].data.params
            params = {k: v for k, v in params.items() if k not in logged}  # MLflow params are write-once
        else:
            run_id = client.create_run(experiment_id, run_name=name, tags={RUN_DIR_TAG: run_dir}).info.run_id
        stamp = _now_ms()
        metrics = [Metric(key, float(row[key]), stamp, 0) for key in METRICS
                   if isinstance(row.get(key), (int, float)) and math.isfinite(float(row[key]))]
        tags = [RunTag("status", str(row.get("status")))] + \
            ([RunTag("error", str(row["error"])[:5000])] if row.get("error") else [])
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()], tags=tags)
        client.set_terminated(run_id, _MLFLOW_STATUS.get(str(row.get("status")), "FAILED"))
        run_ids.append(run_id)
    return run_ids


def _params(run_dir: Path) -> dict[str, str]:
    """run.json's facts, flattened (``hyperparameters.lr``), as MLflow's string parameters."""
    try:
        info = json.loads((run_dir / INFO_FILE).read_text())
    except (OSError, ValueError):  # the run never started: no facts to log
        return {}
    flat: dict[str, str] = {}
    for key, value in info.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": str(v)[:6000] for k, v in value.items()})
        elif key not in ("run_dir",):
            flat[key] = str(value)[:6000]
    return flat


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
