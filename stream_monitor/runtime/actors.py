"""The Ray shells around the plain workers, and the executor the run loop uses on Ray.

The actor classes are made once from the plain classes (`ray.remote(Worker)`, as Ray Data does
with `_MapWorker`), never redefined per run. The adapter actor has `max_restarts=0`: its state
is the experiment, so a dead adapter ends the run, which resumes from its last checkpoint.

A worker whose `__init__` raises does not die: its shell keeps the error and raises it from
`ping`, so the driver gets the original exception (a dead actor's error carries only its text)
at once, and Ray never restarts an actor for an error that would recur on every restart.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from typing import Any

import ray
from ray.exceptions import AuthenticationError, RayActorError, RayError, RayTaskError

from adapters import ADAPTERS

from ..config import RunConfig
from .messages import WorkersDescription
from .ports import Workers
from .workers import AdapterWorker, ProbeWorker, SidekickWorker, StreamWorker, resolve_device

logger = logging.getLogger(__name__)

#: Ray's variable holding a Ray Job's config (its runtime env) in the job's driver.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: After one actor failed to start, how long the others may take to report a more telling error.
FAILURE_GRACE_S = 10.0


class RayStartError(RuntimeError):
    """Ray could not be started or joined, or the actors did not start; the message says what to do."""


class _KeepsStartError:
    """Mixin before a worker class: a failing `__init__` is kept and raised by `ping`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._start_error: BaseException | None = None
        try:
            super().__init__(*args, **kwargs)
        except Exception as error:  # raised from ping(): Ray hands the driver the exception itself
            self._start_error = error

    def ping(self) -> Any:
        if self._start_error is not None:
            raise self._start_error
        return super().ping()


class StreamShell(_KeepsStartError, StreamWorker):
    pass


class AdapterShell(_KeepsStartError, AdapterWorker):
    pass


class ProbeShell(_KeepsStartError, ProbeWorker):
    pass


class SidekickShell(_KeepsStartError, SidekickWorker):
    pass


StreamActor = ray.remote(StreamShell)
AdapterActor = ray.remote(AdapterShell)
ProbeActor = ray.remote(ProbeShell)
SidekickActor = ray.remote(SidekickShell)


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
    """Join `runtime.address` (or RAY_ADDRESS, as inside a Ray Job), or start a local Ray whose
    sockets all bind to `runtime.ray_host` (loopback by default), without a dashboard.

    Actor output goes to Ray's log files, not to this terminal, so it cannot tear the live
    dashboard (style_anchors.md 3.3). Returns whether this call connected the driver (and so must
    disconnect it: `ray.shutdown()` leaves a joined cluster running).

    Raises:
        RayStartError: the cluster refused the token, could not be reached, or Ray did not start.
    """
    if ray.is_initialized():
        return False
    address = config.runtime.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"runtime_env": project_runtime_env(os.environ), "log_to_driver": False,
                              "configure_logging": False}
    if address:
        where = f"the Ray cluster at {address} ({'runtime.address' if config.runtime.address else 'RAY_ADDRESS'})"
        _ray_call(lambda: ray.init(address=address, **kwargs), where,
                  "start it (`ray start --head`), or unset RAY_ADDRESS and leave out --address for a local Ray")
        return True
    host = config.runtime.ray_host
    _ray_call(lambda: start_local_ray(host, num_cpus=max(2, os.cpu_count() or 2), **kwargs),
              f"a local Ray bound to {host} (runtime.ray_host)",
              "see Ray's logs under /tmp/ray/session_latest/logs, or join a running Ray with --address")
    return True


def start_local_ray(host: str = "127.0.0.1", **kwargs: Any) -> None:
    """A Ray of its own on this machine, every socket (GCS, raylet, workers, agents) bound to `host`.

    `address="local"`: a Ray of its own even when another one runs here (`ray start`, a second
    run); plain ray.init() would join that one and refuse num_cpus. Ray binds its servers to the
    node's IP, but turns a loopback `_node_ip_address` into the machine's outward IP unless Ray
    clusters are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported), hence the
    switch flipped for the duration of the start.
    """
    kwargs = {"include_dashboard": False, **kwargs}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name
        ip = ipaddress.ip_address("127.0.0.1") if host == "localhost" else None
    if ip is None or not ip.is_loopback:
        if ip is not None and ip.is_unspecified:
            raise ValueError(f"runtime.ray_host is an address of this machine that others reach it by (or "
                             f"127.0.0.1), not {host}: Ray's nodes also tell each other this address")
        ray.init(address="local", _node_ip_address=host, **kwargs)
        return
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def project_runtime_env(environ: dict[str, str] | os._Environ) -> dict[str, Any]:
    """The runtime env of this project's `ray.init`: OMP_WAIT_POLICY (spinning OpenMP threads stall
    small CPU steps on a shared machine), unless the Ray Job that runs this driver sets it: Ray
    refuses to merge two runtime envs that set the same variable, and the job's choice wins."""
    job = json.loads(environ.get(JOB_CONFIG_ENV) or "{}")
    job_vars = (job.get("runtime_env") or {}).get("env_vars") or {}
    env = {"OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env = {k: v for k, v in env.items() if k not in job_vars}
    return {"env_vars": env} if env else {}


def _ray_call(call, where: str, advice: str) -> None:
    try:
        call()
    except AuthenticationError as error:
        raise RayStartError(f"{where} refused this driver's token: {error}") from None
    except ConnectionError as error:
        raise RayStartError(f"could not reach {where}: {error}. To fix: {advice}.") from None
    except (RuntimeError, ValueError, OSError, RayError) as error:
        raise RayStartError(f"could not start or join {where}: {type(error).__name__}: {error}. "
                            f"To fix: {advice}.") from None


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
    """The actors of one run, named `{run_id}/adapter`, `{run_id}/probe`, `{run_id}/stream-K`.

    Raises:
        Exception: the error an actor's `__init__` raised, itself (e.g. FileNotFoundError).
        RayStartError: Ray did not start, or the actors did not within `runtime.start_timeout_s`.
    """
    started_ray = init_ray(config)
    rt = config.runtime
    actors: dict[str, Any] = {}

    def shutdown() -> None:
        for actor in actors.values():
            try:
                ray.kill(actor)
            except Exception:  # already dead
                pass
        if started_ray:
            ray.shutdown()

    try:
        cuda = resolve_device(rt.device) == "cuda" if rt.address is None else rt.device == "cuda"
        num_gpus, source_gpus = gpu_shares(config, cuda)
        cpus = os.cpu_count() or 2
        # The adapter is the bottleneck; sources and the probe mostly wait, so they get a fraction
        # of a CPU for scheduling and one torch thread each.
        adapter_threads = rt.threads or max(1, cpus if not cuda else 2)
        gpus = {"adapter": num_gpus}
        names = []
        for k in range(config.source.num_actors):
            name = f"stream-{k}"
            # Restarts only after a lost process (reads are idempotent); an error of __init__ is
            # no death (the shell keeps it), so it is never retried.
            actors[name] = StreamActor.options(num_cpus=0.25, num_gpus=source_gpus, name=f"{run_id}/{name}",
                                               max_restarts=2, max_task_retries=2).remote(config, 1)
            gpus[name] = source_gpus
            names.append(name)
        fisher_images = ADAPTERS.info(config.adapter.name).fisher_images  # 0: the adapter needs none
        fisher = actors["stream-0"].first_images.remote(fisher_images) if fisher_images else None
        actors["adapter"] = AdapterActor.options(num_cpus=1, num_gpus=num_gpus, max_restarts=0,
                                                 name=f"{run_id}/adapter").remote(
            config, fisher, adapter_threads)
        if config.probe.enabled:
            actors["probe"] = ProbeActor.options(num_cpus=0.25, num_gpus=config.probe.num_gpus, max_restarts=0,
                                                 name=f"{run_id}/probe").remote(config, 1)
            gpus["probe"] = config.probe.num_gpus
        if config.estimation.duo_model:
            actors["sidekick"] = SidekickActor.options(num_cpus=0.25, max_restarts=0,
                                                       name=f"{run_id}/sidekick").remote(config, 1)
        wait_started(actors, rt.start_timeout_s, gpus)
        description = WorkersDescription(
            ray.get(actors["stream-0"].describe.remote()), ray.get(actors["adapter"].describe.remote()),
            ray.get(actors["sidekick"].describe.remote()) if "sidekick" in actors else None)
    except BaseException:
        shutdown()
        raise
    ex = RayExecutor(actors)

    observers = []
    try:
        observers.append(RayMetrics(run_id))
    except Exception as error:  # metrics are optional: never fail a run for them
        logger.warning("Ray metrics are off: %s", error)
    return Workers(ex, names, description, shutdown, observers)


def wait_started(actors: dict[str, Any], timeout_s: float, gpus: dict[str, float]) -> None:
    """Return once every actor answers `ping`; raise the first start error as it arrives.

    An error raised in a worker's `__init__` is raised here as itself. After a first failure the
    others get `FAILURE_GRACE_S` to report, because an actor can die of another's error (the
    adapter of a stream that failed): a worker's own exception, in declaration order, beats a death.
    """
    refs = {actors[name].ping.remote(): name for name in actors}
    order = list(actors)
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    failures: dict[str, RayError] = {}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            if failures:
                break
            raise RayStartError(start_timeout_message(timeout_s, [refs[r] for r in pending], gpus,
                                                      ray.cluster_resources()))
        done, pending = ray.wait(pending, num_returns=1, timeout=min(left, FAILURE_GRACE_S) if failures else left)
        if failures and not done:
            break
        for ref in done:
            try:
                ray.get(ref)
            except RayError as error:
                failures[refs[ref]] = error
        if any(_own_error(e) is not None for e in failures.values()):
            break
    if failures:
        name = min(failures, key=lambda n: (_own_error(failures[n]) is None, order.index(n)))
        error = failures[name]
        own = _own_error(error)
        if own is not None:
            own.add_note(f"(raised in the Ray actor {name} while it started)")
            raise own
        raise RayStartError(f"the Ray actor {name} died while it started: {error}") from None


def _own_error(error: RayError) -> BaseException | None:
    """The exception a worker raised, inside Ray's wrapper; None for a death or a Ray failure."""
    if isinstance(error, RayTaskError) and not isinstance(error, RayActorError):
        cause = error.cause
        if cause is not None and not isinstance(cause, RayError):
            return cause
    return None


def start_timeout_message(timeout_s: float, waiting: list[str], gpus: dict[str, float],
                          cluster: dict[str, float]) -> str:
    """What a start-up timeout says: how to give it longer, and GPUs only when some were asked for."""
    asked = {name: share for name, share in gpus.items() if share}
    message = (f"the Ray actors {', '.join(waiting)} did not start within runtime.start_timeout_s = "
               f"{timeout_s:g} s. On a busy machine give them longer, e.g. --set runtime.start_timeout_s="
               f"{max(600, 4 * timeout_s):g}")
    if asked:
        shares = ", ".join(f"{name} {share:g}" for name, share in asked.items())
        message += (f". They ask for GPUs ({shares}) and the cluster has {cluster.get('GPU', 0):g}: "
                    f"if it has none free, use --num-gpus 0 --device cpu to run on CPU")
    return message + "."


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
        # the headlines' 90% intervals and out-of-support flags (estimation/headline.py), one gauge per column
        self.bounds = {column: Gauge(f"stream_monitor_{column}", description, tag_keys=keys) for column, description in (
            ("est_source_lo", "Lower end of the source estimate's 90% interval (%)"),
            ("est_source_hi", "Upper end of the source estimate's 90% interval (%)"),
            ("est_online_lo", "Lower end of the online estimate's 90% interval (%)"),
            ("est_online_hi", "Upper end of the online estimate's 90% interval (%)"),
            ("est_source_out_of_support", "1 while the source window lies outside the calibration's support"),
            ("est_online_out_of_support", "1 while the online window lies outside the calibration's support"))}
        for metric in (self.images, self.rate, self.est_source, self.est_online, self.warnings, *self.bounds.values()):
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
        for column, gauge in self.bounds.items():
            if row.get(column) is not None:
                gauge.set(float(row[column]))

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
