"""CCC streams on the embedded glyph domain, rendered on the fly (no data, no download).

Image i of a stream: glyph image `STREAM.start + seed * 2**36 + i` of the domain, then, like
oripress/CCC's `ApplyTransforms`: RandomHorizontalFlip + RandomResizedCrop, noise A at severity A
(if > 0), 8-bit rounding, noise B at severity B (if > 0), JPEG at quality 85. The lattice points
come from `CCCWalk` with the embedded model's own accuracy matrix.

Randomness is drawn per render unit: an aligned block of `UNIT` images cut at lattice point
boundaries, from a generator seeded by (stream, first index of the unit). A slice renders the
units it overlaps and trims them, so any slice equals the same rows of the whole stream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch

from .augment import jpeg_roundtrip, random_resized_crop_flip, to_uint8
from .base import Batch, RenderedSource
from .ccc import CCCSpec, CCCWalk, Point
from .corruptions import get_corruption
from .glyphs import CALIBRATION_STREAMS, NUM_CLASSES, STREAM, GlyphDomain
from .seeding import mix_seed

UNIT = 64
_SEED_STRIDE = 1 << 36
_HELD_OUT_STRIDE = 1 << 24


class EmbeddedCCCSource(RenderedSource):
    """A CCC stream over the embedded domain; implements `sources.base.StreamSource`."""

    num_classes = NUM_CLASSES

    def __init__(
        self,
        spec: CCCSpec,
        matrices: dict[tuple[str, str], np.ndarray],
        image_size: int = 32,
        crop: bool = True,
        jpeg: bool = True,
        profile: str = "embedded",
        domain_seed: int = 0,
        length: int | None = None,
    ) -> None:
        self.spec = spec
        self.walk = CCCWalk(spec, matrices, NUM_CLASSES)
        self.domain = GlyphDomain(domain_seed, image_size)
        self.image_size = image_size
        self.crop, self.jpeg, self.profile = crop, jpeg, profile
        self._length = spec.length if length is None else min(length, spec.length)
        if spec.pool == "heldout":  # calibration streams: images no stream and no fixed domain draws
            self._length = min(self._length, _HELD_OUT_STRIDE)
            self._offset = CALIBRATION_STREAMS.start + spec.seed * _HELD_OUT_STRIDE
        else:
            self._offset = STREAM.start + spec.seed * _SEED_STRIDE
        # Batches need not align with render units (resume, other batch sizes): keep the last few.
        self._recent: OrderedDict[int, torch.Tensor] = OrderedDict()

    @property
    def name(self) -> str:
        return f"embedded{'-heldout' if self.spec.pool == 'heldout' else ''}/{self.spec.name}"

    @property
    def length(self) -> int:
        return self._length

    def render(self, start: int, stop: int) -> Batch:
        """Images [start, stop) as one batch."""
        units = list(self._units(start, stop))
        first, last = units[0][0], units[-1][1]
        glyphs, labels = self.domain.render_range(self._offset + first, self._offset + last)
        images, points = [], []
        for lo, hi in units:
            point = self.walk.point_of_image(lo)
            if lo not in self._recent:
                self._recent[lo] = self._render_unit(lo, glyphs[lo - first:hi - first], point)
                if len(self._recent) > 4:
                    self._recent.popitem(last=False)
            images.append(self._recent[lo])
            points.extend([point] * (hi - lo))
        keep = slice(start - first, stop - first)
        points = points[keep]
        return Batch(
            indices=np.arange(start, stop, dtype=np.int64),
            images=torch.cat(images)[keep].numpy(),
            labels=labels[keep].numpy().astype(np.int64),
            noise_a=np.array([p.noise_a for p in points]),
            severity_a=np.array([p.severity_a for p in points], dtype=np.float32),
            noise_b=np.array([p.noise_b for p in points]),
            severity_b=np.array([p.severity_b for p in points], dtype=np.float32),
        )

    def _units(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """Render units overlapping [start, stop): aligned UNIT blocks cut at point boundaries."""
        speed = self.spec.speed
        lo = start - start % UNIT
        point_start = start - start % speed
        lo = max(lo, point_start)
        while lo < stop:
            hi = min(lo - lo % UNIT + UNIT, lo - lo % speed + speed)
            yield lo, hi
            lo = hi

    def _render_unit(self, start: int, glyphs: torch.Tensor, point: Point) -> torch.Tensor:
        spec = self.spec
        g = torch.Generator().manual_seed(mix_seed(self.domain.seed, spec.baseline, spec.speed, spec.seed, start))
        if self.crop:
            x = random_resized_crop_flip(glyphs, g, self.image_size)
        else:
            x = glyphs.float() / 255.0
        if point.severity_a > 0:
            x = get_corruption(point.noise_a)(x, point.severity_a, g, self.profile)
            x = to_uint8(x).float() / 255.0
        if point.severity_b > 0:
            x = get_corruption(point.noise_b)(x, point.severity_b, g, self.profile)
        return jpeg_roundtrip(x)[0] if self.jpeg else to_uint8(x)
