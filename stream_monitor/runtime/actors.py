"""The Ray shells around the plain workers, and the executor the run loop uses on Ray.

The actor classes are made once from the plain classes (`ray.remote(Worker)`, as Ray Data does
with `_MapWorker`), never redefined per run. The adapter actor has `max_restarts=0`: its state
is the experiment, so a dead adapter ends the run, which resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from adapters import ADAPTERS

from ..config import RunConfig
from .messages import WorkersDescription
from .ports import Workers
from .workers import AdapterWorker, ProbeWorker, SidekickWorker, StreamWorker, resolve_device

logger = logging.getLogger(__name__)

StreamActor = ray.remote(StreamWorker)
AdapterActor = ray.remote(AdapterWorker)
ProbeActor = ray.remote(ProbeWorker)
SidekickActor = ray.remote(SidekickWorker)


class RayExecutor:
    """Calls become actor tasks; handles are ObjectRefs passed on without a `ray.get`."""

    def __init__(self, actors: dict[str, Any]) -> None:
        self.actors = actors

    def call(self, worker: str, method: str, *args: Any, num_returns: int = 1) -> Any:
        remote = getattr(self.actors[worker], method)
        if num_returns != 1:
            remote = remote.options(num_returns=num_returns)
        return remote.remote(*args)

    def ready(self, handle: Any, timeout: float) -> bool:
        done, _ = ray.wait([handle], num_returns=1, timeout=timeout, fetch_local=False)
        return bool(done)

    def get(self, handle: Any) -> Any:
        return ray.get(handle)


def init_ray(config: RunConfig) -> bool:
    """Join `runtime.address`, or start a local Ray bound to localhost with no dashboard.

    Actor output goes to Ray's log files, not to this terminal, so it cannot tear the live
    dashboard (style_anchors.md 3.3). Returns whether this call started Ray (and so must stop it).
    """
    if ray.is_initialized():
        return False
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "configure_logging": False}
    if config.runtime.address:
        ray.init(address=config.runtime.address, **kwargs)
    else:
        # "local": a Ray of its own even when another one runs on this machine (`ray start`, a
        # second run); plain ray.init() would join that one and refuse num_cpus.
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, **kwargs)
    return True


def gpu_shares(config: RunConfig, cuda: bool) -> tuple[float, float]:
    """GPUs of the adapter actor and of each source actor.

    Source actors need a GPU share only to decode with nvjpeg (`source.decode_device=cuda`). By
    default the adapter takes the GPU but for the shares of the source actors and the probe, so
    that a run fits on one device; `runtime.num_gpus` sets the adapter's share explicitly.
    """
    source = config.source.num_gpus if config.source.decode_device == "cuda" else 0.0
    if config.runtime.num_gpus is not None:
        return config.runtime.num_gpus, source
    if not cuda:
        return 0.0, source
    shares = source * config.source.num_actors + (config.probe.num_gpus if config.probe.enabled else 0.0)
    return (1.0 - shares if shares < 1 else 1.0), source


def start_ray_workers(config: RunConfig, run_id: str = "run"):
    """The actors of one run, named `{run_id}/adapter`, `{run_id}/probe`, `{run_id}/stream-K`."""

    started_ray = init_ray(config)
    rt = config.runtime
    cuda = resolve_device(rt.device) == "cuda" if rt.address is None else rt.device == "cuda"
    num_gpus, source_gpus = gpu_shares(config, cuda)
    cpus = os.cpu_count() or 2
    # The adapter is the bottleneck; sources and the probe mostly wait, so they get a fraction
    # of a CPU for scheduling and one torch thread each.
    adapter_threads = rt.threads or max(1, cpus if not cuda else 2)
    actors: dict[str, Any] = {}
    names = []
    for k in range(config.source.num_actors):
        name = f"stream-{k}"
        actors[name] = StreamActor.options(num_cpus=0.25, num_gpus=source_gpus, name=f"{run_id}/{name}",
                                           max_restarts=2, max_task_retries=2).remote(config, 1)
        names.append(name)
    fisher_images = ADAPTERS.info(config.adapter.name).fisher_images  # 0: the adapter needs none
    fisher = actors["stream-0"].first_images.remote(fisher_images) if fisher_images else None
    actors["adapter"] = AdapterActor.options(num_cpus=1, num_gpus=num_gpus, max_restarts=0,
                                             name=f"{run_id}/adapter").remote(
        config, fisher, adapter_threads)
    if config.probe.enabled:
        actors["probe"] = ProbeActor.options(num_cpus=0.25, num_gpus=config.probe.num_gpus, max_restarts=0,
                                             name=f"{run_id}/probe").remote(config, 1)
    if config.estimation.duo_model:
        actors["sidekick"] = SidekickActor.options(num_cpus=0.25, max_restarts=0,
                                                   name=f"{run_id}/sidekick").remote(config, 1)
    try:
        ray.get([a.ping.remote() for a in actors.values()], timeout=rt.start_timeout_s)
    except GetTimeoutError:
        raise RuntimeError(
            f"Timed out after {rt.start_timeout_s:.0f} s starting the actors (adapter num_gpus={num_gpus}, "
            f"probe num_gpus={config.probe.num_gpus}); the cluster has {ray.cluster_resources()}. "
            f"Use --num-gpus 0 to run on CPU, or raise runtime.start_timeout_s."
        ) from None
    description = WorkersDescription(ray.get(actors["stream-0"].describe.remote()),
                                     ray.get(actors["adapter"].describe.remote()),
                                     ray.get(actors["sidekick"].describe.remote()) if "sidekick" in actors else None)
    ex = RayExecutor(actors)

    def shutdown() -> None:
        for actor in actors.values():
            try:
                ray.kill(actor)
            except Exception:  # already dead
                pass
        if started_ray:
            ray.shutdown()

    observers = []
    try:
        observers.append(RayMetrics(run_id))
    except Exception as error:  # metrics are optional: never fail a run for them
        logger.warning("Ray metrics are off: %s", error)
    return Workers(ex, names, description, shutdown, observers)


class RayMetrics:
    """Throughput and the label-free estimates as Ray metrics (`ray.util.metrics`), which Ray's
    metrics agent exports to Prometheus (`ray.init(_metrics_export_port=...)`, or a cluster's
    `ray start --metrics-export-port`). A driver-side observer, tagged with the run id."""

    def __init__(self, run_id: str) -> None:
        from ray.util.metrics import Counter, Gauge

        keys = ("run",)
        self.images = Counter("stream_monitor_images", "Stream images processed", tag_keys=keys)
        self.rate = Gauge("stream_monitor_images_per_second", "End-to-end throughput", tag_keys=keys)
        self.est_source = Gauge("stream_monitor_estimated_source_accuracy",
                                "Label-free estimate of the frozen model's accuracy on the cycle (%)", tag_keys=keys)
        self.est_online = Gauge("stream_monitor_estimated_online_accuracy",
                                "Label-free estimate of the served predictions' accuracy (%)", tag_keys=keys)
        self.warnings = Gauge("stream_monitor_collapse_warnings", "Collapse warnings active", tag_keys=keys)
        for metric in (self.images, self.rate, self.est_source, self.est_online, self.warnings):
            metric.set_default_tags({"run": run_id})
        self._last: tuple[float, int] | None = None
        self._active: set[str] = set()

    def on_start(self, info) -> None:
        pass

    def on_step(self, row: dict[str, Any]) -> None:
        images = row["stop"] - row["start"]
        self.images.inc(images)
        now = row["wall_time"]
        if self._last is not None and now > self._last[0]:
            self.rate.set(images / (now - self._last[0]))
        self._last = (now, images)

    def on_probe(self, row: dict[str, Any]) -> None:
        if row.get("est_source_acc") is not None:
            self.est_source.set(row["est_source_acc"])
        if row.get("est_online_acc") is not None:
            self.est_online.set(row["est_online_acc"])

    def on_event(self, row: dict[str, Any]) -> None:
        if row["kind"] == "warning":
            self._active.add(row["origin"])
        elif row["kind"] == "clear":
            self._active.discard(row["origin"])
        else:
            return
        self.warnings.set(len(self._active))

    def close(self) -> None:
        pass
