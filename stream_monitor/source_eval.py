"""Stream a source through the frozen source model and measure its accuracy per window.

This is the non-adapting reference every TTA run is compared with ("source accuracy on the
window", DESIGN.md section 6), and what CCC's path search steers: the mean of these numbers along
a stream should sit near the stream's baseline target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from stream_monitor.sources.base import Batch, StreamSource

from .models import SourceModel


@dataclass
class Window:
    """Accuracy of the source model over consecutive images [start, stop)."""

    start: int
    stop: int
    correct: int
    seen: int
    skipped: int
    pair: str  # the dominant "noise_a -> noise_b" of the window

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.seen, 1)


@dataclass
class SourceEvalResult:
    windows: list[Window] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return sum(w.seen for w in self.windows)

    @property
    def accuracy(self) -> float:
        return 100.0 * sum(w.correct for w in self.windows) / max(self.images, 1)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def evaluate_source(
    source: StreamSource,
    model: SourceModel,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 64,
    window: int = 5000,
    batches: Iterator[Batch] | None = None,
    on_window: Callable[[Window, SourceEvalResult], None] | None = None,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SourceEvalResult:
    """Top-1 accuracy on source[start:stop], in windows.

    By default the frozen `model` (eval mode) predicts; `predict` (uint8 batch -> logits) serves
    instead, e.g. an adapter's `step`, which predicts and then adapts.
    """
    predict = predict or model.predict
    stop = source.length if stop is None else min(stop, source.length)
    result = SourceEvalResult()
    started = time.perf_counter()
    acc = _WindowAccumulator(start, window)
    for batch in batches if batches is not None else source.read(start, stop, batch_size):
        logits = predict(torch.from_numpy(batch.images))
        hits = (logits.argmax(1).cpu().numpy() == batch.labels)
        for finished in acc.add(batch, hits):
            result.windows.append(finished)
            result.seconds = time.perf_counter() - started
            if on_window:
                on_window(finished, result)
    tail = acc.flush(stop)
    if tail is not None:
        result.windows.append(tail)
    result.seconds = time.perf_counter() - started
    if tail is not None and on_window:
        on_window(tail, result)
    return result


class _WindowAccumulator:
    """Cuts a stream of per-image hits into fixed windows of stream positions."""

    def __init__(self, start: int, size: int) -> None:
        self.size = size
        self.lo = start
        self.hi = start - start % size + size
        self.correct = self.seen = self.skipped = 0
        self.pairs: dict[str, int] = {}

    def add(self, batch: Batch, hits: np.ndarray) -> Iterator[Window]:
        for index, hit, a, b in zip(batch.indices, hits, batch.noise_a, batch.noise_b):
            while index >= self.hi:
                yield self._close(self.hi)
            self.correct += int(hit)
            self.seen += 1
            key = f"{a or '-'} -> {b or '-'}"
            self.pairs[key] = self.pairs.get(key, 0) + 1
        self.skipped += len(batch.skipped)

    def flush(self, stop: int) -> Window | None:
        return self._close(stop) if self.seen or self.skipped else None

    def _close(self, stop: int) -> Window:
        pair = max(self.pairs, key=self.pairs.get) if self.pairs else ""
        w = Window(self.lo, stop, self.correct, self.seen, self.skipped, pair)
        self.lo, self.hi = stop, stop + self.size
        self.correct = self.seen = self.skipped = 0
        self.pairs = {}
        return w
