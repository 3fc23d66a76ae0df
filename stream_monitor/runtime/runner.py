"""A whole run: the run directory, the workers (in-process or Ray actors), the loop, the stop.

Run directory (DESIGN.md 7):

    RUN_DIR/config.yaml      the resolved config (what `--resume` reads back)
    RUN_DIR/run.json         the RunInfo: stream, model and weights id, adapter, device, ...
    RUN_DIR/<table>/part-*.parquet   metrics, closed parts only (any reader opens them while running)
    RUN_DIR/.inflight/<table>/       the open parts, moved into <table>/ whole when closed
    RUN_DIR/checkpoint.pt    driver, adapter and probe state at the last checkpoint (and checkpoint.previous.pt)
    RUN_DIR/driver.log       the driver's log
    RUN_DIR/.lock            flock'd by the one process running the directory

Ctrl-C or SIGTERM (kill, Kubernetes, Slurm, systemd) stops submitting, drains the in-flight steps,
writes a checkpoint and closes the parts; a second one stops at once (the last checkpoint stays
valid). A failed worker or a killed driver leaves the last checkpoint; `--resume` drops the rows
written after it and continues. A damaged checkpoint or part found on resume is moved to
quarantine/ and reported on the console and as an event: resume falls back to the previous
checkpoint when that writes the damaged rows again, and says exactly what is lost when not.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from stream_monitor.sources.factory import stream_label

from ..calibration.resolve import resolve_context
from ..config import RunConfig, dump_config
from ..estimation.pipeline import EstimationPipeline
from ..metrics.prometheus import metrics_observer
from ..metrics.sink import ParquetSink, quarantine, recover, scan_parts
from ..rundir import (CHECKPOINT_FILE, CONFIG_FILE, CONTEXT_FILE, INFO_FILE, LOCK_FILE, LOG_FILE, RunDirectory,
                      RunDirectoryError)
from ..rundir import FORMAT as RUN_DIR_FORMAT
from .checkpoint import Checkpoint, find_checkpoints, save_checkpoint, unusable_message
from .components import Components
from .loop import LoopState, RunLoop, WorkerFailed
from .messages import WorkersDescription
from .observer import RunInfo, RunObserver, notify_health
from .start import start_workers

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot start (bad run directory, nothing to resume); the message says what to do."""


@dataclass
class RunOutcome:
    run_dir: Path
    state: LoopState
    info: RunInfo
    status: str          # finished, stopped (Ctrl-C) or failed
    seconds: float
    images: int          # images processed by this invocation
    error: str | None = None


def new_run_dir(config: RunConfig, out: str | Path | None = None, stream: str | None = None) -> Path:
    """A fresh run directory under `out` (or `metrics.out`), named by time, adapter and stream (`stream`,
    else the config's), and created here: `mkdir` is atomic, so runs started in the same second never share one."""
    src = config.source
    stream = stream or stream_label(src.kind, src.stream, src.data)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = Path(out or config.metrics.out)
    parent.mkdir(parents=True, exist_ok=True)
    for suffix in range(1, 10_000):
        path = parent / f"{stamp}-{config.adapter.name}-{stream}{'' if suffix == 1 else f'-{suffix}'}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"no free run directory name under {parent} for {stamp}-{config.adapter.name}-{stream}")


def prepare_resume(run_dir: Path, overrides: list[str] = ()) -> RunConfig:
    """The config of an existing run directory (with `overrides`, e.g. a longer runtime.max_images)."""
    try:
        config = RunDirectory(run_dir).config(overrides)
    except RunDirectoryError as error:
        raise RunError(str(error)) from None
    if config.source.kind == API_SOURCE_KIND:
        raise RunError(f"{run_dir} was made with the Python API (stream_monitor.Monitor), whose model and stream "
                       f"live in your program; resume it there with Monitor.resume({str(run_dir)!r}, stream).")
    return config


def run(config: RunConfig, run_dir: Path, reporter: RunObserver | None = None, resume: bool = False,
        extra_observers: list[RunObserver] = (), log: Callable[[str], None] = logger.info,
        components: Components | None = None) -> RunOutcome:
    """Run (or resume) `config` in `run_dir` until the stream position `stop`, a Ctrl-C, a SIGTERM or a failure.

    `components` gives the model, stream and adapter (the Python API); None builds them from the
    names in `config` (`stream-monitor run`).

    Raises RunError at once when another process runs the same directory.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):
        return _run(config, run_dir, reporter, resume, extra_observers, log, components)


def _run(config: RunConfig, run_dir: Path, reporter: RunObserver | None, resume: bool,
         extra_observers: list[RunObserver], log: Callable[[str], None],
         components: Components | None = None) -> RunOutcome:
    _file_logging(run_dir)
    checkpoint, repairs = _repair_for_resume(run_dir, log) if resume else (None, [])
    dump_config(config, run_dir / CONFIG_FILE)

    workers = start_workers(config, checkpoint, run_dir.name, components)
    description = workers.description
    try:  # a calibration for another model or adapter fails here, before any row is written
        check_sidekick(config, description)
        # a resumed run reads what it started with, even if a shipped calibration changed since
        if resume and (run_dir / CONTEXT_FILE).is_file():
            context = RunDirectory(run_dir).context()
        else:
            context = resolve_context(config, description.provenance(config))
    except BaseException:
        workers.shutdown()
        raise
    stop = stream_stop(config, description.stream.length)
    state = checkpoint.state if checkpoint else None
    info = RunInfo(
        run_id=run_dir.name, run_dir=str(run_dir), stream=description.stream.name, base=description.adapter.base,
        model=description.adapter.model, adapter=config.adapter.name,
        hyperparameters=description.adapter.hyperparameters, device=description.adapter.device,
        start=state.position if state else config.runtime.start, stop=stop if stop < UNBOUNDED else 0,
        batch_size=config.source.batch_size,
        probe_every=config.probe.every if config.probe.enabled else 0,
        probe_size=config.probe.size if config.probe.enabled else 0, has_labels=description.stream.has_labels,
        num_classes=description.stream.num_classes, adapter_calibrated=context.adapter_calibrated,
    )
    (run_dir / INFO_FILE).write_text(json.dumps({"format": RUN_DIR_FORMAT, **asdict(info)}, indent=2, default=str))
    (run_dir / CONTEXT_FILE).write_text(json.dumps(context.to_dict()))
    sink = ParquetSink(run_dir, config.metrics.rows_per_part, config.metrics.seconds_per_part)
    metrics = metrics_observer(config.metrics)  # on Ray (this process joined it) and/or metrics.port
    observers: list[RunObserver] = [sink, *extra_observers, *workers.observers] + \
        ([metrics] if metrics is not None else []) + ([reporter] if reporter is not None else [])
    for observer in observers:
        observer.on_start(info)
    for name in ["adapter", *workers.source_names] + (["probe"] if config.probe.enabled else []) + \
            (["sidekick"] if config.estimation.duo_model else []):
        notify_health(observers, name, "ok", info.device if name == "adapter" else "")

    def write(loop_state: LoopState, adapter_state: Any, probe_state: Any) -> None:
        save_checkpoint(run_dir, loop_state, adapter_state, probe_state)

    log(f"estimation calibration: {context.describe()}")
    estimation = EstimationPipeline(context, description.stream.num_classes, config.estimation.duo_model,
                                    dropout=config.estimation.aetta_every > 0)
    loop = RunLoop(config, workers, observers, estimation, stop, checkpoint=write, state=state)
    if checkpoint is None and not resume:
        loop.event("start", "driver", f"run {run_dir.name}: {info.stream}, {info.model}, adapter {info.adapter}, "
                   f"images [{info.start:,}, {stop:,}) on {info.device}")
    else:
        loop.event("resume", "driver", f"resumed at step {loop.state.step:,}, position {loop.state.position:,}")
    for kind, message, value in repairs:
        loop.event(kind, "driver", message, value)
    started, first_position = time.perf_counter(), loop.state.position
    status, error = "finished", None
    previous = _stop_handlers(loop, log)
    try:
        loop.run()
        if loop.stop_requested:
            status = "stopped"
        loop.write_checkpoint()
        loop.event("stop", "driver", f"{status} at step {loop.state.step:,}, position {loop.state.position:,}")
    except WorkerFailed as failure:
        status, error = "failed", str(failure)
        loop.event("error", "driver", f"{failure}; the run directory resumes from its last checkpoint "
                   f"with `stream-monitor run --resume {run_dir}`")
    except KeyboardInterrupt:
        status, error = "stopped", "interrupted twice: stopped without a final checkpoint"
        loop.event("stop", "driver", f"{error}; resume continues from the last checkpoint")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for observer in reversed(observers):
            try:
                observer.close()
            except Exception:  # closing one observer must not keep the others (the sink) open
                logger.exception("closing %s failed", observer)
        workers.shutdown()
    return RunOutcome(run_dir, loop.state, info, status, time.perf_counter() - started,
                      loop.state.position - first_position, error)


#: `source.kind` of the Python API's runs (`stream_monitor.api.monitor`): no config can rebuild their stream.
API_SOURCE_KIND = "python-api"

#: The stop of a stream of unknown length without runtime.max_images: it ends where the stream does.
UNBOUNDED = 1 << 62


def stream_stop(config: RunConfig, length: int | None) -> int:
    """The stream position a run ends at: the stream's end, or `runtime.max_images` after its start."""
    length = UNBOUNDED if length is None else length
    return length if config.runtime.max_images is None else min(length, config.runtime.start + config.runtime.max_images)


def check_sidekick(config: RunConfig, description: WorkersDescription) -> None:
    """A Duos sidekick must predict the model's classes."""
    sidekick, classes = description.sidekick, description.stream.num_classes
    if sidekick is not None and sidekick.num_classes != classes:
        raise ValueError(f"The Duos sidekick {config.estimation.duo_model} predicts {sidekick.num_classes} classes and "
                         f"the model {config.model.name} {classes}; a duo needs a sidekick trained on the same "
                         f"classes (estimation.duo_model, e.g. embedded-small beside embedded, resnet18 beside "
                         f"resnet50).")


#: Signals that stop a run gracefully: Ctrl-C, and what kill, Kubernetes, Slurm and systemd send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_handlers(loop: RunLoop, log: Callable[[str], None]) -> dict[int, Any]:
    """Handle Ctrl-C and SIGTERM alike (drain, checkpoint, stop; a second one stops at once); the
    handlers they replace, to put back."""
    def handle(signum, frame) -> None:
        if loop.stop_requested:
            raise KeyboardInterrupt
        loop.request_stop()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log(f"stopping ({name}): finishing the steps in flight and writing a checkpoint (Ctrl-C again to stop "
            f"at once)")

    previous = {}
    for signum in STOP_SIGNALS:
        try:
            previous[signum] = signal.signal(signum, handle)
        except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
            pass
    return previous


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on RUN_DIR/.lock, so two processes never write one run directory.

    The kernel releases a flock when its process dies, so a crashed run leaves no stale lock; the
    file stays (deleting it would let a third process lock a new file while one holds the old).
    """
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunError(f"Run directory {run_dir} is in use by process {holder} (a `stream-monitor run` or "
                       f"`--resume` of it). Wait for it to end, or stop it (Ctrl-C in its terminal, or "
                       f"`kill {holder}`: it checkpoints first), then resume with "
                       f"`stream-monitor run --resume {run_dir}`.") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _repair_for_resume(run_dir: Path, log: Callable[[str], None]) -> tuple[Checkpoint | None,
                                                                         list[tuple[str, str, float | None]]]:
    """The checkpoint to resume from, with the tables cut back to it, and the events that report
    what was damaged: (kind, message, value) for the loop to write once the sink is open.

    The newest valid checkpoint that precedes every damaged part's rows is chosen, so those rows are
    computed again; when none does, the newest valid one is used and the rows up to it are lost.
    Damaged files go to quarantine/: a damaged latest checkpoint left in place would be rotated
    into checkpoint.previous.pt by the next save.
    """
    found = find_checkpoints(run_dir)
    if found.damaged and not found.valid:
        raise RunError(unusable_message(run_dir, found.damaged))
    parts = scan_parts(run_dir)
    damaged = [p for p in parts if p.problem is not None]
    first_damaged = min((p.first_step for p in damaged), default=None)
    before = [c for c in found.valid if first_damaged is None or c.state.step < first_damaged]
    checkpoint = before[0] if before else found.valid[0] if found.valid else None
    step = checkpoint.state.step if checkpoint else -1
    repairs: list[tuple[str, str, float | None]] = []

    def report(kind: str, message: str, value: float | None = None) -> None:
        (logger.error if kind == "error" else logger.warning)(message)
        log(f"resume: {message}")
        repairs.append((kind, message, value))

    for path, why in found.damaged:
        moved = quarantine(run_dir, path, path.name, why)
        report("repair", f"checkpoint {path.name} cannot be used ({why}); moved to "
               f"{moved.relative_to(run_dir)}")
    newer = found.valid[:[c is checkpoint for c in found.valid].index(True)] if checkpoint else []
    for unused in newer:
        moved = quarantine(run_dir, unused.path, unused.path.name, "newer than the checkpoint resumed from")
        report("repair", f"checkpoint {unused.path.name} (step {unused.state.step:,}) set aside to "
               f"{moved.relative_to(run_dir)}: a damaged part holds rows before it")
    if checkpoint is not None and (found.damaged or newer):
        report("repair", f"resuming from the previous checkpoint ({checkpoint.path.name}, step "
               f"{checkpoint.state.step:,}); the rows after it are dropped and written again"
               if checkpoint.path.name != CHECKPOINT_FILE else
               f"resuming from the latest checkpoint ({CHECKPOINT_FILE}, step {checkpoint.state.step:,})")
    recover_log = recover(run_dir, step, parts)
    for part in damaged:
        where = f"{part.table}/{part.path.name}"
        moved = f"{part.table}-{part.path.name}"
        if part.first_step > step:
            report("repair", f"{where} cannot be read ({part.problem}); moved to quarantine/{moved}. Its rows "
                   f"({part.steps()}) follow the checkpoint at step {step:,} and are written again")
            continue
        rows = f"{part.rows:,} rows" if part.rows is not None else "an unknown number of rows (its footer is lost)"
        report("error", f"{where} cannot be read ({part.problem}); moved to quarantine/{moved}. {rows} of "
               f"{part.table} ({part.steps()}) are lost: no checkpoint precedes them, so the tables and the "
               f"summary miss them; start a new run to have them", part.rows)
    if any(recover_log.values()):
        log(f"resume: dropped rows written after the checkpoint at step {step:,}: {recover_log}")
    return checkpoint, repairs


def _file_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("stream_monitor")
    for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def with_overrides(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """`config` with some fields of some sections replaced (for the CLI's flags)."""
    return replace(config, **{name: replace(getattr(config, name), **values) for name, values in sections.items()})

