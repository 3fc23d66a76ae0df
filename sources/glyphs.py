"""The embedded image domain: procedurally rendered digit glyphs on cluttered textures.

It stands in for ImageNet where there is no data and no internet: ten classes (the digits 0-9
drawn with Pillow's built-in scalable font), rendered at any size (32 px by default), with real
intra-class variation (stroke width, size, rotation, shear, position, colours, contrast) on
textured backgrounds (gradients, stripes, blotches, grain) with line and blob clutter.

Rendering is batched in torch: the ten glyphs are drawn once with Pillow into a small bank of
alpha masks, and every image is an affine warp of one mask (`grid_sample`) composited over a
procedural background. Randomness is drawn per aligned block of `BLOCK` indices from a generator
seeded by (seed, block), so image `i` is a pure function of (seed, i) however a range is sliced.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .seeding import mix_seed

#: Images are generated in aligned blocks of this many indices (the unit of randomness).
BLOCK = 256
NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
_MASK_SIZE = 64
_STROKES = (0, 1, 2, 3)


@dataclass(frozen=True)
class IndexRange:
    """A half-open range [start, stop) of domain indices."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


#: Disjoint index ranges of the domain: the source model trains on TRAIN, is validated on VAL,
#: calibration meta-sets draw from CALIBRATION, and every stream draws from STREAM onwards.
TRAIN = IndexRange(0, 1 << 40)
VAL = IndexRange(1 << 40, (1 << 40) + (1 << 20))
CALIBRATION = IndexRange((1 << 41), (1 << 41) + (1 << 30))
CALIBRATION_STREAMS = IndexRange((1 << 41) + (1 << 30), (1 << 41) + (1 << 31))  # 64 seeds x 2**24
STREAM = IndexRange(1 << 42, 1 << 62)


@lru_cache(maxsize=1)
def glyph_masks() -> torch.Tensor:
    """Alpha masks (classes, strokes, 64, 64) of the ten digits, centred, drawn once with Pillow."""
    font = ImageFont.load_default(size=44)
    if not isinstance(font, ImageFont.FreeTypeFont):
        # Without FreeType Pillow silently falls back to a fixed bitmap font (research note).
        raise RuntimeError(
            "Pillow was built without FreeType, so the embedded domain cannot render its glyphs. "
            "Install a Pillow wheel from PyPI (`pip install --force-reinstall pillow`)."
        )
    masks = np.zeros((NUM_CLASSES, len(_STROKES), _MASK_SIZE, _MASK_SIZE), dtype=np.float32)
    for c, text in enumerate(CLASS_NAMES):
        for s, stroke in enumerate(_STROKES):
            canvas = Image.new("L", (_MASK_SIZE, _MASK_SIZE), 0)
            draw = ImageDraw.Draw(canvas)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
            origin = ((_MASK_SIZE - (right - left)) / 2 - left, (_MASK_SIZE - (bottom - top)) / 2 - top)
            draw.text(origin, text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
            masks[c, s] = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(masks)


class GlyphDomain:
    """Renders images of the embedded domain: `render(indices)` -> (uint8 NCHW, int64 labels)."""

    num_classes = NUM_CLASSES

    def __init__(self, seed: int = 0, image_size: int = 32) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {image_size}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        # Streams read batches smaller than a block; keep the last blocks so each renders once.
        self._recent: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __repr__(self) -> str:
        return f"GlyphDomain(seed={self.seed}, image_size={self.image_size})"

    def render_range(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [start, stop) as uint8 (N, 3, S, S) and their labels (N,)."""
        if not 0 <= start <= stop:
            raise ValueError(f"invalid index range [{start}, {stop})")
        images, labels = [], []
        for block in range(start // BLOCK, -(-stop // BLOCK)):
            lo = max(start, block * BLOCK) - block * BLOCK
            hi = min(stop, (block + 1) * BLOCK) - block * BLOCK
            x, y = self._cached_block(block)
            images.append(x[lo:hi])
            labels.append(y[lo:hi])
        if not images:
            s = self.image_size
            return torch.empty(0, 3, s, s, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return torch.cat(images), torch.cat(labels)

    def _cached_block(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        if block not in self._recent:
            self._recent[block] = self._render_block(block)
            if len(self._recent) > 2:
                self._recent.popitem(last=False)
        return self._recent[block]

    def _render_block(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, block))
        n, s = BLOCK, self.image_size

        def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return torch.rand(n, *shape, generator=g) * (hi - lo) + lo

        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        strokes = torch.randint(0, len(_STROKES), (n,), generator=g)
        background = _background(g, n, s, u)
        background = _add_clutter(background, g, n, s, u)

        # Glyph geometry: height 40-85% of the image, rotated, sheared, anywhere it fits.
        scale = u(0.40, 0.85)
        angle = u(-0.45, 0.45)
        shear = u(-0.3, 0.3)
        aspect = u(0.8, 1.2)
        room = (1 - scale).clamp(min=0.0)
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * room[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Inverse map from output to mask coordinates (grid_sample convention).
        a = torch.stack(
            [
                torch.stack([cos / (scale * aspect), (sin + shear * cos) / (scale * aspect)], 1),
                torch.stack([-sin / scale, (cos - shear * sin) / scale], 1),
            ],
            1,
        )
        theta = torch.cat([a, -(a @ shift[:, :, None])], dim=2)
        grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
        masks = glyph_masks()[labels, strokes][:, None]
        alpha = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        alpha = alpha * u(0.75, 1.0, 1, 1, 1)

        # Foreground colour: a random hue kept at a random, often modest, contrast from the
        # local background, so the glyph is readable but not trivially so.
        local = (background * alpha).sum((2, 3)) / alpha.sum((2, 3)).clamp(min=1e-6)
        direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
        sign = torch.where(local.mean(1, keepdim=True) > 0.5, -1.0, 1.0)
        contrast = u(0.30, 0.75, 1)
        fg = local + sign * contrast * (0.6 + 0.4 * direction.abs())
        fg = fg.clamp(0, 1)[:, :, None, None]

        image = background * (1 - alpha) + fg * alpha
        grain = torch.randn(n, 1, s, s, generator=g) * u(0.0, 0.04, 1, 1, 1)
        image = (image + grain).clamp(0, 1)
        return (image * 255).round().to(torch.uint8), labels


def _background(g: torch.Generator, n: int, s: int, u) -> torch.Tensor:
    """Gradient + stripes + low-frequency blotches, with random weights per image."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    c0, c1 = u(0, 1, 3, 1, 1), u(0, 1, 3, 1, 1)
    phi = u(0, 2 * math.pi, 1, 1, 1)
    ramp = (torch.cos(phi) * xs + torch.sin(phi) * ys + 1.5) / 3.0
    image = c0 + (c1 - c0) * ramp
    psi = u(0, 2 * math.pi, 1, 1, 1)
    freq = u(1.5, 7.0, 1, 1, 1)
    stripes = torch.sin(math.pi * freq * (torch.cos(psi) * xs + torch.sin(psi) * ys) + u(0, 6.3, 1, 1, 1))
    image = image + stripes * u(0, 0.18, 1, 1, 1) * (u(-1, 1, 3, 1, 1))
    blotch = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(s, s), mode="bicubic", align_corners=False)
    image = image + (blotch - 0.5) * u(0, 0.5, 1, 1, 1)
    return image.clamp(0, 1)


def _add_clutter(image: torch.Tensor, g: torch.Generator, n: int, s: int, u, lines: int = 3, blobs: int = 2):
    """Paint thin random line segments and soft blobs over the (opaque) background, in order."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")

    def column(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, 1, 1, 1), to broadcast over pixels
        return v.view(n, 1, 1, 1)

    for _ in range(lines):
        a, b = u(-1, 1, 2), u(-1, 1, 2)
        ax, ay, dx, dy = column(a[:, 0]), column(a[:, 1]), column(b[:, 0] - a[:, 0]), column(b[:, 1] - a[:, 1])
        # Distance from each pixel to the segment a-b: project, clamp to the segment, measure.
        t = (((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy).clamp(min=1e-6)).clamp(0, 1)
        dist = torch.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
        width = column(u(0.03, 0.10))
        strength = column(u(0.3, 0.9) * (torch.rand(n, generator=g) < 0.7))
        image = torch.lerp(image, u(0, 1, 3, 1, 1), (1 - dist / width).clamp(0, 1) * strength)
    for _ in range(blobs):
        centre, radius = u(-1, 1, 2), column(u(0.1, 0.35))
        cx, cy = column(centre[:, 0]), column(centre[:, 1])
        blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / radius**2)
        blob = blob * column(u(0.2, 0.7) * (torch.rand(n, generator=g) < 0.6))
        image = torch.lerp(image, u(0, 1, 3, 1, 1), blob)
    return image
