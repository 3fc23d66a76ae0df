"""A run's live numbers as Prometheus metrics: one definition of the families, two exporters.

- `FAMILIES` defines every metric once: name (units in the name, Prometheus' naming guide), kind
  and help. Accuracies are ratios in [0, 1] here (the tables keep percent), labelled with `LABELS`.
- `MetricsObserver` is a run observer (`runtime.observer.RunObserver`) that turns the run's rows into
  metric updates, so the run loop knows nothing of Prometheus; every series exists from `on_start`
  (accuracies NaN until the first probe, warnings 0), except the interval bounds, which appear once
  an estimate carries an interval.
- Exporters (`MetricsExporter`): `PrometheusClientExporter`, an HTTP endpoint of this process
  (`prometheus_client`, `--metrics-port`), and `RayExporter`, `ray.util.metrics`, which Ray's metrics
  agent on each node exports with the prefix `ray_` (`ray start --metrics-export-port`).

The exact series names each path exposes are `exposed_name(family, ray=...)`; docs/metrics.md lists them.
"""

from __future__ import annotations

import math
import sys
import threading
from collections import deque
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import MetricsConfig
    from ..runtime.observer import RunInfo

__all__ = ["FAMILIES", "LABELS", "RAY_PREFIX", "MetricFamily", "MetricKind", "MetricLabels", "MetricsExporter",
           "MetricsObserver", "MetricsPortError", "PrometheusClientExporter", "RayExporter", "exposed_name",
           "metrics_observer", "serve"]

#: What every series is labelled with: which run, and what it runs (RunInfo's fields of the same names).
LABELS = ("run", "adapter", "stream", "model")
#: Ray's metrics agent exports `ray.util.metrics` under this prefix.
RAY_PREFIX = "ray_"


class MetricKind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class MetricFamily:
    """One metric. `name` is as registered: exporters add a counter's `_total` (and Ray its `ray_`)."""

    name: str
    kind: MetricKind
    help: str
    optional: bool = False  # no series until a value arrives (an interval bound of an estimate without one)


def _counter(name: str, help: str) -> MetricFamily:
    return MetricFamily(name, MetricKind.COUNTER, help)


def _gauge(name: str, help: str, optional: bool = False) -> MetricFamily:
    return MetricFamily(name, MetricKind.GAUGE, help, optional)


IMAGES = _counter("stream_monitor_images", "Stream images served to the adapter")
SKIPPED = _counter("stream_monitor_skipped_images", "Unreadable stream images skipped (counted, logged)")
RESETS = _counter("stream_monitor_resets", "Adapter resets to the source model")
RATE = _gauge("stream_monitor_images_per_second", "End-to-end throughput over the last 10 s of steps")
WARNINGS = _gauge("stream_monitor_collapse_warnings", "Collapse warnings active (0: none)")
EST_ONLINE = _gauge("stream_monitor_estimated_online_accuracy_ratio",
                    "Label-free estimate of the served predictions' accuracy on the probe window, in [0, 1]")
EST_SOURCE = _gauge("stream_monitor_estimated_source_accuracy_ratio",
                    "Label-free estimate of the frozen source model's accuracy on the probe window, in [0, 1]")
EST_ONLINE_LOWER = _gauge("stream_monitor_estimated_online_accuracy_lower_ratio",
                          "Lower bound of the online estimate's interval, in [0, 1]", optional=True)
EST_ONLINE_UPPER = _gauge("stream_monitor_estimated_online_accuracy_upper_ratio",
                          "Upper bound of the online estimate's interval, in [0, 1]", optional=True)
EST_SOURCE_LOWER = _gauge("stream_monitor_estimated_source_accuracy_lower_ratio",
                          "Lower bound of the source estimate's interval, in [0, 1]", optional=True)
EST_SOURCE_UPPER = _gauge("stream_monitor_estimated_source_accuracy_upper_ratio",
                          "Upper bound of the source estimate's interval, in [0, 1]", optional=True)
OUT_OF_SUPPORT_ONLINE = _gauge("stream_monitor_estimated_online_out_of_support",
                               "1 while the online estimate's window lies outside its calibration's support",
                               optional=True)
OUT_OF_SUPPORT_SOURCE = _gauge("stream_monitor_estimated_source_out_of_support",
                               "1 while the source estimate's window lies outside its calibration's support",
                               optional=True)
TRUE_ONLINE = _gauge("stream_monitor_true_online_accuracy_ratio",
                     "Served predictions' accuracy on the probe window from the labels (evaluation runs), in [0, 1]")
TRUE_SOURCE = _gauge("stream_monitor_true_source_accuracy_ratio",
                     "Frozen source model's accuracy on the probe window from the labels, in [0, 1]")

FAMILIES: tuple[MetricFamily, ...] = (IMAGES, SKIPPED, RESETS, RATE, WARNINGS, EST_ONLINE, EST_SOURCE,
                                      EST_ONLINE_LOWER, EST_ONLINE_UPPER, EST_SOURCE_LOWER, EST_SOURCE_UPPER,
                                      OUT_OF_SUPPORT_ONLINE, OUT_OF_SUPPORT_SOURCE, TRUE_ONLINE, TRUE_SOURCE)

#: The probe row's columns behind each gauge, with the factor that takes them to the gauge's unit
#: (percent to ratio). The interval and support columns are the headlines' (probe schema 6); a row
#: without them, or with them null (no interval at this window), leaves those gauges unexported.
PROBE_GAUGES: tuple[tuple[str, MetricFamily, float], ...] = (
    ("est_online_acc", EST_ONLINE, 0.01), ("est_source_acc", EST_SOURCE, 0.01),
    ("est_online_lo", EST_ONLINE_LOWER, 0.01), ("est_online_hi", EST_ONLINE_UPPER, 0.01),
    ("est_source_lo", EST_SOURCE_LOWER, 0.01), ("est_source_hi", EST_SOURCE_UPPER, 0.01),
    ("est_online_out_of_support", OUT_OF_SUPPORT_ONLINE, 1.0),
    ("est_source_out_of_support", OUT_OF_SUPPORT_SOURCE, 1.0),
    ("true_online_acc", TRUE_ONLINE, 0.01), ("true_source_acc", TRUE_SOURCE, 0.01),
)


def exposed_name(family: MetricFamily, ray: bool = False) -> str:
    """The series name Prometheus stores: `_total` after a counter, `ray_` before anything Ray exports."""
    name = family.name + ("_total" if family.kind == MetricKind.COUNTER else "")
    return RAY_PREFIX + name if ray else name


@dataclass(frozen=True)
class MetricLabels:
    """The label values of one run's series."""

    run: str
    adapter: str
    stream: str
    model: str

    @classmethod
    def of(cls, info: RunInfo) -> MetricLabels:
        return cls(run=info.run_id, adapter=info.adapter, stream=info.stream, model=info.model)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class MetricsExporter(Protocol):
    """Where metric updates go. Gauges are set; counters grow by `amount` >= 0 (0 creates the series).
    `refresh(now)` is called with every step's wall time, for exporters whose gauges need re-recording."""

    def set(self, family: MetricFamily, labels: MetricLabels, value: float) -> None: ...

    def inc(self, family: MetricFamily, labels: MetricLabels, amount: float) -> None: ...

    def refresh(self, now: float) -> None: ...

    def release(self, labels: MetricLabels) -> None: ...


class PrometheusClientExporter:
    """The families in a `prometheus_client` registry, for this process' HTTP endpoint (`serve`) or a test."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        kinds = {MetricKind.COUNTER: Counter, MetricKind.GAUGE: Gauge}
        self._metrics = {f.name: kinds[f.kind](f.name, f.help, LABELS, registry=self.registry) for f in FAMILIES}

    def set(self, family: MetricFamily, labels: MetricLabels, value: float) -> None:
        self._metrics[family.name].labels(**labels.as_dict()).set(value)

    def inc(self, family: MetricFamily, labels: MetricLabels, amount: float) -> None:
        self._metrics[family.name].labels(**labels.as_dict()).inc(amount)

    def refresh(self, now: float) -> None:
        """Nothing to do: the registry keeps every value until it changes."""

    def release(self, labels: MetricLabels) -> None:
        """Keep the ended run's last values: the endpoint is scraped after a short run ends, too."""


class RayExporter:
    """The families as `ray.util.metrics`, recorded in this process (a Ray driver or a task's worker)
    and exported by the node's Ray metrics agent. One instance per process: Ray keys metrics by name.

    Ray exports a gauge value once and its agent drops it two report intervals later (Ray 2.60,
    `ray/_private/telemetry/open_telemetry_metric_recorder.py`, gauge TTL), so a gauge set once (the
    warnings at 0, an estimate between probes) would vanish: `refresh` records every gauge's last
    value again at most every `refresh_s` seconds.
    """

    def __init__(self, refresh_s: float = 2.0) -> None:
        from ray.util.metrics import Counter, Gauge

        kinds = {MetricKind.COUNTER: Counter, MetricKind.GAUGE: Gauge}
        self._metrics = {f.name: kinds[f.kind](f.name, description=f.help, tag_keys=LABELS) for f in FAMILIES}
        self._gauges: dict[tuple[str, MetricLabels], float] = {}
        self.refresh_s = refresh_s
        self._refreshed = -math.inf

    def set(self, family: MetricFamily, labels: MetricLabels, value: float) -> None:
        self._gauges[(family.name, labels)] = value
        self._metrics[family.name].set(value, tags=labels.as_dict())

    def refresh(self, now: float) -> None:
        if now - self._refreshed < self.refresh_s:
            return
        self._refreshed = now
        for (name, labels), value in self._gauges.items():
            self._metrics[name].set(value, tags=labels.as_dict())

    def release(self, labels: MetricLabels) -> None:
        """Stop recording an ended run's gauges (the next run of a bench task's process keeps refreshing)."""
        self._gauges = {key: value for key, value in self._gauges.items() if key[1] != labels}

    def inc(self, family: MetricFamily, labels: MetricLabels, amount: float) -> None:
        if amount > 0:  # Ray's Counter refuses 0: its series appears with the first image
            self._metrics[family.name].inc(amount, tags=labels.as_dict())


class MetricsObserver:
    """A run observer that exports the run's throughput, estimates and warnings to `exporters`.

    Args:
        exporters: where the updates go (one or more `MetricsExporter`).
        rate_window_s: the throughput gauge is the images of the steps in this many seconds, over
            their time span (a single step's rate jumps with every in-flight window refill).
    """

    def __init__(self, exporters: list[MetricsExporter], rate_window_s: float = 10.0) -> None:
        self.exporters = list(exporters)
        self.rate_window_s = rate_window_s
        self.labels: MetricLabels | None = None
        self._steps: deque[tuple[float, int]] = deque()
        self._active: set[str] = set()

    def _set(self, family: MetricFamily, value: float) -> None:
        for exporter in self.exporters:
            exporter.set(family, self.labels, value)

    def _inc(self, family: MetricFamily, amount: float) -> None:
        for exporter in self.exporters:
            exporter.inc(family, self.labels, amount)

    def on_start(self, info: RunInfo) -> None:
        self.labels = MetricLabels.of(info)
        for family in FAMILIES:
            if family.optional or (family in (TRUE_ONLINE, TRUE_SOURCE) and not info.has_labels):
                continue
            if family.kind == MetricKind.COUNTER:
                self._inc(family, 0)
            else:  # NaN: no value yet, a gap in a graph rather than a false 0 % accuracy
                self._set(family, 0.0 if family in (RATE, WARNINGS) else math.nan)

    def on_step(self, row: dict[str, Any]) -> None:
        for exporter in self.exporters:
            exporter.refresh(row["wall_time"])
        self._inc(IMAGES, row["images"])
        if row.get("skipped"):
            self._inc(SKIPPED, row["skipped"])
        now = row["wall_time"]
        self._steps.append((now, row["images"]))
        while now - self._steps[0][0] > self.rate_window_s:
            self._steps.popleft()
        span = now - self._steps[0][0]
        if span > 0:  # the first step of the window only marks its start
            self._set(RATE, sum(images for _, images in list(self._steps)[1:]) / span)

    def on_probe(self, row: dict[str, Any]) -> None:
        for column, family, factor in PROBE_GAUGES:
            value = row.get(column)
            if value is not None:
                self._set(family, float(value) * factor)
            elif not family.optional and column in row:  # not computable at this window: no stale value
                self._set(family, math.nan)

    def on_event(self, row: dict[str, Any]) -> None:
        kind = row["kind"]
        if kind == "reset":
            self._inc(RESETS, 1)
            return
        if kind == "warning":
            self._active.add(row["origin"])
        elif kind == "clear":
            self._active.discard(row["origin"])
        else:
            return
        self._set(WARNINGS, len(self._active))

    def close(self) -> None:
        if self.labels is not None:
            for exporter in self.exporters:
                exporter.release(self.labels)


class MetricsPortError(RuntimeError):
    """The `--metrics-port` endpoint could not listen."""


_served: dict[tuple[str, int], PrometheusClientExporter] = {}
_ray_exporter: RayExporter | None = None
_lock = threading.Lock()


def serve(host: str, port: int) -> PrometheusClientExporter:
    """An exporter whose registry this process serves at http://HOST:PORT/metrics; the same one for
    every run of the process on that address (a `bench --no-ray` runs its jobs one after another).

    Raises:
        MetricsPortError: the address is in use or not this machine's, with what to do.
    """
    from prometheus_client import start_http_server

    with _lock:
        if (host, port) not in _served:
            exporter = PrometheusClientExporter()
            try:
                start_http_server(port, addr=host, registry=exporter.registry)
            except OSError as error:
                raise MetricsPortError(f"--metrics-port {port}: cannot listen on {host}:{port} "
                                       f"({error.strerror or error}). Pick a free port (e.g. --metrics-port "
                                       f"{port + 1}), or set metrics.host to an address of this machine.") from None
            _served[(host, port)] = exporter
        return _served[(host, port)]


def _ray_running() -> bool:
    """Whether this process is connected to Ray (a Ray run's driver, a bench task), without importing it."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def metrics_observer(config: MetricsConfig) -> MetricsObserver | None:
    """The run's metrics observer: Ray's metrics when this process is on Ray, and this process'
    endpoint when `metrics.port` is set; None when neither applies."""
    global _ray_exporter
    exporters: list[MetricsExporter] = []
    if config.ray and _ray_running():
        with _lock:
            if _ray_exporter is None:
                _ray_exporter = RayExporter()
        exporters.append(_ray_exporter)
    if config.port is not None:
        exporters.append(serve(config.host, config.port))
    return MetricsObserver(exporters) if exporters else None
