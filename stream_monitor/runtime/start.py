"""Starting a run's workers: in-process, or as Ray actors (`actors.start_ray_workers`)."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig
from .checkpoint import Checkpoint
from .components import Components, config_components
from .local import LocalExecutor
from .messages import WorkersDescription
from .ports import Workers
from .workers import AdapterWorker, ProbeWorker, SidekickWorker, StreamWorker

__all__ = ["start_local_workers", "start_workers"]


def start_workers(config: RunConfig, checkpoint: Checkpoint | None = None, run_id: str = "run",
                  components: Components | None = None) -> Workers:
    """Stream, adapter and probe workers (and the Duos sidekick), restored from `checkpoint` when given.

    `components` says where the model, stream and adapter come from; None: the names in `config`.
    """
    if config.runtime.use_ray:
        from .actors import start_ray_workers  # imports ray: only a Ray run pays for it

        workers = start_ray_workers(config, run_id, components)
    else:
        workers = start_local_workers(config, components)
    if checkpoint is not None:
        ex = workers.executor
        ex.get(ex.call("adapter", "load_state_dict", checkpoint.adapter))
        if checkpoint.probe is not None and config.probe.enabled:
            ex.get(ex.call("probe", "load_state_dict", checkpoint.probe))
    return workers


def start_local_workers(config: RunConfig, components: Components | None = None) -> Workers:
    """Every worker in this process, behind a `LocalExecutor` (tests, calibration, `runtime.use_ray=false`)."""
    components = components or config_components(config)
    source = StreamWorker(config, config.runtime.threads, components)
    fisher = source.first_images(components.fisher_images) if components.fisher_images else None
    adapter = AdapterWorker(config, fisher, config.runtime.threads, components)
    workers: dict[str, Any] = {"stream-0": source, "adapter": adapter}
    if config.probe.enabled:
        workers["probe"] = ProbeWorker(config, config.runtime.threads, components)
    sidekick = None
    if config.estimation.duo_model:
        sidekick = workers["sidekick"] = SidekickWorker(config, config.runtime.threads)
    description = WorkersDescription(source.describe(), adapter.describe(), sidekick and sidekick.describe())
    return Workers(LocalExecutor(workers), ["stream-0"], description, lambda: None,
                   stream_end=source.reached if description.stream.length is None else None)
