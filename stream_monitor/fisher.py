"""Fisher images for an adapter built outside a run (a calibration, the meta-set).

EATA's anti-forgetting penalty (Niu et al., ICML 2022) weighs each parameter by its Fisher
information on in-distribution images. In a run they are the stream's first images
(`runtime.actors`); outside one there is no stream, so they are the clean domain's first images,
as EATA's own code computes them on clean data.
"""

from __future__ import annotations

import numpy as np

from stream_monitor.sources.factory import open_source

from .adapters import ADAPTERS
from .config import RunConfig
from .models import load_model

__all__ = ["clean_fisher_images"]


def clean_fisher_images(config: RunConfig) -> np.ndarray | None:
    """The clean domain's first images, as many as the config's adapter takes for its Fisher
    information (uint8); None for an adapter that needs none."""
    needed = ADAPTERS.info(config.adapter.name).fisher_images
    if not needed:
        return None
    model = load_model(config.model.name, config.model.weights, "cpu")
    source = open_source("heldout", "clean", config.source.data, model)
    return np.concatenate([b.images for b in source.read(0, needed, config.source.batch_size) if len(b)])
