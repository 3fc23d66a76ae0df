"""The source contract: an indexed stream that can produce any slice [start, stop).

Image `i` of a named stream is a pure function of (stream spec, i) (DESIGN.md section 5), so
several source actors can render disjoint slices in parallel and a run can resume at any image.
Batches travel as uint8 NCHW numpy arrays with labels and CCC's per-image corruption info;
normalisation happens later, on the adapter's device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Batch:
    """Consecutive images [start, start + len) of a stream.

    `noise_a`/`severity_a`/`noise_b`/`severity_b` are CCC's `info`: the corruption fading out and
    the one fading in, with their severities ("" and 0.0 where there is none). `skipped` names
    each position of the slice that could not be served (corrupt, empty or oversize image, missing
    or out-of-range label), one entry per position since the run loop counts them; `indices` says
    which stream positions the rows hold, so labels and info stay aligned when some are skipped.
    """

    indices: np.ndarray  # int64 (N,)
    images: np.ndarray  # uint8 (N, 3, H, W)
    labels: np.ndarray  # int64 (N,)
    noise_a: np.ndarray  # str (N,)
    severity_a: np.ndarray  # float32 (N,)
    noise_b: np.ndarray  # str (N,)
    severity_b: np.ndarray  # float32 (N,)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def __post_init__(self) -> None:
        n = len(self.indices)
        for name in ("images", "labels", "noise_a", "severity_a", "noise_b", "severity_b"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Batch.{name} has {len(getattr(self, name))} rows, expected {n}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Batch.images must be uint8 (N, 3, H, W), got {self.images.dtype} {self.images.shape}")

    @classmethod
    def concat(cls, batches: list["Batch"]) -> "Batch":
        if not batches:
            raise ValueError("cannot concatenate zero batches")
        return cls(
            indices=np.concatenate([b.indices for b in batches]),
            images=np.concatenate([b.images for b in batches]),
            labels=np.concatenate([b.labels for b in batches]),
            noise_a=np.concatenate([b.noise_a for b in batches]),
            severity_a=np.concatenate([b.severity_a for b in batches]),
            noise_b=np.concatenate([b.noise_b for b in batches]),
            severity_b=np.concatenate([b.severity_b for b in batches]),
            skipped=[s for b in batches for s in b.skipped],
        )


@runtime_checkable
class StreamSource(Protocol):
    """What the runtime needs from a stream."""

    name: str
    num_classes: int
    image_size: int

    @property
    def length(self) -> int:
        """Number of images in the stream."""

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        """Batches covering [start, stop) in stream order (the last one may be short)."""


class RenderedSource:
    """`read` for sources that can render any slice at once (`render(start, stop) -> Batch`)."""

    length: int

    def render(self, start: int, stop: int) -> Batch:
        raise NotImplementedError

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        stop = min(stop, self.length)
        if not 0 <= start <= stop:
            raise ValueError(f"invalid slice [{start}, {stop}) of a stream of {self.length} images")
        for lo in range(start, stop, batch_size):
            yield self.render(lo, min(lo + batch_size, stop))
