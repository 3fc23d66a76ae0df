"""Build an adapter for a source model: the method's defaults for that kind of model, plus what the
method needs from the stream or the model (EATA's Fisher images, CoTTA's input normalisation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from adapters import ADAPTERS, Adapter

from .models import SourceModel

FISHER_IMAGES = 2000  # EATA's --fisher_size; oripress/CCC's eval takes them from the stream's start


# fp16 would need a gradient scaler; bf16 does not.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def make_adapter(name: str, model: SourceModel, first_images: Callable[[int], torch.Tensor] | None = None,
                 precision: str = "fp32", **overrides: Any) -> Adapter:
    """The adapter `name` around `model`; `first_images(n)` gives the stream's first n uint8 images.

    `precision` bf16 runs forward and backward under autocast (meant for GPUs). Reset policies:
    `reset_every=N` steps, `restore_prob=p` (stochastic restore, for any adapter that trains
    parameters); a detector signal calls `adapter.reset()`.

    Raises UnknownNameError (listing the valid adapters) for an unknown name.
    """
    adapter_class = ADAPTERS.get(name)
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}. Valid precisions: {', '.join(PRECISIONS)}.")
    options = adapter_class.defaults_for(model.num_classes, model.image_size)
    if name == "eata" and "fisher_images" not in overrides:
        if first_images is None:
            raise ValueError("EATA needs images for its Fisher information: pass first_images")
        options["fisher_images"] = model.normalise(first_images(FISHER_IMAGES))
    if name == "cotta":
        options.update(input_mean=model.mean, input_std=model.std)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    restore_prob = overrides.pop("restore_prob", None)
    options.update(overrides)
    adapter = adapter_class(model.module, **options)
    if restore_prob is not None:  # replaces a method's own rate (CoTTA's); 0 turns restoring off
        adapter.enable_stochastic_restore(restore_prob)
    adapter.autocast_dtype = PRECISIONS[precision]
    return adapter
