"""A run's numbers as TensorBoard scalars, live: a `RunObserver` around torch's `SummaryWriter`.

The x axis is the stream position (images read), the axis the dashboard and report use, so runs
of different batch sizes line up. Each run writes to ``LOGDIR/<run_id>``, so one TensorBoard
(``tensorboard --logdir LOGDIR``) compares runs. Tags:

- ``estimate/source_acc``, ``estimate/online_acc``: the headline label-free estimates (%), per probe;
- ``true/online_acc``, ``true/source_acc``: the labelled truth of the same windows, when labels exist;
- ``warning/active``: 1 while a collapse warning holds, 0 after it clears; its messages as text;
- ``step/mean_entropy``, ``step/images_per_step``: per adapter step (every `step_every`-th).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..runtime.observer import RunInfo

__all__ = ["TensorBoardObserver"]

#: probe-row column -> scalar tag
PROBE_SCALARS = {"est_source_acc": "estimate/source_acc", "est_online_acc": "estimate/online_acc",
                 "true_online_acc": "true/online_acc", "true_source_acc": "true/source_acc"}


class TensorBoardObserver:
    """Writes a run's estimates, truths and warnings to TensorBoard event files.

    Args:
        logdir: parent folder; this run's events go to ``logdir/<run_id>``.
        step_every: write the per-step scalars every this many adapter steps (they are many).
    """

    def __init__(self, logdir: str | Path, step_every: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self._writer_cls = SummaryWriter
        self.logdir = Path(logdir)
        self.step_every = max(1, int(step_every))
        self.writer = None
        self.position = 0

    def on_start(self, info: RunInfo) -> None:
        self.writer = self._writer_cls(log_dir=str(self.logdir / info.run_id))
        self.position = info.start
        self.writer.add_text("run", f"{info.stream} · {info.model} · adapter {info.adapter} · {info.device}",
                             info.start)

    def on_step(self, row: dict[str, Any]) -> None:
        self.position = int(row["stop"])
        if row["step"] % self.step_every == 0:
            self._scalar("step/mean_entropy", row.get("mean_entropy"))
            self._scalar("step/images_per_step", row.get("images"))

    def on_probe(self, row: dict[str, Any]) -> None:
        self.position = int(row["position"])
        for column, tag in PROBE_SCALARS.items():
            self._scalar(tag, row.get(column))

    def on_event(self, row: dict[str, Any]) -> None:
        if row["kind"] in ("warning", "clear"):
            self._scalar("warning/active", 1.0 if row["kind"] == "warning" else 0.0)
            self.writer.add_text(f"warning/{row['origin']}", f"{row['kind']}: {row['message']}", self.position)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _scalar(self, tag: str, value: Any) -> None:
        if value is not None and math.isfinite(float(value)):
            self.writer.add_scalar(tag, float(value), self.position)

    def __repr__(self) -> str:
        return f"TensorBoardObserver({str(self.logdir)!r})"
