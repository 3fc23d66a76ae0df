"""Experiment trackers beside the run directory: TensorBoard for a run, MLflow for a bench.

Both are optional extras (``pip install 'tta-stream-monitor[tensorboard]'``, ``[mlflow]``): the core
install never imports them, and asking for one that is not installed is a `TrackerMissing`
error that names the extra, raised before the run starts.
"""

from __future__ import annotations

import importlib.util

from ..config import RunConfig
from ..runtime.observer import RunObserver

__all__ = ["TrackerMissing", "require", "tracker_observers"]


class TrackerMissing(RuntimeError):
    """A tracker was asked for whose package is not installed; the message says which extra to install."""


def require(module: str, extra: str, asked_by: str) -> None:
    """Raise TrackerMissing unless `module` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise TrackerMissing(f"{asked_by} needs the `{module}` package, which is not installed. Install the extra: "
                             f"pip install 'tta-stream-monitor[{extra}]' (or pip install {module}), or leave {asked_by} "
                             f"out.")


def tracker_observers(config: RunConfig) -> list[RunObserver]:
    """The tracker observers a run's config asks for (metrics.tensorboard), checked and built."""
    observers: list[RunObserver] = []
    if config.metrics.tensorboard:
        require("tensorboard", "tensorboard", "metrics.tensorboard (--tensorboard DIR)")
        from .tensorboard_observer import TensorBoardObserver

        observers.append(TensorBoardObserver(config.metrics.tensorboard))
    return observers
