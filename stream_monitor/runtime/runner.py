"""A whole run: the run directory, the workers (in-process or Ray actors), the loop, the stop.

Run directory (DESIGN.md 7):

    RUN_DIR/config.yaml      the resolved config (what `--resume` reads back)
    RUN_DIR/run.json         the RunInfo: stream, model and weights id, adapter, device, ...
    RUN_DIR/steps|probes|events/part-*.parquet   metrics, closed parts only (readable while running)
    RUN_DIR/checkpoint.pt    driver, adapter and probe state at the last checkpoint
    RUN_DIR/driver.log       the driver's log

Ctrl-C stops submitting, drains the in-flight steps, writes a checkpoint and closes the parts;
a second Ctrl-C stops at once (the last checkpoint stays valid). A failed worker or a killed
driver leaves the last checkpoint; `--resume` drops the rows written after it and continues.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from sources.factory import DEFAULT_STREAM

from ..calibration.resolve import resolve_context
from ..config import RunConfig, dump_config
from ..estimation.pipeline import EstimationPipeline
from ..metrics.sink import ParquetSink, recover
from ..rundir import CONFIG_FILE, CONTEXT_FILE, INFO_FILE, LOG_FILE, RunDirectory, RunDirectoryError
from ..rundir import FORMAT as RUN_DIR_FORMAT
from .checkpoint import load_checkpoint, save_checkpoint
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


def new_run_dir(config: RunConfig, out: str | Path | None = None) -> Path:
    """A fresh run directory under `out` (or `metrics.out`), named by time, adapter and stream, and
    created here: `mkdir` is atomic, so runs started in the same second never share one."""
    stream = (config.source.stream or DEFAULT_STREAM).replace("_transition+", "_").replace("speed_", "s")
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
        return RunDirectory(run_dir).config(overrides)
    except RunDirectoryError as error:
        raise RunError(str(error)) from None


def run(config: RunConfig, run_dir: Path, reporter: RunObserver | None = None, resume: bool = False,
        extra_observers: list[RunObserver] = (), log: Callable[[str], None] = logger.info) -> RunOutcome:
    """Run (or resume) `config` in `run_dir` until the stream position `stop`, a Ctrl-C or a failure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _file_logging(run_dir)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(run_dir)
        removed = recover(run_dir, checkpoint.state.step if checkpoint else -1)
        if any(removed.values()):
            log(f"resume: dropped rows written after the last checkpoint: {removed}")
    dump_config(config, run_dir / CONFIG_FILE)

    workers = start_workers(config, checkpoint, run_dir.name)
    description = workers.description
    try:  # a calibration for another model or adapter fails here, before any row is written
        check_sidekick(config, description)
        # a resumed run reads what it started with, even if a shipped calibration changed since
        recorded = RunDirectory(run_dir).context if resume and (run_dir / CONTEXT_FILE).is_file() else None
        context = recorded() if recorded else resolve_context(config, description.provenance(config))
    except BaseException:
        workers.shutdown()
        raise
    length = description.stream.length
    stop = length if config.runtime.max_images is None else \
        min(length, config.runtime.start + config.runtime.max_images)
    state = checkpoint.state if checkpoint else None
    info = RunInfo(
        run_id=run_dir.name, run_dir=str(run_dir), stream=description.stream.name, base=description.adapter.base,
        model=description.adapter.model, adapter=config.adapter.name,
        hyperparameters=description.adapter.hyperparameters, device=description.adapter.device,
        start=state.position if state else config.runtime.start, stop=stop, batch_size=config.source.batch_size,
        probe_every=config.probe.every if config.probe.enabled else 0,
        probe_size=config.probe.size if config.probe.enabled else 0, has_labels=True,
        num_classes=description.stream.num_classes, adapter_calibrated=context.adapter_calibrated,
    )
    (run_dir / INFO_FILE).write_text(json.dumps({"format": RUN_DIR_FORMAT, **asdict(info)}, indent=2, default=str))
    (run_dir / CONTEXT_FILE).write_text(json.dumps(context.to_dict()))
    sink = ParquetSink(run_dir, config.metrics.rows_per_part, config.metrics.seconds_per_part)
    observers: list[RunObserver] = [sink, *extra_observers, *workers.observers] + \
        ([reporter] if reporter is not None else [])
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
    started, first_position = time.perf_counter(), loop.state.position
    status, error = "finished", None
    previous = _interrupt_handler(loop, log)
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
        signal.signal(signal.SIGINT, previous)
        for observer in reversed(observers):
            try:
                observer.close()
            except Exception:  # closing one observer must not keep the others (the sink) open
                logger.exception("closing %s failed", observer)
        workers.shutdown()
    return RunOutcome(run_dir, loop.state, info, status, time.perf_counter() - started,
                      loop.state.position - first_position, error)


def check_sidekick(config: RunConfig, description: WorkersDescription) -> None:
    """A Duos sidekick must predict the model's classes."""
    sidekick, classes = description.sidekick, description.stream.num_classes
    if sidekick is not None and sidekick.num_classes != classes:
        raise ValueError(f"The Duos sidekick {config.estimation.duo_model} predicts {sidekick.num_classes} classes and "
                         f"the model {config.model.name} {classes}; a duo needs a sidekick trained on the same "
                         f"classes (estimation.duo_model, e.g. embedded-small beside embedded, resnet18 beside "
                         f"resnet50).")


def _interrupt_handler(loop: RunLoop, log: Callable[[str], None]):
    def handle(signum, frame) -> None:
        if loop.stop_requested:
            raise KeyboardInterrupt
        loop.request_stop()
        log("stopping: finishing the steps in flight and writing a checkpoint (Ctrl-C again to stop at once)")

    try:
        return signal.signal(signal.SIGINT, handle)
    except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
        return signal.getsignal(signal.SIGINT)


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

