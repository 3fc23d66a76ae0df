"""Build an adapter for a source model: the method's defaults for that kind of model, plus what its
registry metadata (`adapters.AdapterInfo`) says it needs from the stream or the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stream_monitor.adapters import ADAPTERS, Adapter

from .models import SourceModel

# fp16 would need a gradient scaler; bf16 does not.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def make_adapter(name: str, model: SourceModel, first_images: Callable[[int], torch.Tensor] | None = None,
                 precision: str = "fp32", **overrides: Any) -> Adapter:
    """The adapter `name` around `model`; `first_images(n)` gives the stream's first n uint8 images.

    `precision` bf16 runs forward and backward under autocast (meant for GPUs). Reset policies:
    `reset_every=N` steps, `restore_prob=p` (stochastic restore, for any adapter that trains
    parameters); a detector signal calls `adapter.reset()`.

    Raises:
        UnknownNameError: an unknown name (the message lists the valid adapters).
        ValueError: an unknown precision, or an adapter that needs stream images without
            `first_images`.
    """
    info = ADAPTERS.info(name)
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Valid precisions: {', '.join(PRECISIONS)}.")
    options = info.cls.defaults_for(model.num_classes, model.image_size)
    if info.fisher_images and "fisher_images" not in overrides:
        if first_images is None:
            raise ValueError(f"Adapter {name!r} estimates its Fisher information on the stream's first "
                             f"{info.fisher_images} images: pass first_images")
        options["fisher_images"] = model.normalise(first_images(info.fisher_images))
    if info.input_normalisation:
        options.update(input_mean=model.mean, input_std=model.std)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    restore_prob = overrides.pop("restore_prob", None)
    options.update(overrides)
    adapter = info.cls(model.module, **options)
    if restore_prob is not None:  # replaces a method's own rate; 0 turns restoring off
        adapter.enable_stochastic_restore(restore_prob)
    adapter.autocast_dtype = PRECISIONS[precision]
    return adapter
