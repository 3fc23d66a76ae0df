"""One fixed domain of the calibration meta-set: the embedded glyphs, or a user's image folder,
under one held-out corruption.

Entropy Enigma fits its flips-to-accuracy function on ImageNet validation plus the ImageNet-C
corruptions CCC holds out (speckle noise, gaussian blur, spatter, saturate); this is the same
meta-set on the embedded base. Images come from the glyph domain's CALIBRATION index range (never
seen in training, validation or any stream) and go through the stream's own pipeline, so the fit
sees what a run sees: flip + random resized crop, the corruption at one severity (none for the
clean domain), JPEG at quality 85. Image i is a pure function of (domain, i), in aligned blocks.

`HeldOutFolderSource` is the same meta-set on a user's ImageFolder (ImageNet validation for the
paper's ResNet-50: Entropy Enigma's meta-set is exactly that folder plus ImageNet-C's four extra
corruptions): the folder's images, resized and centre-cropped as for evaluation, under one
held-out corruption with the model's constants, then JPEG at quality 85 as CCC's shards store
them. A cycle longer than the folder goes over it again in a fresh permutation.
"""

from __future__ import annotations

import numpy as np
import torch

from collections.abc import Iterator
from pathlib import Path

from .augment import jpeg_roundtrip, random_resized_crop_flip
from .base import Batch, RenderedSource
from .corruptions import HELD_OUT_CORRUPTIONS, get_corruption
from .glyphs import CALIBRATION, NUM_CLASSES, GlyphDomain
from .seeding import mix_seed

UNIT = 64
#: Entropy Enigma's meta-set on an image folder: clean plus the four held-out corruptions at the
#: five ImageNet-C severities (research/enigma_ccc.md 1.3).
FOLDER_DOMAINS = ("clean",) + tuple(f"{c}:{s}" for c in HELD_OUT_CORRUPTIONS for s in (1, 2, 3, 4, 5))


def parse_domain(text: str) -> tuple[str, float]:
    """`clean` or `CORRUPTION:SEVERITY` (a held-out corruption, severity in (0, 5])."""
    if text == "clean":
        return "", 0.0
    name, sep, severity = text.partition(":")
    if not sep or name not in HELD_OUT_CORRUPTIONS:
        raise ValueError(f"Unknown calibration domain {text!r}: use 'clean' or CORRUPTION:SEVERITY with one of "
                         f"the held-out corruptions {', '.join(HELD_OUT_CORRUPTIONS)} (the stream's 15 are never "
                         f"used to fit), e.g. speckle_noise:3")
    value = float(severity)
    if not 0.0 < value <= 5.0:
        raise ValueError(f"Calibration severity must be in (0, 5], got {value} in {text!r}")
    return name, value


class HeldOutDomainSource(RenderedSource):
    """Implements `sources.base.StreamSource` for one calibration domain."""

    num_classes = NUM_CLASSES

    def __init__(self, domain: str, length: int, image_size: int = 32, crop: bool = True,
                 profile: str = "embedded", domain_seed: int = 0) -> None:
        self.corruption, self.severity = parse_domain(domain)
        self.domain_name = domain
        self.domain = GlyphDomain(domain_seed, image_size)
        self.image_size, self.crop, self.profile = image_size, crop, profile
        self._length = length
        # each domain reads its own part of the calibration range, so domains share no image
        self._offset = CALIBRATION.start + (mix_seed(len(domain), *domain.encode()) % 1024) * (1 << 20)

    @property
    def name(self) -> str:
        return f"heldout/{self.domain_name}"

    @property
    def length(self) -> int:
        return self._length

    def render(self, start: int, stop: int) -> Batch:
        first = start - start % UNIT
        last = stop + (-stop) % UNIT
        glyphs, labels = self.domain.render_range(self._offset + first, self._offset + last)
        units = [self._render_unit(lo, glyphs[lo - first:lo - first + UNIT]) for lo in range(first, last, UNIT)]
        keep = slice(start - first, stop - first)
        n = stop - start
        return Batch(
            indices=np.arange(start, stop, dtype=np.int64), images=torch.cat(units)[keep].numpy(),
            labels=labels[keep].numpy().astype(np.int64), noise_a=np.full(n, self.corruption),
            severity_a=np.full(n, self.severity, np.float32), noise_b=np.full(n, ""), severity_b=np.zeros(n, np.float32),
        )

    def _render_unit(self, start: int, glyphs: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.domain.seed, self._offset, start))
        x = random_resized_crop_flip(glyphs, g, self.image_size) if self.crop else glyphs.float() / 255.0
        if self.severity > 0:
            x = get_corruption(self.corruption)(x, self.severity, g, self.profile)
        return jpeg_roundtrip(x)[0]


class HeldOutFolderSource:
    """Implements `sources.base.StreamSource` for one calibration domain over an image folder.

    Args:
        root: ``root/<class>/<image>``, the classes the model predicts (sorted sub-folders).
        domain: ``clean`` or ``CORRUPTION:SEVERITY`` with a held-out corruption.
        length: images of the domain; more than the folder holds goes over it again, reshuffled.
        image_size, resize: the model's evaluation transform (shorter side, then centre crop).
        profile: the corruption constants: ``imagenet`` for 224 px images, ``embedded`` for 32 px.
    """

    def __init__(self, root: str | Path, domain: str, length: int, image_size: int = 224, resize: int = 256,
                 profile: str = "imagenet", seed: int = 0) -> None:
        from .imagefolder import ImageFolderSource

        self.corruption, self.severity = parse_domain(domain)
        self.domain_name, self.profile = domain, profile
        self._seed = mix_seed(seed, len(domain), *domain.encode())
        self.folder = ImageFolderSource(root, image_size=image_size, resize=resize, shuffle_seed=seed)
        self.folder.passes = max(1, -(-length // len(self.folder.samples)))  # as many as the domain needs
        self.num_classes = self.folder.num_classes
        self._length = length

    @property
    def name(self) -> str:
        return f"heldout/{self.folder.root.name}/{self.domain_name}"

    @property
    def length(self) -> int:
        return self._length

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        """The folder's batches of [start, stop), each image corrupted on its own generator
        (seeded by the domain and its position, so any slicing gives the same images)."""
        if not 0 <= start <= stop <= self._length:
            raise ValueError(f"slice [{start}, {stop}) is outside {self.name!r} of {self._length} images")
        for batch in self.folder.read(start, stop, batch_size):
            if len(batch.indices):
                x = torch.from_numpy(batch.images).float() / 255.0
                if self.severity > 0:
                    corrupt = get_corruption(self.corruption)
                    x = torch.cat([corrupt(x[k:k + 1], self.severity,
                                           torch.Generator().manual_seed(mix_seed(self._seed, int(i))), self.profile)
                                   for k, i in enumerate(batch.indices)])
                batch.images = jpeg_roundtrip(x)[0].numpy()
            n = len(batch.indices)
            batch.noise_a = np.full(n, self.corruption)
            batch.severity_a = np.full(n, self.severity, np.float32)
            yield batch

    def __repr__(self) -> str:
        return f"HeldOutFolderSource({str(self.folder.root)!r}, {self.domain_name!r}, {self._length} images)"
