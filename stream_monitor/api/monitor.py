"""`Monitor`: your classifier, your adapter and your stream through the runtime of `stream-monitor run`.

The monitor is a client of the same workers, loop, estimators, detectors, Parquet sink and
checkpoints as the CLI (`runtime.runner.run` with `runtime.components.Components`), so it writes
the same run directory, which `stream-monitor eval` and `stream-monitor report` read.

What the probe uses: Entropy Enigma's reference set is taken from the stream itself, the first
`probe_size` images of every probe cycle (Press et al., ICML 2024, as `stream-monitor run` does),
so nothing from the shipped assets is needed. What turns its flips (and the other estimators'
statistics) into accuracies is a calibration made for the model and adapter: without one the
headline estimates are None and every report says so (`ProbeReport.warnings`); the raw readings
(e.g. average confidence) stay in `ProbeReport.readings` and in the run directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, RunConfig, load_config
from ..rundir import RunDirectory, RunDirectoryError
from ..runtime.components import Components, CopiedModel, GivenStream
from ..runtime.observer import RunInfo
from ..runtime.runner import API_SOURCE_KIND, RunError, new_run_dir, run
from .adapters import adapter_factory, adapter_name, fisher_images
from .models import UserModel, wrap_model
from .records import ProbeReport, RecordObserver
from .streams import as_stream

__all__ = ["API_SOURCE_KIND", "Monitor", "MonitorError", "MonitorResult"]



class MonitorError(ValueError):
    """The monitor cannot run or resume as asked; the message says why and what to do."""


@dataclass
class MonitorResult:
    """How a monitored run ended, and its probe reports (also in `run_dir`, see `rundir.RunDirectory`)."""

    run_dir: Path
    status: str                   # finished, stopped (Ctrl-C) or failed
    images: int                   # images processed by this call
    seconds: float
    info: RunInfo
    probes: list[ProbeReport] = field(default_factory=list)
    error: str | None = None

    @property
    def last(self) -> ProbeReport | None:
        """The last probe report, or None when the run ended before its first probe."""
        return self.probes[-1] if self.probes else None


class Monitor:
    """Monitor a classifier that adapts online, without labels, on a stream of image batches.

    Args:
        model: any classifier `nn.Module` returning logits (N, classes) for float (N, 3, H, W) input.
        adapter: a registered adapter name (`stream-monitor list adapters`: "tent", "eata", "rdumb",
            "source" for none, ...), an object with the adapter protocol (`AdapterProtocol`:
            step / snapshot / reset / state_dict, and load_state_dict to resume), or a class that
            takes the model and returns one.
        mean, std: the model's input normalisation per RGB channel, for [0, 1] images.
        normalise: instead of mean and std, a callable from [0, 1] float images to model input.
        adapter_options: options of a registered adapter (e.g. {"lr": 1e-3}).
        probe_every: adapter steps between two probe snapshots.
        probe_size: images of the probe's reference set: the first images of each probe cycle.
        probe_cycle: steps per probe cycle (None: the adapter's reset period, else 1,000).
        flips_every: adapter steps between two flip counts, a multiple of probe_every (None: only
            at each probe cycle's last snapshot; the other snapshots give the estimates without
            the probe's forwards).
        batch_size: images per adapter step (a stream's own batches are re-cut to this size).
        calibration: a calibration file for this model and adapter (`calibrate_model`); None:
            uncalibrated, the estimates are raw readings (see the module docstring).
        out: the folder run directories are made in.
        device: where the adapter runs: cpu, cuda or auto.
        use_ray: run the adapter and the probe as Ray actors (the stream is read in this process).
        dashboard: show the live dashboard (plain log lines when stdout is not a terminal).
        callbacks: objects with any of on_probe(ProbeReport), on_step(StepReport),
            on_event(EventReport), called live in this process.
        settings: further `section.key=value` settings, as `stream-monitor run --set`.
        name: the model's name in run.json and the dashboard (default: its class name).

    Raises:
        MonitorError, ValueError, TypeError: a bad argument, before anything is written.

    Example:
        >>> import tempfile, torch, torchvision
        >>> from stream_monitor import Monitor
        >>> def batches(n=16):  # any iterable of (images, labels) or of images
        ...     g = torch.Generator().manual_seed(0)
        ...     for _ in range(n):
        ...         yield torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
        >>> monitor = Monitor(torchvision.models.resnet18(num_classes=10), adapter="tent",
        ...                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), batch_size=32,
        ...                   probe_every=4, probe_size=64, out=tempfile.mkdtemp())
        >>> result = monitor.run(batches())
        >>> result.status, len(result.probes), result.last.calibrated
        ('finished', 4, False)
    """

    def __init__(self, model: nn.Module, adapter: Any = "tent", *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 adapter_options: dict[str, Any] | None = None, probe_every: int = 100, probe_size: int = 1000,
                 probe_cycle: int | None = None, flips_every: int | None = None, batch_size: int = 64,
                 calibration: str | Path | None = None,
                 out: str | Path = "runs", device: str = "cpu", use_ray: bool = False, dashboard: bool = False,
                 callbacks: Sequence[Any] = (), settings: Sequence[str] = (), name: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
        self.model, self.adapter = model, adapter
        self.mean, self.std, self.normalise, self.name = mean, std, normalise, name
        self.adapter_options = dict(adapter_options or {})
        self.callbacks = list(callbacks)
        self.dashboard = dashboard
        self.calibration = Path(calibration) if calibration is not None else None
        if self.calibration is not None and not self.calibration.is_file():
            raise MonitorError(f"Calibration file {self.calibration} not found; make one with "
                               f"stream_monitor.calibrate_model(...) or leave calibration out (raw estimates).")
        self.factory = adapter_factory(adapter, self.adapter_options)  # an unknown adapter name fails here
        self._settings = [
            f"source.kind={API_SOURCE_KIND}", f"source.batch_size={batch_size}",
            f"adapter.name={adapter_name(adapter)}",
            f"probe.every={probe_every}", f"probe.size={probe_size}", f"probe.cycle={probe_cycle}",
            f"probe.flips_every={flips_every}",
            f"runtime.device={device}", f"runtime.use_ray={use_ray}", f"metrics.out={out}",
            f"dashboard.enabled={dashboard}", "runtime.max_images=None",
            f"estimation.calibration={str(self.calibration) if self.calibration else None}",
            *(f"adapter.options.{k}={v!r}" for k, v in self.adapter_options.items()
              if isinstance(v, (int, float, str, bool))),
            *settings,
        ]
        self.config(max_images=None)  # bad settings fail now, not when a run starts

    def config(self, max_images: int | None = None, name: str = "model") -> RunConfig:
        """The run config this monitor runs with (what config.yaml records)."""
        try:
            return load_config(None, [*self._settings, f"runtime.max_images={max_images}", f"model.name={name}"])
        except ConfigError as error:
            raise MonitorError(f"{error}") from None

    # ---- running -----------------------------------------------------------------------------------
    def run(self, stream: Any, *, max_images: int | None = None, run_dir: str | Path | None = None,
            stream_name: str | None = None) -> MonitorResult:
        """Monitor `stream` until it ends (or `max_images`, or Ctrl-C); a new run directory under `out`
        unless `run_dir` names an empty or missing folder.

        Args:
            stream: a dataset with __getitem__ and __len__ (item: image, or (image, label)), a
                DataLoader, a list of batches, or any iterable (a generator) of batches; a batch is
                images (N, 3, H, W), uint8 or float in [0, 1], or (images, labels).
            max_images: stop after this many images (None: the stream's end).
            run_dir: the run directory to write (default: a new one under `out`).
            stream_name: the stream's name in run.json and the run directory's name.
        """
        source, bundle = self.prepare(stream, stream_name)
        config = self.config(max_images, bundle.name)
        self._check_calibration(bundle, config)
        if run_dir is not None:
            run_dir = Path(run_dir)
            if run_dir.exists() and any(run_dir.iterdir()):
                raise MonitorError(f"{run_dir} is not empty; pass a new folder, or resume it with "
                                   f"Monitor.resume({str(run_dir)!r}, stream).")
        else:
            run_dir = new_run_dir(config, stream=source.name)
        return self._run(config, run_dir, source, bundle, resume=False)

    def resume(self, run_dir: str | Path, stream: Any, *, max_images: int | None = None) -> MonitorResult:
        """Continue a stopped or crashed run of this monitor at the exact stream position.

        Pass the same model (same weights), adapter and stream as the run that made `run_dir`;
        the rows are then exactly those of an uninterrupted run.

        Raises:
            MonitorError: the stream cannot be rewound (a generator: the message says what to pass
                instead), the model's weights differ from the run's, or `run_dir` is not a run
                directory of the Python API.
        """
        run_dir = Path(run_dir)
        try:
            directory = RunDirectory(run_dir)
            recorded = directory.config()
            info = directory.info()
        except RunDirectoryError as error:
            raise MonitorError(str(error)) from None
        if recorded.source.kind != API_SOURCE_KIND:
            raise MonitorError(f"{run_dir} was made by `stream-monitor run`; resume it with "
                               f"`stream-monitor run --resume {run_dir}`.")
        source, bundle = self.prepare(stream, None)
        refusal = getattr(source, "resume_refusal", None)
        if refusal is not None:
            raise MonitorError(f"Cannot resume {run_dir}: {refusal}.")
        digest = info.model.rpartition(" ")[2]
        if not bundle.sha256.startswith(digest):
            raise MonitorError(f"Cannot resume {run_dir}: it was run with model weights {digest}, and this model's "
                               f"are {bundle.sha256[:12]}. Pass the model as it was when the run started (resume "
                               f"reloads the adapted weights from the checkpoint).")
        if info.adapter != adapter_name(self.adapter):
            raise MonitorError(f"Cannot resume {run_dir}: it was run with adapter {info.adapter}, not "
                               f"{adapter_name(self.adapter)}.")
        config = self.config(max_images, bundle.name)
        return self._run(config, run_dir, source, bundle, resume=True)

    # ---- helpers -----------------------------------------------------------------------------------
    def prepare(self, stream: Any, stream_name: str | None = None) -> tuple[Any, UserModel]:
        """The stream as the runtime reads it and the model with its normalisation and class count,
        checked against each other (image size, labels); nothing is written."""
        source = as_stream(stream, None, stream_name)
        bundle = wrap_model(self.model, int(source.image_size), self.mean, self.std, self.normalise, self.name)
        set_classes = getattr(source, "set_classes", None)  # a shipped source knows its classes
        if set_classes is not None:
            set_classes(bundle.num_classes)
        return source, bundle

    def _check_calibration(self, bundle: UserModel, config: RunConfig) -> None:
        """A calibration for other weights, another adapter or probe size fails before a run directory exists
        (hyperparameters and cycle are checked once the adapter is built, as for `stream-monitor run`)."""
        if self.calibration is None:
            return
        from ..calibration.format import Calibration, Provenance

        provenance = Provenance(bundle.name, bundle.sha256, config.adapter.name, {}, config.probe.size, 0)
        Calibration.load(self.calibration).check(provenance, ("model", "model_sha256", "adapter", "probe_size"))

    def _run(self, config: RunConfig, run_dir: Path, source: Any, bundle: UserModel, resume: bool) -> MonitorResult:
        components = Components(CopiedModel(bundle), GivenStream(source), self.factory,
                                fisher_images(self.adapter), driver_stream=True)
        records = RecordObserver(self.callbacks, calibrated=False)
        reporter = None
        if self.dashboard:
            from ..dashboard.app import make_reporter

            reporter = make_reporter(enabled=True, refresh_per_second=config.dashboard.refresh_per_second)
        log = getattr(reporter, "log", None) or (lambda message: None)
        try:
            with reporter if hasattr(reporter, "__enter__") else contextlib.nullcontext():
                outcome = run(config, run_dir, reporter, resume, [records], log, components)
        except RunError as error:
            raise MonitorError(str(error)) from None
        return MonitorResult(outcome.run_dir, outcome.status, outcome.images, outcome.seconds, outcome.info,
                             records.reports, outcome.error)

