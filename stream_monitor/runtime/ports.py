"""The ports the run loop is written against, so it runs in-process (tests, calibration) or on Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .messages import WorkersDescription
from .observer import RunObserver

__all__ = ["Executor", "Workers"]


class Executor(Protocol):
    """Calls on named workers ("adapter", "probe", "stream-0", ...). Handles are opaque: Ray
    object refs, or resolved values in-process. A handle passed as an argument is resolved on
    the worker's side."""

    def call(self, worker: str, method: str, *args: Any, num_returns: int = 1) -> Any: ...

    def ready(self, handle: Any, timeout: float) -> bool: ...

    def get(self, handle: Any) -> Any: ...


@dataclass
class Workers:
    """A run's started workers: the port the loop calls them through, and how to stop them."""

    executor: Executor
    source_names: list[str]        # the stream workers, used round-robin
    description: WorkersDescription
    shutdown: Callable[[], None]
    observers: list[RunObserver] = field(default_factory=list)  # what the workers add to the run's observers
    # a stream of unknown length, read in the driver (a generator): position -> how far it reaches,
    # up to that position; the loop reads no further than it reaches
    stream_end: Callable[[int], int] | None = None
