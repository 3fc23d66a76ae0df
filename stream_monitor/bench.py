"""`stream-monitor bench`: many runs (streams x adapters), each a resumable run directory, fanned out.

Each run is one Ray task that runs the whole `stream-monitor run` loop in its own process (workers
in-process, `runtime.use_ray=false`) and reserves one GPU (or `cpus_per_run` cores). Ray places the
tasks over the cluster and retries a task whose worker or node died (`max_retries`); the retry finds
the run directory's checkpoint and resumes there, so a lost node costs at most one checkpoint
interval of work. On a multi-node cluster `out` must be storage every node sees (NFS, a mounted
bucket): the run directories are the only state.

The run directory of a job has a fixed name under `out` (`<adapter>-<stream>`), which makes the
whole bench resumable too: a second `bench` with the same `out` skips finished runs, resumes
stopped ones and starts the rest. Every run writes `progress.json` (position, rate, latest
estimates) as it goes; the driver reads those for the live table, and writes `summary.csv` and
`summary.parquet` (one row per run, the report's summary numbers) at the end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import pyarrow as pa

PROGRESS_FILE = "progress.json"
OUTCOME_FILE = "outcome.json"


def _summary_schema() -> pa.Schema:
    """The summary table's explicit schema: inferred from the rows, a column that is null in every row of one
    bench (no run got far enough) would be typed null, and two benches' summaries would not read as one dataset."""
    import pyarrow as pa

    percent, unit = {"unit": "percent"}, lambda name: {"unit": name}
    return pa.schema([
        pa.field("adapter", pa.string(), nullable=False),
        pa.field("stream", pa.string(), nullable=False),
        pa.field("status", pa.string()),                 # the run's outcome; null when it never reported one
        pa.field("attempts", pa.int32()),
        pa.field("images", pa.int64(), metadata=unit("images")),
        pa.field("true_online_acc", pa.float64(), metadata=percent),
        pa.field("est_online_acc", pa.float64(), metadata=percent),
        pa.field("online_acc_mae", pa.float64(), metadata=unit("percentage points")),
        pa.field("true_source_acc", pa.float64(), metadata=percent),
        pa.field("est_source_acc", pa.float64(), metadata=percent),
        pa.field("warnings", pa.int32()),
        pa.field("resets", pa.int32()),
        pa.field("img_per_s", pa.float64(), metadata=unit("images per second")),
        pa.field("run_dir", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ], metadata={"table": "bench_summary"})


SUMMARY_COLUMNS = ("adapter", "stream", "status", "attempts", "images", "true_online_acc", "est_online_acc",
                   "online_acc_mae", "true_source_acc", "est_source_acc", "warnings", "resets", "img_per_s",
                   "run_dir", "error")  # = _summary_schema().names (kept literal: pyarrow is imported lazily here)


@dataclass(frozen=True)
class BenchJob:
    adapter: str
    stream: str
    overrides: tuple[str, ...] = ()  # config overrides shared by every job (max_images, probe, ...)

    @property
    def name(self) -> str:
        return f"{self.adapter}-{self.stream.replace('_transition+', '_').replace('speed_', 's')}"

    def config_overrides(self) -> list[str]:
        return [*self.overrides, f"adapter.name={self.adapter!r}", f"source.stream={self.stream!r}",
                "runtime.use_ray=False", "dashboard.enabled=False"]


def plan(streams: Iterable[str], adapters: Iterable[str], seeds: Iterable[int] = (),
         overrides: Iterable[str] = ()) -> list[BenchJob]:
    """The jobs of a bench: every stream (each re-seeded with every seed, when seeds are given) x
    every adapter, in that order, without duplicates. Names are checked here, before anything runs.

    Raises:
        ValueError: an unknown adapter or a stream name that is not a CCC stream, with the valid choices.
    """
    from stream_monitor.adapters import ADAPTERS
    from stream_monitor.sources.ccc import CCCSpec, all_stream_names

    from .registry import UnknownNameError

    names = list(streams)
    if names == ["all"]:
        names = all_stream_names()
    specs = [CCCSpec.parse(name) for name in names]
    if seeds:
        specs = [CCCSpec(s.baseline, s.speed, seed) for s in specs for seed in seeds]
    adapter_names = list(adapters)
    for name in adapter_names:
        try:
            ADAPTERS.get(name)
        except UnknownNameError as error:
            raise ValueError(str(error)) from None
    jobs = [BenchJob(adapter, spec.name, tuple(overrides)) for spec in specs for adapter in adapter_names]
    return list(dict.fromkeys(jobs))


class ProgressFile:
    """A run observer that keeps `progress.json` in the run directory current (atomically, at most
    every `interval` s), so whoever watches the bench, on any node, sees how far each run is."""

    def __init__(self, run_dir: Path, attempt: int, interval: float = 2.0) -> None:
        self.path, self.attempt, self.interval = Path(run_dir) / PROGRESS_FILE, attempt, interval
        self.state: dict[str, Any] = {"status": "running", "attempt": attempt}
        self._written = 0.0
        self._started = time.time()
        self._first_position: int | None = None

    def on_start(self, info) -> None:
        self.state.update(start=info.start, stop=info.stop, position=info.start, **where_am_i())
        self._write(force=True)

    def on_step(self, row: dict[str, Any]) -> None:
        if self._first_position is None:
            self._first_position = row["start"]
        self.state["position"] = row["stop"]
        elapsed = time.time() - self._started
        self.state["img_per_s"] = (row["stop"] - self._first_position) / elapsed if elapsed > 0 else None
        self._write()

    def on_probe(self, row: dict[str, Any]) -> None:
        for key in ("est_online_acc", "est_source_acc"):
            if row.get(key) is not None:
                self.state[key] = float(row[key])

    def on_event(self, row: dict[str, Any]) -> None:
        if row.get("kind") == "warning":
            self.state["warnings"] = self.state.get("warnings", 0) + 1

    def close(self) -> None:
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < self.interval:
            return
        tmp = self.path.with_name(f".{PROGRESS_FILE}.tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.path)
        self._written = now


def where_am_i() -> dict[str, Any]:
    """Host, process and (inside a Ray worker) Ray node id: which machine holds a run, and which
    node to look at (or drain) when it stalls; hostnames alone repeat on a simulated cluster."""
    where: dict[str, Any] = {"node": os.uname().nodename, "pid": os.getpid(), "ray_node": None}
    try:
        import ray

        if ray.is_initialized():
            where["ray_node"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return where


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-replace on a slow share
        return None


def run_job(job: BenchJob, out: Path) -> dict[str, Any]:
    """Run (or resume, or skip when finished) one job in `out / job.name`; the outcome as a dict.

    A plain function: the Ray task calls it, the tests call it directly.
    """
    from .config import load_config
    from .rundir import CONFIG_FILE
    from .runtime.runner import prepare_resume, run

    run_dir = Path(out) / job.name
    finished = read_json(run_dir / OUTCOME_FILE)
    if finished and finished.get("status") == "finished":
        return finished
    previous = read_json(run_dir / PROGRESS_FILE) or {}
    attempt = int(previous.get("attempt", 0)) + 1
    resume = (run_dir / CONFIG_FILE).exists()  # the run's first file: it started, whatever happened next
    config = prepare_resume(run_dir, job.config_overrides()) if resume else load_config(None, job.config_overrides())
    outcome = run(config, run_dir, resume=resume, extra_observers=[ProgressFile(run_dir, attempt)])
    result = {"adapter": job.adapter, "stream": job.stream, "status": outcome.status, "attempts": attempt,
              "resumed": resume, "run_dir": str(run_dir), "error": outcome.error, "seconds": outcome.seconds}
    tmp = run_dir / f".{OUTCOME_FILE}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(run_dir / OUTCOME_FILE)
    return result


def summary_row(job: BenchJob, out: Path, outcome: dict[str, Any] | None) -> dict[str, Any]:
    """One line of the bench table: the outcome plus the report's summary numbers of the run."""
    from .report import summarise
    from .rundir import RunDirectoryError

    run_dir = Path(out) / job.name
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(adapter=job.adapter, stream=job.stream, run_dir=str(run_dir))
    if outcome:
        row.update({k: outcome.get(k) for k in ("status", "attempts", "error")})
    try:
        summary = summarise(run_dir)
    except RunDirectoryError:  # not started, or stopped before its workers came up: no numbers yet
        return row
    row.update(images=summary.get("images"), true_online_acc=summary.get("true_online_acc"),
               est_online_acc=summary.get("est_online_acc"), online_acc_mae=summary.get("online_acc_mae"),
               true_source_acc=summary.get("true_source_acc"), est_source_acc=summary.get("est_source_acc"),
               warnings=summary.get("warnings"), resets=summary.get("resets"), img_per_s=summary.get("img_per_s"))
    return row


def write_summary(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """Write `summary.parquet` (explicit schema, see `_summary_schema`) and `summary.csv`; their paths."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    schema = _summary_schema()
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    pq.write_table(table, Path(out) / "summary.parquet")
    pa_csv.write_csv(table, Path(out) / "summary.csv")
    return Path(out) / "summary.csv", Path(out) / "summary.parquet"


def run_local(jobs: list[BenchJob], out: Path, on_update: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Every job one after the other in this process (no Ray): `bench --no-ray`, and the tests."""
    outcomes = []
    for job in jobs:
        outcomes.append(run_job(job, out))
        on_update()
    return [summary_row(job, out, outcome) for job, outcome in zip(jobs, outcomes)]


def run_on_ray(jobs: list[BenchJob], out: Path, num_gpus: float = 0.0, num_cpus: float = 1.0,
               max_retries: int = 3, on_update: Callable[[], None] = lambda: None,
               poll_s: float = 1.0) -> list[dict[str, Any]]:
    """One Ray task per job on the connected cluster (`ray.init` done by the caller); retried on a
    lost worker or node, each retry resuming its run directory. Returns the summary rows in job order.

    A run that fails inside (a bad shard, a NaN the run could not skip) is not retried: it comes back
    with status `failed` and its error, and `bench` again resumes it from its checkpoint.
    """
    import ray

    task = ray.remote(run_job).options(num_gpus=num_gpus, num_cpus=num_cpus, max_retries=max_retries,
                                       retry_exceptions=False,
                                       runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    out = Path(out).resolve()
    pending = {task.remote(job, out): index for index, job in enumerate(jobs)}
    outcomes: dict[int, dict[str, Any]] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
        for ref in ready:
            index = pending.pop(ref)
            try:
                outcomes[index] = ray.get(ref)
            except (ray.exceptions.RayError, RuntimeError) as error:  # retries spent, or an error inside
                outcomes[index] = {"status": "failed", "error": f"{type(error).__name__}: {error}".splitlines()[0]}
        on_update()
    return [summary_row(job, out, outcomes.get(i)) for i, job in enumerate(jobs)]


def live_rows(jobs: list[BenchJob], out: Path) -> list[dict[str, Any]]:
    """Where each job stands, from its run directory (progress.json / outcome.json)."""
    rows = []
    for job in jobs:
        run_dir = Path(out) / job.name
        progress = read_json(run_dir / PROGRESS_FILE) or {}
        outcome = read_json(run_dir / OUTCOME_FILE) or {}
        status = outcome.get("status") or progress.get("status") or "queued"
        if status == "running" and progress.get("attempt", 1) > 1:
            status = f"resumed ({progress['attempt']})"
        rows.append({"job": job.name, "status": status, "position": progress.get("position"),
                     "stop": progress.get("stop"), "img_per_s": progress.get("img_per_s"),
                     "est_online_acc": progress.get("est_online_acc"), "node": progress.get("node")})
    return rows


def submit_job(address: str, argv: list[str], working_dir: str | None = None) -> str:
    """Submit this bench to a cluster through the Ray Jobs API (`ray.job_submission`); the job id.

    `argv` is the bench command line without `--submit`; the job runs it on the head node with
    `--address auto`, so its tasks spread over the cluster.
    """
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    runtime_env = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    return client.submit_job(entrypoint=job_entrypoint(argv), runtime_env=runtime_env)


def job_entrypoint(argv: list[str]) -> str:
    """The shell command a submitted bench runs: the same arguments, `--address auto`, no `--submit`."""
    import shlex

    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--submit", "--address"):
            skip = True
            continue
        if arg.startswith(("--submit=", "--address=")):
            continue
        kept.append(arg)
    return shlex.join(["stream-monitor", "bench", *kept, "--address", "auto"])
