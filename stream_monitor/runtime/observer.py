"""What the run loop reports to: the Parquet sink, the dashboard, plain log lines.

Observers are driver-side callbacks in the style of Ray Train's `UserCallback`: they run in the
driver process, receive plain row dicts keyed by the columns of `stream_monitor.metrics.schema`,
and must not block the loop for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RunInfo:
    """Facts about a run, fixed at its start: the dashboard header and the report's title block."""

    run_id: str
    run_dir: str
    stream: str              # stream name, e.g. baseline_20_transition+speed_1000_seed_43
    base: str                # what the images are, e.g. "embedded glyphs (not ImageNet)" or "ImageNet (CCC shards)"
    model: str               # model name and weights id, e.g. "embedded_resnet20 c95a8913"
    adapter: str             # adapter name
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # the adapter's resolved options
    device: str = "cpu"
    start: int = 0           # first stream position of this run (non-zero after a resume)
    stop: int = 0            # stream position the run ends at
    batch_size: int = 64
    probe_every: int = 0     # adapter steps between probe evaluations (0: no probe)
    probe_size: int = 0
    has_labels: bool = True  # ground-truth columns will be filled
    num_classes: int = 0     # the model's
    # whether the served feed's estimators were calibrated on the adapter (window.calibrated_on_adapter),
    # which picks the online headline order
    adapter_calibrated: bool = False


class RunObserver(Protocol):
    """Receives every row the run produces, in the order the loop produces them."""

    def on_start(self, info: RunInfo) -> None: ...

    def on_step(self, row: dict[str, Any]) -> None: ...

    def on_probe(self, row: dict[str, Any]) -> None: ...

    def on_event(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def notify_health(observers, name: str, status: str, detail: str = "") -> None:
    """Tell the observers that have an `on_health(name, status, detail)` hook (the dashboards)
    how an actor is doing: ok, slow or dead."""
    for observer in observers:
        hook = getattr(observer, "on_health", None)
        if hook is not None:
            hook(name, status, detail)
