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

The last three are the validation families (`metaset.VALIDATION_DOMAINS`), kept out of every fit:

- `jigsaw:S`: the image cut into a 4 x 4 grid and a share S / 5 of its tiles permuted among
  themselves (the jigsaw puzzles of Noroozi & Favaro, ECCV 2016, as a shift: local content kept,
  global layout broken).
- `stripes:S`: a grey sinusoidal grating added, amplitude 0.06 S, random orientation, 2-6 cycles
  across the image (a structured overlay, as of a screen or a scanner; no ImageNet-C corruption).
- `channel:S`: a colour cast, x -> (1 - t) x + t P x with P a random permutation of the RGB
  channels and t = S / 5 (t = 1 swaps the channels outright).

A domain ending in `/whole` skips the random resized crop: the whole glyph, as the embedded model
was trained on it (the source domain itself, where the frozen model is most accurate).

`ShiftedGlyphSource` renders the embedded glyphs; `ShiftedSource` shifts the images of any other
source (a user's image folder, `stream-monitor calibrate --data`), one generator per image so image
i is a pure function of (domain, i) whatever the slicing. Both go through `shift_images`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .augment import jpeg_roundtrip, random_resized_crop_flip
from .base import Batch, RenderedSource, StreamSource
from .corruptions import HELD_OUT_CORRUPTIONS, get_corruption
from .glyphs import CALIBRATION, NUM_CLASSES, GlyphDomain
from .seeding import mix_seed

UNIT = 64
WHOLE = "/whole"
FAMILIES = ("clean", "heldout", "compose", "mix", "affine", "invert", "occlude", "jigsaw", "stripes", "channel")
JIGSAW_GRID = 4


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
        if family == "jigsaw":
            return _jigsaw(x, strength, g)
        if family == "stripes":
            return _stripes(x, strength, g)
        if family == "channel":
            return _channel(x, strength, g)
        raise AssertionError(family)


def parse_shift(text: str) -> Shift:
    """A domain `FAMILY:ARGS` (module docstring); ValueError naming the valid forms."""
    crop = not text.endswith(WHOLE)
    text = text.removesuffix(WHOLE)
    family = text.partition(":")[0]
    if family not in FAMILIES:
        raise ValueError(f"Unknown meta-set domain {text!r}: the family must be one of {', '.join(FAMILIES)}, e.g. "
                         f"clean, heldout:speckle_noise:3, compose:spatter:3+gaussian_blur:2, "
                         f"mix:0.5:speckle_noise:5, affine:3, invert:2, occlude:3, jigsaw:3, stripes:3, channel:3")
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


def _jigsaw(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    k = JIGSAW_GRID
    th, tw = h // k, w // k
    if th == 0 or tw == 0:
        return x
    core = x[:, :, :th * k, :tw * k]
    tiles = core.reshape(n, c, k, th, k, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, k * k, c, th, tw)
    moved = max(2, int(round(strength / 5.0 * k * k)))
    order = torch.arange(k * k).repeat(n, 1)
    for i in range(n):
        chosen = torch.randperm(k * k, generator=g)[:moved]
        order[i, chosen] = chosen[torch.randperm(moved, generator=g)]
    tiles = tiles[torch.arange(n)[:, None], order]
    out = x.clone()
    grid = tiles.reshape(n, k, k, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    out[:, :, :th * k, :tw * k] = grid.reshape(n, c, th * k, tw * k)
    return out


def _stripes(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    angle = torch.rand(n, generator=g) * math.pi
    cycles = 2.0 + 4.0 * torch.rand(n, generator=g)
    phase = torch.rand(n, generator=g) * 2 * math.pi
    v, u = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    position = torch.cos(angle)[:, None, None] * u + torch.sin(angle)[:, None, None] * v
    wave = torch.sin(2 * math.pi * cycles[:, None, None] * position + phase[:, None, None])
    return x + 0.06 * strength * wave[:, None]


def _channel(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    t = strength / 5.0
    swapped = torch.stack([x[i, torch.randperm(x.shape[1], generator=g)] for i in range(len(x))])
    return (1 - t) * x + t * swapped


def shift_images(images: torch.Tensor, shift: Shift, g: torch.Generator, profile: str, size: int) -> torch.Tensor:
    """The stream's pipeline on uint8 (N, 3, H, W) images: flip + random resized crop to `size`
    (unless the domain is `/whole`), the shift, JPEG at quality 85; uint8 (N, 3, size, size) out.
    Every random draw comes from `g`, in that order."""
    x = random_resized_crop_flip(images, g, size) if shift.crop else images.float() / 255.0
    return jpeg_roundtrip(shift.apply(x, g, profile).clamp(0, 1))[0]


class ShiftedSource:
    """Implements `sources.base.StreamSource`: one meta-set domain (`parse_shift`) over the images
    of any base source (e.g. `sources.imagefolder.ImageFolderSource`), labels kept.

    Args:
        base: the source whose images are shifted; its labels are the truth.
        domain: `FAMILY:ARGS`, optionally ending in `/whole` (no random resized crop).
        length: images of the domain; base positions [offset, offset + length) must exist.
        profile: the corruption constants (`sources.factory.corruption_profile`): ``imagenet`` for
            224 px images, ``embedded`` for 32 px.
        seed: with the domain and the position, seeds each image's own generator.
        offset: the base position of the domain's first image (domains can read different images).

    Raises:
        ValueError: the domain does not parse, or the base holds fewer than offset + length images.
    """

    def __init__(self, base: StreamSource, domain: str, length: int, profile: str = "imagenet", seed: int = 0,
                 offset: int = 0) -> None:
        self.shift = parse_shift(domain)
        if base.length is not None and offset + length > base.length:
            raise ValueError(f"{base.name!r} has {base.length} images; the domain {domain!r} needs positions "
                             f"{offset} to {offset + length}: give the base source more passes or a shorter domain")
        self.base, self.profile, self._offset, self._length = base, profile, offset, length
        self.num_classes, self.image_size = base.num_classes, base.image_size
        self._seed = mix_seed(seed, *domain.encode())

    @property
    def name(self) -> str:
        return f"metaset/{self.base.name}/{self.shift.text}{'' if self.shift.crop else WHOLE}"

    @property
    def length(self) -> int:
        return self._length

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        """Batches of [start, stop) in stream order; images the base could not read stay skipped."""
        if not 0 <= start <= stop <= self._length:
            raise ValueError(f"slice [{start}, {stop}) is outside {self.name!r} of {self._length} images")
        for batch in self.base.read(self._offset + start, self._offset + stop, batch_size):
            indices = batch.indices - self._offset
            images = torch.from_numpy(batch.images)
            # one generator per image: the same image whatever slice or batch size reads it
            shifted = [shift_images(images[k:k + 1], self.shift, torch.Generator().manual_seed(mix_seed(self._seed, i)),
                                    self.profile, self.image_size) for k, i in enumerate(indices.tolist())]
            n = len(indices)
            yield Batch(indices=indices, labels=batch.labels,
                        images=torch.cat(shifted).numpy() if shifted else batch.images,
                        noise_a=np.full(n, self.shift.family), severity_a=np.zeros(n, np.float32),
                        noise_b=np.full(n, ""), severity_b=np.zeros(n, np.float32), skipped=batch.skipped)

    def __repr__(self) -> str:
        return f"ShiftedSource({self.base.name!r}, {self.shift.text!r}, {self._length} images)"


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
            units.append(shift_images(unit, self.shift, g, self.profile, self.image_size))
        keep = slice(start - first, stop - first)
        n = stop - start
        return Batch(indices=np.arange(start, stop, dtype=np.int64), images=torch.cat(units)[keep].numpy(),
                     labels=labels[keep].numpy().astype(np.int64), noise_a=np.full(n, self.shift.family),
                     severity_a=np.zeros(n, np.float32), noise_b=np.full(n, ""), severity_b=np.zeros(n, np.float32))
