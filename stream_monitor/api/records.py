"""What a monitor reports, as typed records: live to callbacks, and read back from a run directory.

Each record is built from the rows the run writes (`stream_monitor.metrics.schema`), so what a
callback receives during a run is exactly what `read_probes(run_dir)` returns afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..runtime.observer import RunInfo

__all__ = ["EstimateReading", "EventReport", "MonitorCallback", "ProbeReport", "StepReport", "UNCALIBRATED_NOTE"]

#: Said with every estimate of a run without a calibration for its model and adapter.
UNCALIBRATED_NOTE = ("uncalibrated: no calibration was made for this model and adapter, so there is no headline "
                     "estimate; `readings` holds the raw estimators (e.g. average-confidence, the served "
                     "predictions' mean top-class probability, which overstates accuracy under shift). Calibrate on "
                     "labelled held-out data with stream_monitor.calibrate_model(...) and pass the file as "
                     "calibration=")


def _stored(value: float | None) -> float | None:
    """A percentage as the tables store it (float32), so a live record equals the one read back."""
    return None if value is None else float(np.float32(value))


@dataclass(frozen=True)
class EstimateReading:
    """One estimator's reading on one probe window (a row of the `estimates` table)."""

    estimator: str
    feed: str                # whose outputs it read: served (the adapting model) or frozen (the source model)
    target: str              # what it estimates: source (frozen model's accuracy) or online (served accuracy)
    value: float | None      # percent; None when not computable (no calibration, warming up)
    interval: tuple[float, float] | None = None
    extrapolated: bool | None = None  # the window lies outside the calibration's range

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EstimateReading":
        low, high = row.get("interval_low"), row.get("interval_high")
        return cls(row["estimator"], row["feed"], row["target"], _stored(row["value"]),
                   (_stored(low), _stored(high)) if low is not None and high is not None else None,
                   row.get("extrapolated"))


@dataclass(frozen=True)
class ProbeReport:
    """The estimates of one probe window [window_start, window_stop) of the stream.

    Attributes:
        step: adapter steps done when the snapshot was taken.
        position: stream position (images) at that step.
        source_accuracy, online_accuracy: the headline estimates (percent) of the frozen source
            model's accuracy on the window and of the served predictions' accuracy; None without a
            calibration (see `calibrated` and `warnings`) or while warming up.
        source_method, online_method: the estimators that gave them.
        true_source_accuracy, true_online_accuracy: the same from labels, when the stream has them.
        flips, probe_size: Entropy Enigma's label flips of the snapshot on the reference set; None at
            a snapshot that counts none (by default only a probe cycle's last one does: `flips_every`).
        calibrated: a calibration for this model and adapter served the estimates.
        collapse_warning: a collapse detector is raised at this window.
        warnings: what to know about these numbers, in words (active detectors, calibration).
        readings: every estimator's reading on the window, calibrated or raw.
    """

    step: int
    position: int
    window_start: int
    window_stop: int
    source_accuracy: float | None
    source_method: str | None
    online_accuracy: float | None
    online_method: str | None
    true_source_accuracy: float | None
    true_online_accuracy: float | None
    flips: int | None
    probe_size: int | None
    calibrated: bool
    collapse_warning: bool
    warnings: tuple[str, ...] = ()
    readings: tuple[EstimateReading, ...] = ()

    def reading(self, estimator: str, feed: str = "served") -> EstimateReading | None:
        """The reading of `estimator` on `feed`, or None."""
        return next((r for r in self.readings if r.estimator == estimator and r.feed == feed), None)

    @classmethod
    def from_rows(cls, probe: dict[str, Any], estimates: Iterable[dict[str, Any]], calibrated: bool,
                  active: Iterable[str] = ()) -> "ProbeReport":
        warnings = tuple(f"collapse warning from {name}" for name in active)
        source, online = _stored(probe.get("est_source_acc")), _stored(probe.get("est_online_acc"))
        source_method, online_method = probe.get("est_source_method"), probe.get("est_online_method")
        if not calibrated:
            source = online = source_method = online_method = None
            warnings += (UNCALIBRATED_NOTE,)
        elif probe.get("est_extrapolated"):
            warnings += ("the window lies outside the range the calibration was fitted on: treat the source "
                         "estimate as rough",)
        return cls(probe["step"], probe["position"], probe["window_start"], probe["window_stop"], source, source_method,
                   online, online_method, _stored(probe.get("true_source_acc")), _stored(probe.get("true_online_acc")),
                   probe.get("flips"), probe.get("probe_size"), calibrated, bool(probe.get("warning")), warnings,
                   tuple(EstimateReading.from_row(r) for r in estimates))


@dataclass(frozen=True)
class StepReport:
    """One adapter step: the batch's stream positions and what the served predictions looked like."""

    step: int
    start: int
    stop: int
    images: int
    mean_confidence: float | None   # mean top-class probability of the served predictions
    mean_entropy: float | None
    correct: int | None             # served predictions that match the labels (None: no labels)
    reset: bool                     # the adapter was reset after this step

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "StepReport":
        return cls(row["step"], row["start"], row["stop"], row["images"], row.get("mean_confidence"),
                   row.get("mean_entropy"), row.get("correct"), bool(row.get("reset")))


@dataclass(frozen=True)
class EventReport:
    """Something that happened: start, probe cycle, checkpoint, reset, warning, clear, error, stop."""

    step: int
    kind: str
    origin: str
    message: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EventReport":
        return cls(row["step"], row["kind"], row["origin"], row["message"])


def calibrated(run_dir: Any) -> bool:
    """Whether a run's served estimates read a calibration for its model and adapter (`RunDirectory`)."""
    return bool({"served", "flips"} & set(run_dir.context().origins))


class MonitorCallback(Protocol):
    """Receives a monitor's records as the run produces them, in the driver process; every hook is
    optional (define the ones you need) and must return quickly."""

    def on_probe(self, report: ProbeReport) -> None: ...

    def on_step(self, report: StepReport) -> None: ...

    def on_event(self, report: EventReport) -> None: ...


@dataclass
class RecordObserver:
    """A `RunObserver` that turns rows into records for callbacks. The loop writes a probe row and
    then its estimate rows, so a `ProbeReport` goes out when the next row of another kind arrives."""

    callbacks: list[Any]
    calibrated: bool
    _probe: dict[str, Any] | None = None
    _estimates: list[dict[str, Any]] = field(default_factory=list)
    _active: list[str] = field(default_factory=list)
    reports: list[ProbeReport] = field(default_factory=list)

    def on_start(self, info: RunInfo) -> None:
        from ..rundir import RunDirectory

        self.calibrated = calibrated(RunDirectory(info.run_dir))

    def on_step(self, row: dict[str, Any]) -> None:
        self._flush()
        self._send("on_step", StepReport.from_row(row))

    def on_probe(self, row: dict[str, Any]) -> None:
        self._flush()
        self._probe = row

    def on_estimate(self, row: dict[str, Any]) -> None:
        self._estimates.append(row)

    def on_event(self, row: dict[str, Any]) -> None:
        self._flush()
        if row["kind"] == "warning":
            self._active.append(row["origin"])
        elif row["kind"] == "clear" and row["origin"] in self._active:
            self._active.remove(row["origin"])
        self._send("on_event", EventReport.from_row(row))

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._probe is None:
            return
        report = ProbeReport.from_rows(self._probe, self._estimates, self.calibrated, self._active)
        self._probe, self._estimates = None, []
        self.reports.append(report)
        self._send("on_probe", report)

    def _send(self, hook: str, record: Any) -> None:
        for callback in self.callbacks:
            method: Callable[[Any], None] | None = getattr(callback, hook, None)
            if method is not None:
                method(record)
