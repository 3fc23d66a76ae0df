"""The in-process executor: the run loop against plain worker objects, without Ray.

The same loop runs on Ray (`actors.RayExecutor`); this one calls each method at once, in the
order the loop submits, which is the order a single-threaded Ray actor runs them in
(ray-core/actors/task-orders). Used for unit tests, debugging (`runtime.use_ray=false`) and benchmarks.
"""

from __future__ import annotations

from typing import Any


class _Done:
    """A finished call: its value, or the exception it raised (re-raised by `get`)."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class LocalExecutor:
    def __init__(self, workers: dict[str, Any]) -> None:
        self.workers = workers

    def call(self, worker: str, method: str, *args: Any, num_returns: int = 1) -> Any:
        resolved = [self.get(a) if isinstance(a, _Done) else a for a in args]
        try:
            value = getattr(self.workers[worker], method)(*resolved)
        except Exception as error:  # surfaced by get(), as Ray surfaces a task's error
            return _Done(error=error) if num_returns == 1 else [_Done(error=error)] * num_returns
        if num_returns == 1:
            return _Done(value)
        if len(value) != num_returns:
            raise RuntimeError(f"{worker}.{method} returned {len(value)} values, expected {num_returns}")
        return [_Done(v) for v in value]

    def ready(self, handle: Any, timeout: float) -> bool:
        return True

    def get(self, handle: Any) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value
