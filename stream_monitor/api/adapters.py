"""A user's adapter: a registered name, or an object with the adapter protocol.

The protocol (`AdapterProtocol`) is the public part of `stream_monitor.adapters.base.Adapter`: an object with
`step(images)`, `snapshot()`, `reset()`, `state_dict()` (and `load_state_dict(state)` to resume).
Any subclass of `stream_monitor.adapters.base.Adapter` has it; so can a class of your own that subclasses nothing.
`ProtocolAdapter` puts such an object behind what the adapter worker reads (step counter, reset
period, statistics), so the runtime never branches on where an adapter came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from stream_monitor.adapters.base import Adapter, StepResult, entropy

from ..models import SourceModel

__all__ = ["AdapterProtocol", "ProtocolAdapter", "adapter_factory", "adapter_name", "fisher_images"]

REQUIRED = ("step", "snapshot", "reset", "state_dict")


@runtime_checkable
class AdapterProtocol(Protocol):
    """What the monitor calls on an adapter object.

    - `step(images)`: images are normalised float (N, 3, H, W) on the monitor's device; adapt
      on them (no labels, ever) and return the logits that served the predictions, computed
      before the update (a tensor (N, classes), or an `stream_monitor.adapters.base.StepResult` with statistics).
    - `snapshot()`: the weights the adaptation changes, {state-dict key of the model: array}; the
      probe loads them onto its own copy of the model to count label flips.
    - `reset()`: back to the source model.
    - `state_dict()` / `load_state_dict(state)`: everything needed to continue exactly (checkpoints).
    """

    def step(self, images: torch.Tensor) -> torch.Tensor | StepResult: ...

    def snapshot(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class ProtocolAdapter:
    """An `AdapterProtocol` object behind the adapter worker's contract."""

    def __init__(self, inner: Any, name: str) -> None:
        missing = [m for m in REQUIRED if not callable(getattr(inner, m, None))]
        if missing:
            raise TypeError(f"The adapter {type(inner).__name__} lacks {', '.join(missing)}: an adapter object needs "
                            f"step(images), snapshot(), reset() and state_dict() (and load_state_dict(state) to "
                            f"resume); see stream_monitor.api.AdapterProtocol, or pass a registered name such as "
                            f"'tent'.")
        self.inner, self.name = inner, name
        self.num_steps = 0
        self.reset_every = getattr(inner, "reset_every", None)
        self.optimizer = getattr(inner, "optimizer", None)

    def step(self, images: torch.Tensor) -> StepResult:
        with torch.enable_grad():
            out = self.inner.step(images)
        self.num_steps += 1
        if isinstance(out, StepResult):
            return out
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(images):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"{type(self.inner).__name__}.step must return the served logits (N, classes) for the "
                            f"{len(images)} images (or a StepResult); it returned {shape}.")
        logits = out.detach().float()
        nan = logits.new_tensor(math.nan)
        # the protocol does not report loss or gradient: NaN, not 0, so nobody reads them as "no update"
        return StepResult(logits, entropy(logits).mean(), torch.tensor(len(logits)), nan, nan, torch.tensor(False))

    def snapshot(self) -> dict[str, np.ndarray]:
        snap = self.inner.snapshot()
        return {k: v.detach().cpu().numpy().copy() if isinstance(v, torch.Tensor) else np.asarray(v)
                for k, v in snap.items()}

    def reset(self) -> None:
        self.inner.reset()

    def serving_model(self) -> nn.Module:
        serving = getattr(self.inner, "serving_model", None)
        if callable(serving):
            return serving()
        model = getattr(self.inner, "model", None)
        if isinstance(model, nn.Module):
            return model
        raise TypeError(f"{type(self.inner).__name__} has no `model` or `serving_model()`, which AETTA's dropout "
                        f"forwards need (estimation.aetta_every); leave AETTA off for this adapter.")

    def state_dict(self) -> dict[str, Any]:
        return {"adapter": self.inner.state_dict(), "num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load = getattr(self.inner, "load_state_dict", None)
        if not callable(load):
            raise TypeError(f"{type(self.inner).__name__} has no load_state_dict(state): it cannot be resumed.")
        load(state["adapter"])
        self.num_steps = int(state["num_steps"])


def adapter_factory(adapter: Any, options: dict[str, Any], precision: str = "fp32"
                    ) -> Callable[[SourceModel, Any], Any]:
    """(source model, first images) -> the adapter, for `Components.adapter`.

    `adapter` is a registered name (`stream-monitor list adapters`), an adapter object, or a
    callable (a class) that takes the model (`nn.Module`) and returns one.
    """
    if isinstance(adapter, str):
        from stream_monitor.adapters import ADAPTERS

        ADAPTERS.info(adapter)  # an unknown name fails here, listing the valid ones
        return _Registered(adapter, options, precision)
    if options:
        raise ValueError(f"adapter_options configure a registered adapter; {type(adapter).__name__} takes its "
                         f"options in its own constructor.")
    if isinstance(adapter, type) or not hasattr(adapter, "step"):
        if not callable(adapter):
            raise TypeError(f"adapter must be a registered name, an adapter object or a class; got "
                            f"{type(adapter).__name__}.")
        return _Built(adapter)
    return _Given(adapter)


def restart(factory: Callable[[SourceModel, Any], Any]) -> None:
    """Put an adapter object (`_Given`) back at the source model before it serves another stream:
    it is one object across runs, while a registered adapter or a class is built afresh for each."""
    if isinstance(factory, _Given):
        factory.adapter.reset()


def fisher_images(adapter: Any) -> int:
    """How many of the stream's first images a registered adapter needs (EATA's Fisher information); 0 for objects."""
    if not isinstance(adapter, str):
        return 0
    from stream_monitor.adapters import ADAPTERS

    return ADAPTERS.info(adapter).fisher_images


def adapter_name(adapter: Any) -> str:
    """What run.json and the dashboard call the adapter."""
    if isinstance(adapter, str):
        return adapter
    cls = adapter if isinstance(adapter, type) else type(adapter)
    return getattr(cls, "name", None) if isinstance(getattr(cls, "name", None), str) else cls.__name__


class _Registered:
    def __init__(self, name: str, options: dict[str, Any], precision: str) -> None:
        self.name, self.options, self.precision = name, dict(options), precision

    def __call__(self, bundle: SourceModel, first_images: Any) -> Adapter:
        from ..adaptation import make_adapter

        if getattr(bundle, "transform", None) is not None:
            from stream_monitor.adapters import ADAPTERS

            if ADAPTERS.info(self.name).input_normalisation:
                raise ValueError(f"Adapter {self.name!r} augments images before normalisation and needs the model's "
                                 f"mean and std; give mean= and std= instead of a normalise callable.")
        return make_adapter(self.name, bundle, first_images, self.precision, **self.options)


class _Built:
    def __init__(self, build: Callable[[nn.Module], Any]) -> None:
        self.build = build

    def __call__(self, bundle: SourceModel, first_images: Any) -> Any:
        adapter = self.build(bundle.module)
        return adapter if isinstance(adapter, Adapter) else ProtocolAdapter(adapter, adapter_name(adapter))


class _Given:
    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def __call__(self, bundle: SourceModel, first_images: Any) -> Any:
        adapter = self.adapter
        return adapter if isinstance(adapter, Adapter) else ProtocolAdapter(adapter, adapter_name(adapter))
