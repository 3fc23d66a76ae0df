"""A bench's runs as MLflow runs: one per job, its run.json as parameters, its summary as metrics.

Logged through `mlflow.tracking.MlflowClient` against an explicit tracking URI (a tracking
server, a ``sqlite:///`` database with the full ``mlflow`` package, or a ``file:`` store, which
MLflow 3 only writes with ``MLFLOW_ALLOW_FILE_STORE=true``), never the process-global fluent API,
so nothing else in the process is redirected. The store is opened before any job runs, so a bad
URI fails at once. A bench run again with the same `out` updates the MLflow run of each job
(found by its ``stream_monitor.run_dir`` tag) instead of adding one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..rundir import INFO_FILE

__all__ = ["METRICS", "MlflowBench", "MlflowUnusable"]

#: summary-row column -> MLflow metric (accuracies in %, as everywhere in stream-monitor)
METRICS = ("images", "true_online_acc", "est_online_acc", "online_acc_mae", "true_source_acc", "est_source_acc",
           "warnings", "resets", "img_per_s", "attempts")
RUN_DIR_TAG = "stream_monitor.run_dir"
_MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "KILLED"}


class MlflowUnusable(RuntimeError):
    """The tracking URI cannot be written; the message carries MLflow's reason."""


class MlflowBench:
    """A bench's MLflow experiment, opened (and created when missing) at construction.

    Args:
        tracking_uri: where MLflow stores runs, e.g. ``http://host:5000`` or ``sqlite:///mlflow.db``.
        experiment: the MLflow experiment's name.

    Raises:
        MlflowUnusable: the store cannot be opened or written.
    """

    def __init__(self, tracking_uri: str, experiment: str = "stream-monitor-bench") -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.experiment = tracking_uri, experiment
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        except MlflowException as error:
            raise MlflowUnusable(f"MLflow cannot use the tracking URI {tracking_uri!r}: {error.message}") from None

    def log(self, rows: list[dict[str, Any]], names: list[str]) -> list[str]:
        """Log each bench row (`bench.summary_row`) as an MLflow run named after its job (`names`,
        in row order); the run ids."""
        return _log(self.client, self.experiment_id, rows, names)


def _log(client, experiment_id: str, rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    from mlflow.entities import Metric, Param, RunTag

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
