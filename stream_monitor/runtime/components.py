"""What a run monitors: where each worker gets its model, its stream and its adapter.

The config-driven runner (`stream-monitor run`) and the Python API (`stream_monitor.Monitor`) are
two clients of the same workers and loop; they differ only here. `config_components` builds
everything from names in the config (inside each worker's process, as Ray's docs recommend);
the Python API passes the user's own model, stream and adapter.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from stream_monitor.sources.base import StreamSource

from ..config import RunConfig
from ..models import SourceModel, load_model

#: first_images(n): the stream's first n uint8 images (EATA's Fisher information), or None.
FirstImages = Callable[[int], torch.Tensor] | None


@dataclass(frozen=True)
class Components:
    """The three parts a run is made of, each built inside the worker that owns it.

    Attributes:
        model: device -> a fresh copy of the source model (each worker owns one).
        stream: the source model -> the stream (its image size and matrix can depend on the model).
        adapter: (source model, first images) -> an object with the adapter contract
            (`stream_monitor.adapters.base.Adapter`).
        fisher_images: how many of the stream's first images `adapter` needs (0: none).
        driver_stream: the stream is read in the driver, never in a Ray actor: a user's iterable
            need not pickle, and a generator cannot.
    """

    model: Callable[[str], SourceModel]
    stream: Callable[[SourceModel], StreamSource]
    adapter: Callable[[SourceModel, FirstImages], Any]
    fisher_images: int = 0
    driver_stream: bool = False

    def for_actors(self) -> "Components":
        """What travels to the adapter and probe actors: without a driver-read stream, which need not pickle."""
        return replace(self, stream=_read_in_driver) if self.driver_stream else self


def _read_in_driver(bundle: SourceModel) -> StreamSource:
    raise RuntimeError("this stream is read in the driver (Components.driver_stream), never in an actor")


def config_components(config: RunConfig) -> Components:
    """Model, stream and adapter by the names in `config` (`stream-monitor run`)."""
    from stream_monitor.adapters import ADAPTERS

    return Components(_ConfigModel(config), _ConfigStream(config), _ConfigAdapter(config),
                      ADAPTERS.info(config.adapter.name).fisher_images)


class _ConfigModel:
    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def __call__(self, device: str) -> SourceModel:
        return load_model(self.config.model.name, self.config.model.weights, device)


class _ConfigStream:
    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def __call__(self, bundle: SourceModel) -> StreamSource:
        from stream_monitor.sources.factory import open_source

        src, run = self.config.source, self.config.runtime
        return open_source(src.kind, src.stream, src.data, bundle, crop=src.crop,
                           device=decode_device(src.decode_device), seed=src.seed, class_map=src.class_map,
                           images=run.start + run.max_images if run.max_images else None)


class _ConfigAdapter:
    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def __call__(self, bundle: SourceModel, first_images: FirstImages) -> Any:
        from ..adaptation import make_adapter

        cfg = self.config.adapter
        return make_adapter(cfg.name, bundle, first_images, cfg.precision, lr=cfg.lr, reset_every=cfg.reset_every,
                            restore_prob=cfg.restore_prob, **cfg.options)


def decode_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("source.decode_device is cuda but this source actor sees no CUDA device; give source "
                         "actors a GPU share (source.num_gpus) on a GPU node, or use --set source.decode_device=cpu")
    return device


class GivenStream:
    """`Components.stream` for a stream already opened in the driver (the Python API's)."""

    def __init__(self, stream: StreamSource) -> None:
        self.stream = stream

    def __call__(self, bundle: SourceModel) -> StreamSource:
        return self.stream


class CopiedModel:
    """A given source model, copied for each worker (in-process they share one object)."""

    def __init__(self, bundle: SourceModel) -> None:
        self.bundle = bundle

    def __call__(self, device: str) -> SourceModel:
        bundle = copy.deepcopy(self.bundle)
        bundle.module.to(device).eval()
        return bundle
