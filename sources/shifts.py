"""Shift families of the full-range meta-set (issue 25): held-out corruptions and shifts that are
not ImageNet-C corruptions at all, on the embedded glyphs' calibration range.

A domain is `FAMILY:ARGS`; its images go through the stream's pipeline (flip + random resized
crop, the shift, JPEG at quality 85) and image i is a pure function of (domain, i), as in
`sources.heldout`. None of them uses the stream's 15 corruptions:

- `clean`: the source domain.
- `heldout:CORRUPTION:SEVERITY`: one of ImageNet-C's four held-out corruptions.
- `compose:A:SA+B:SB`: two held-out corruptions, A then B.
- `mix:SHARE:CORRUPTION:SEVERITY`: each image shifted with probability SHARE, clean otherwise
  (a window that mixes clean and shifted images).
- `affine:S`: rotation, shear and scale of the whole image (a geometric distortion; strength S in (0, 5]).
- `invert:S`: contrast inversion blended in, x -> (1 - a) x + a (1 - x) with a = S / 5 (at a = 0.5
  the image is flat grey; a = 1 is a full photographic negative).
- `occlude:S`: label-preserving occlusion, grey squares covering about 12 S % of the image
  (random erasing, Zhong et al., AAAI 2020).

A domain ending in `/whole` skips the random resized crop: the whole glyph, as the embedded model
was trained on it (the source domain itself, where the frozen model is most accurate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .augment import jpeg_roundtrip, random_resized_crop_flip
from .base import Batch, RenderedSource
from .corruptions import HELD_OUT_CORRUPTIONS, get_corruption
from .glyphs import CALIBRATION, NUM_CLASSES, GlyphDomain
from .seeding import mix_seed

UNIT = 64
WHOLE = "/whole"
FAMILIES = ("clean", "heldout", "compose", "mix", "affine", "invert", "occlude")


@dataclass(frozen=True)
class Shift:
    """A parsed domain: its family and the function that shifts a float [0, 1] batch."""

    family: str
    text: str
    crop: bool = True

    def apply(self, x: torch.Tensor, g: torch.Generator, profile: str) -> torch.Tensor:
        family, _, args = self.text.partition(":")
        if family == "clean":
            return x
        if family == "heldout":
            name, severity = _corruption(args, self.text)
            return get_corruption(name)(x, severity, g, profile)
        if family == "compose":
            for part in args.split("+"):
                name, severity = _corruption(part, self.text)
                x = get_corruption(name)(x, severity, g, profile)
            return x
        if family == "mix":
            share, _, rest = args.partition(":")
            name, severity = _corruption(rest, self.text)
            shifted = get_corruption(name)(x, severity, g, profile)
            pick = torch.rand(len(x), generator=g) < float(share)
            return torch.where(pick[:, None, None, None], shifted, x)
        strength = _strength(args, self.text)
        if family == "affine":
            return _affine(x, strength, g)
        if family == "invert":
            a = strength / 5.0
            return (1 - a) * x + a * (1 - x)
        if family == "occlude":
            return _occlude(x, strength, g)
        raise AssertionError(family)


def parse_shift(text: str) -> Shift:
    """A domain `FAMILY:ARGS` (module docstring); ValueError naming the valid forms."""
    crop = not text.endswith(WHOLE)
    text = text.removesuffix(WHOLE)
    family = text.partition(":")[0]
    if family not in FAMILIES:
        raise ValueError(f"Unknown meta-set domain {text!r}: the family must be one of {', '.join(FAMILIES)}, e.g. "
                         f"clean, heldout:speckle_noise:3, compose:spatter:3+gaussian_blur:2, "
                         f"mix:0.5:speckle_noise:5, affine:3, invert:2, occlude:3")
    shift = Shift(family, text, crop)
    shift.apply(torch.zeros(1, 3, 8, 8), torch.Generator().manual_seed(0), "embedded")  # validates the arguments
    return shift


def _corruption(text: str, domain: str) -> tuple[str, float]:
    name, _, severity = text.partition(":")
    if name not in HELD_OUT_CORRUPTIONS:
        raise ValueError(f"{domain!r}: {name!r} is not a held-out corruption; valid: {', '.join(HELD_OUT_CORRUPTIONS)} "
                         f"(the stream's 15 corruptions never enter the meta-set)")
    return name, _strength(severity, domain)


def _strength(text: str, domain: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{domain!r}: the strength {text!r} is not a number in (0, 5]") from None
    if not 0.0 < value <= 5.0:
        raise ValueError(f"{domain!r}: the strength must be in (0, 5], got {value}")
    return value


def _affine(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    u = lambda: torch.rand(n, generator=g) * 2 - 1  # noqa: E731  (uniform on [-1, 1])
    angle = u() * math.radians(9.0 * strength)
    shear = u() * 0.12 * strength
    scale = 1.0 + u() * 0.08 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _occlude(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    side = max(1, int(round(math.sqrt(0.12 * strength) * min(h, w) * 0.7)))
    out = x.clone()
    for _ in range(2):  # two squares, each about half the area
        top = torch.randint(0, h - side + 1, (n,), generator=g)
        left = torch.randint(0, w - side + 1, (n,), generator=g)
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        mask = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
                & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))
        out = torch.where(mask[:, None], torch.full_like(out, 0.5), out)
    return out


class ShiftedGlyphSource(RenderedSource):
    """Implements `sources.base.StreamSource` for one meta-set domain (`parse_shift`)."""

    num_classes = NUM_CLASSES

    def __init__(self, domain: str, length: int, image_size: int = 32, profile: str = "embedded",
                 domain_seed: int = 0) -> None:
        self.shift = parse_shift(domain)
        self.domain = GlyphDomain(domain_seed, image_size)
        self.image_size, self.profile = image_size, profile
        self._length = length
        # its own part of the calibration range (the upper half: sources.heldout reads the lower)
        self._offset = CALIBRATION.start + (1 << 29) + (mix_seed(7, *domain.encode()) % 256) * (1 << 20)

    @property
    def name(self) -> str:
        return f"metaset/{self.shift.text}{'' if self.shift.crop else WHOLE}"

    @property
    def length(self) -> int:
        return self._length

    def render(self, start: int, stop: int) -> Batch:
        first = start - start % UNIT
        last = stop + (-stop) % UNIT
        glyphs, labels = self.domain.render_range(self._offset + first, self._offset + last)
        units = []
        for lo in range(first, last, UNIT):
            g = torch.Generator().manual_seed(mix_seed(self.domain.seed, self._offset, lo))
            unit = glyphs[lo - first:lo - first + UNIT]
            x = random_resized_crop_flip(unit, g, self.image_size) if self.shift.crop else unit.float() / 255.0
            units.append(jpeg_roundtrip(self.shift.apply(x, g, self.profile).clamp(0, 1))[0])
        keep = slice(start - first, stop - first)
        n = stop - start
        return Batch(indices=np.arange(start, stop, dtype=np.int64), images=torch.cat(units)[keep].numpy(),
                     labels=labels[keep].numpy().astype(np.int64), noise_a=np.full(n, self.shift.family),
                     severity_a=np.zeros(n, np.float32), noise_b=np.full(n, ""), severity_b=np.zeros(n, np.float32))
