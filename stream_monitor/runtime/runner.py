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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..config import RunConfig, dump_config, load_config
from ..estimation.window import calibrated_on_adapter
from ..metrics.sink import ParquetSink, recover
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import LoopState, RunLoop, WorkerFailed
from .observer import RunInfo, RunObserver, notify_health

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"


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
    from sources.factory import DEFAULT_STREAM

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
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the folder that "
                       f"`stream-monitor run` printed, e.g. runs/20261202-101500-rdumb-baseline_20_s1000_seed_43.")
    return load_config(run_dir / CONFIG_FILE, overrides)


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
    ex, names, describe = workers.executor, workers.source_names, workers.describe
    reset_every = describe["hyperparameters"].get("reset_every")
    try:  # a calibration for another model or adapter fails here, before any row is written
        check_sidekick(config, describe)
        chosen = choose_calibration(config, describe, reset_every)
    except BaseException:
        workers.shutdown()
        raise
    stop = describe["length"] if config.runtime.max_images is None else \
        min(describe["length"], config.runtime.start + config.runtime.max_images)
    state = checkpoint.state if checkpoint else None
    info = RunInfo(
        run_id=run_dir.name, run_dir=str(run_dir), stream=describe["name"], base=describe["base"],
        model=describe["model"], adapter=config.adapter.name, hyperparameters=describe["hyperparameters"],
        device=describe["device"], start=state.position if state else config.runtime.start, stop=stop,
        batch_size=config.source.batch_size, probe_every=config.probe.every if config.probe.enabled else 0,
        probe_size=config.probe.size if config.probe.enabled else 0, has_labels=True,
        num_classes=describe["num_classes"], adapter_calibrated=calibrated_on_adapter(chosen.stats),
    )
    (run_dir / INFO_FILE).write_text(json.dumps(asdict(info), indent=2, default=str))
    sink = ParquetSink(run_dir, config.metrics.rows_per_part, config.metrics.seconds_per_part)
    observers: list[RunObserver] = [sink, *extra_observers, *workers.observers] + \
        ([reporter] if reporter is not None else [])
    for observer in observers:
        observer.on_start(info)
    for name in ["adapter", *names] + (["probe"] if config.probe.enabled else []) + \
            (["sidekick"] if config.estimation.duo_model else []):
        notify_health(observers, name, "ok", info.device if name == "adapter" else "")

    def write(loop_state: LoopState, adapter_state: Any, probe_state: Any) -> None:
        save_checkpoint(run_dir, loop_state, adapter_state, probe_state)

    log(f"source-accuracy estimate: {chosen.origin}")
    loop = RunLoop(config, ex, observers, stop, describe["num_classes"], names, calibration=chosen.flips,
                   checkpoint=write, state=state, reset_every=reset_every, source_stats=chosen.stats,
                   frozen_stats=chosen.frozen_stats, spread_calibration=chosen.spread_flips)
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


SHIPPED_CALIBRATIONS = Path(__file__).resolve().parent.parent / "assets" / "calibrations"


class ChosenCalibration(NamedTuple):
    flips: dict[int, Any] | None       # cycle step -> f (estimation.flips.FlipsCalibration)
    stats: Any                         # SourceStats of the served adapter at its source state, or None
    frozen_stats: Any                  # SourceStats of the frozen source model, or None
    origin: str                        # where they came from, for people
    spread_flips: dict[int, Any] | None = None  # cycle step -> f of the spread reference set's flips


def check_sidekick(config: RunConfig, describe: dict[str, Any]) -> None:
    """A Duos sidekick must predict the model's classes."""
    classes = describe.get("sidekick_classes")
    if classes is not None and classes != describe["num_classes"]:
        raise ValueError(f"The Duos sidekick {config.estimation.duo_model} predicts {classes} classes and the model "
                         f"{config.model.name} {describe['num_classes']}; a duo needs a sidekick trained on the same "
                         f"classes (estimation.duo_model, e.g. embedded-small beside embedded, resnet18 beside "
                         f"resnet50).")


def choose_calibration(config: RunConfig, describe: dict[str, Any], reset_every: int | None) -> ChosenCalibration:
    """The configured calibration file (which must match the run), else a shipped one that
    matches, else none. The frozen model's feed comes from `estimation.frozen_calibration` when set
    (a file made for the run's model with any adapter: that feed never sees the adapter), else from
    the configured calibration file, else from a shipped frozen-feed calibration of the model
    (`assets/calibrations/frozen/`). Fails before any step when a configured file does not match."""
    from ..calibration import FROZEN_PROVENANCE_KEYS, Calibration, run_provenance
    from ..schedule import cycle_length

    chosen = _choose_calibration(config, describe, reset_every)
    provenance = run_provenance(describe, config, cycle_length(config.probe.cycle, reset_every))
    model_only = {k: provenance[k] for k in FROZEN_PROVENANCE_KEYS}
    path = config.estimation.frozen_calibration
    if path:
        frozen = Calibration.load(Path(path))
        frozen.check(model_only)
        origin = str(path)
    elif config.estimation.calibration:
        return chosen  # the user's own file serves both feeds
    else:
        shipped = shipped_calibration(SHIPPED_CALIBRATIONS / "frozen", model_only)
        if shipped is None:
            return chosen
        frozen, origin = shipped[0], f"shipped {shipped[1].name}"
    return chosen._replace(frozen_stats=frozen.window_stats(frozen=True),
                           origin=f"{chosen.origin}; frozen model's feed from {origin}")


def _choose_calibration(config: RunConfig, describe: dict[str, Any], reset_every: int | None) -> ChosenCalibration:
    from ..calibration import Calibration, run_provenance
    from ..estimation.flips import SHIPPED
    from ..schedule import cycle_length

    cycle = cycle_length(config.probe.cycle, reset_every)
    provenance = run_provenance(describe, config, cycle)
    if config.estimation.calibration:
        calibration = Calibration.load(Path(config.estimation.calibration))
        calibration.check(provenance)
        return ChosenCalibration(calibration.flips_calibrations(), calibration.window_stats(),
                                 calibration.window_stats(frozen=True), f"weighted flips, {config.estimation.calibration}",
                                 calibration.flips_calibrations(spread=True))
    shipped = shipped_calibration(SHIPPED_CALIBRATIONS, provenance)
    if shipped is not None:
        calibration, path = shipped
        return ChosenCalibration(calibration.flips_calibrations(), calibration.window_stats(),
                                 calibration.window_stats(frozen=True), f"weighted flips, shipped {path.name}",
                                 calibration.flips_calibrations(spread=True))
    if describe["model_name"] in SHIPPED and config.adapter.name == "rdumb" and cycle == 1000 \
            and config.probe.size in (100, 1000):
        return ChosenCalibration(SHIPPED[describe["model_name"]], None, None,
                                 "weighted flips, Entropy Enigma's ResNet-50 f (step 990)")
    return ChosenCalibration(None, None, None, "none: no calibration for this model, adapter and cadence "
                             "(`stream-monitor calibrate` fits one)")


def shipped_calibration(folder: Path, provenance: dict[str, Any]):
    """(calibration, path) of the first file in `folder` that matches `provenance`, else None."""
    from ..calibration import Calibration, CalibrationMismatch

    for path in sorted(folder.glob("*.json")):
        calibration = Calibration.load(path)
        try:
            calibration.check(provenance)
        except CalibrationMismatch:
            continue
        return calibration, path
    return None


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


@dataclass
class Workers:
    executor: Any
    source_names: list[str]
    describe: dict[str, Any]
    shutdown: Callable[[], None]
    observers: list[RunObserver] = field(default_factory=list)  # e.g. Ray metrics


def start_workers(config: RunConfig, checkpoint=None, run_id: str = "run") -> Workers:
    """Source, adapter and probe workers, restored from `checkpoint` when given."""
    if config.runtime.use_ray:
        from .actors import start_ray_workers

        workers = start_ray_workers(config, run_id)
    else:
        workers = start_local_workers(config)
    if checkpoint is not None:
        ex = workers.executor
        ex.get(ex.call("adapter", "load_state_dict", checkpoint.adapter))
        if checkpoint.probe is not None and config.probe.enabled:
            ex.get(ex.call("probe", "load_state_dict", checkpoint.probe))
    return workers


def start_local_workers(config: RunConfig) -> Workers:
    from adapters import ADAPTERS

    from .local import LocalExecutor
    from .workers import AdapterWorker, ProbeWorker, SidekickWorker, SourceWorker

    source = SourceWorker(config, config.runtime.threads)
    fisher_images = ADAPTERS.info(config.adapter.name).fisher_images  # 0: the adapter needs none
    fisher = source.first_images(fisher_images) if fisher_images else None
    adapter = AdapterWorker(config, fisher, config.runtime.threads)
    workers: dict[str, Any] = {"source-0": source, "adapter": adapter}
    if config.probe.enabled:
        workers["probe"] = ProbeWorker(config, config.runtime.threads)
    if config.estimation.duo_model:
        workers["sidekick"] = SidekickWorker(config, config.runtime.threads)
    ex = LocalExecutor(workers)
    sidekick = workers["sidekick"].describe() if "sidekick" in workers else {}
    return Workers(ex, ["source-0"], {**source.describe(), **adapter.describe(), **sidekick}, lambda: None)


def _file_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "driver.log")
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

