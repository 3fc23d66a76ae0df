"""A user's images as a stream the runtime reads: an indexable dataset, or any iterable of batches.

- `IndexedStream`: a dataset with `__getitem__` and `__len__` whose items are single images (or
  (image, label) pairs): image i is item i, so any slice can be read again and a run resumes exactly.
- `IteratedStream`: any iterable of batches (a generator, a DataLoader, a list of batches), read
  in order; its length is known only when it ends. A list or tuple of batches is read again from
  its start on a resume, skipping what was processed; a generator or iterator cannot be rewound,
  so its runs cannot resume (`resume_refusal` says why and what to pass instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from stream_monitor.sources.base import Batch, RenderedSource, StreamSource

from .images import BatchFormatError, check_labels, split_item, to_labels, to_uint8

__all__ = ["IndexedStream", "IteratedStream", "as_stream"]

GENERATOR_REFUSAL = ("the stream is a generator (or another iterator): it cannot be rewound to the position the "
                     "run stopped at, so a resume could not reproduce the rows. To resume, pass a dataset with "
                     "__getitem__ and __len__ (item i: image i, or (image i, label i)), or a list of batches")
ITERABLE_REFUSAL = ("the stream is an iterable that is not known to repeat the same images when iterated again "
                    "(e.g. a DataLoader with shuffle=True or a custom sampler). To resume, pass a dataset with "
                    "__getitem__ and __len__ (a DataLoader over one, without shuffling, is read by index)")


def _batch(start: int, images: np.ndarray, labels: np.ndarray | None, num_classes: int | None) -> Batch:
    n = len(images)
    if labels is not None and num_classes is not None:
        check_labels(labels, num_classes)
    empty_text, zeros = np.full(n, "", dtype=object), np.zeros(n, np.float32)
    labels = labels if labels is not None else np.full(n, -1, np.int64)  # unlabelled: the worker drops them
    return Batch(np.arange(start, start + n, dtype=np.int64), images, labels, empty_text, zeros, empty_text, zeros)


class IndexedStream(RenderedSource):
    """Implements `stream_monitor.sources.base.StreamSource` over a map-style dataset of single images."""

    resume_refusal: str | None = None

    def __init__(self, dataset: Any, num_classes: int | None, name: str | None = None) -> None:
        self.dataset, self.num_classes = dataset, num_classes
        self.name = name or type(dataset).__name__
        self._length = len(dataset)
        if not self._length:
            raise BatchFormatError(f"The dataset {self.name} is empty: there is nothing to monitor.")
        images, labels = split_item(dataset[0])
        self.image_size = int(to_uint8(images, single=True).shape[-1])
        self.has_labels = labels is not None

    @property
    def length(self) -> int:
        return self._length

    def set_classes(self, num_classes: int) -> None:
        """The model's class count, checked against the first item's label now, before a run starts."""
        self.num_classes = num_classes
        self.render(0, 1)

    def render(self, start: int, stop: int) -> Batch:
        images, labels = [], []
        for i in range(start, stop):
            image, label = split_item(self.dataset[i])
            images.append(to_uint8(image, single=True))
            if self.has_labels:
                if label is None:
                    raise BatchFormatError(f"Item {i} of {self.name} has no label while item 0 has one; give a label "
                                           f"with every item, or with none.")
                labels.append(np.asarray(label).reshape(-1))
        try:
            stacked = np.concatenate(images)
        except ValueError as error:
            raise BatchFormatError(f"Items {start}-{stop - 1} of {self.name} differ in size ({error}); resize them "
                                   f"to one size (e.g. a torchvision Resize and CenterCrop in the dataset).") from None
        return _batch(start, stacked, to_labels(np.concatenate(labels), stop - start) if self.has_labels else None,
                      self.num_classes)


class IteratedStream:
    """Implements `stream_monitor.sources.base.StreamSource` over an iterable of batches, read once, in order."""

    def __init__(self, batches: Iterable[Any], num_classes: int | None, name: str | None = None,
                 resume_refusal: str | None = None) -> None:
        self.num_classes = num_classes
        self.name = name or type(batches).__name__
        self.resume_refusal = resume_refusal
        self._iterator: Iterator[Any] = iter(batches)
        self._images: list[np.ndarray] = []  # buffered batches, from stream position `_start`
        self._labels: list[np.ndarray | None] = []
        self._start = self._stop = 0
        self._ended = False
        self.has_labels = True
        if not self._pull(first=True):
            raise BatchFormatError(f"The stream {self.name} yielded no batch: there is nothing to monitor.")
        self.image_size = int(self._images[0].shape[-1])

    @property
    def length(self) -> int | None:
        return None  # known only when the iterable ends; `reached` tells how far it goes

    def set_classes(self, num_classes: int) -> None:
        """The model's class count, checked against the first batch's labels now, before a run starts."""
        self.num_classes = num_classes
        if self.has_labels:
            check_labels(self._labels[0], num_classes)

    def _pull(self, first: bool = False) -> bool:
        try:
            item = next(self._iterator)
        except StopIteration:
            self._ended = True
            return False
        images, labels = split_item(item)
        images = to_uint8(images)
        if first:
            self.has_labels = labels is not None
        elif self._images and images.shape[1:] != self._images[-1].shape[1:]:
            raise BatchFormatError(f"A batch of {self.name} at position {self._stop:,} has images of shape "
                                   f"{images.shape[1:]}, the ones before {self._images[-1].shape[1:]}; resize "
                                   f"every image to one size.")
        if self.has_labels and labels is None:
            raise BatchFormatError(f"The batch of {self.name} at position {self._stop:,} has no labels while the "
                                   f"first had some; give labels with every batch, or with none.")
        self._images.append(images)
        self._labels.append(to_labels(labels, len(images)) if self.has_labels else None)
        self._stop += len(images)
        return True

    def reached(self, position: int) -> int:
        """How far the stream reaches, up to `position` (reading ahead as needed)."""
        while self._stop < position and not self._ended:
            self._pull()
        return min(position, self._stop)

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        if start < self._start:
            raise RuntimeError(f"{self.name} was read past position {start:,} and cannot be read again "
                               f"(it is read once, in order)")
        while self._stop <= start and not self._ended:  # a resume skips whole batches without keeping them
            self._images, self._labels, self._start = [], [], self._stop
            self._pull()
        stop = self.reached(stop)
        if start >= stop:
            return
        images = np.concatenate(self._images) if self._images else np.zeros((0, 3, 1, 1), np.uint8)
        labels = np.concatenate(self._labels) if self.has_labels and self._labels else None
        cut = start - self._start  # what lies before `start` is never read again
        images = images[cut:]
        labels = labels[cut:] if labels is not None else None
        self._images, self._labels, self._start = [images], [labels], max(start, self._start)
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            part = slice(lo - start, hi - start)
            yield _batch(lo, images[part], labels[part] if labels is not None else None, self.num_classes)


def as_stream(data: Any, num_classes: int | None = None, name: str | None = None) -> StreamSource:
    """The stream for `data` (labels are checked against `num_classes`, or later by `set_classes`): a
    StreamSource as it is (the shipped sources), a map-style dataset of
    single images or a DataLoader over one without shuffling (indexable: resumable), else an
    iterable of batches (a list or tuple of them is read again on a resume; a generator is not).

    Raises:
        BatchFormatError: `data` is none of these, or its first item is not an image or a batch.
    """
    import torch.utils.data as tud

    if isinstance(data, StreamSource) and not isinstance(data, (Sequence, np.ndarray)):
        return data
    if isinstance(data, tud.DataLoader):
        indexable = isinstance(data.sampler, tud.SequentialSampler) and _map_style(data.dataset)
        if indexable and _is_single_image(data.dataset[0]):
            return IndexedStream(data.dataset, num_classes, name or type(data.dataset).__name__)
        return IteratedStream(data, num_classes, name or "DataLoader", ITERABLE_REFUSAL)
    if _map_style(data) and len(data):
        if _is_single_image(data[0]):
            return IndexedStream(data, num_classes, name)
        if isinstance(data, (list, tuple)):
            return IteratedStream(data, num_classes, name or "batches")
    if isinstance(data, Iterator):
        return IteratedStream(data, num_classes, name or type(data).__name__, GENERATOR_REFUSAL)
    if isinstance(data, Iterable):
        return IteratedStream(data, num_classes, name, ITERABLE_REFUSAL)
    raise BatchFormatError(f"Cannot stream a {type(data).__name__}: pass a dataset with __getitem__ and __len__, a "
                           f"DataLoader, a list of batches or a generator of batches.")


def _map_style(data: Any) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes, dict))


def _is_single_image(item: Any) -> bool:
    images, _ = split_item(item)
    if hasattr(images, "mode") and hasattr(images, "size") and not hasattr(images, "ndim"):
        return True  # a PIL image
    return getattr(images, "ndim", 0) == 3
