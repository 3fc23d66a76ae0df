"""The evaluation suite's own streams, rendered once to arrays so that any checkout can run them.

A stream here is a folder of `images.npy` (uint8 N x 3 x 32 x 32), `labels.npy`, `family.npy` and
`severity.npy`, rendered with this checkout's glyph domain, the shift, then JPEG at quality 85 as CCC stores
images, without CCC's random resized crop (the source domain's own framing, on which the frozen
model is about 98% accurate, so the only shift is the named one); `_suite_run.py` serves it to the run under
test in stream order, so an older release reads exactly the same images. The glyphs come from
the STREAM index range at an offset no CCC seed (0-63 in this project) reaches, so no stream and
no calibration has seen them.

Kinds:
- `clean`: no shift at all.
- `drift`: clean for the first 30%, then contrast (one of CCC's 15) rising linearly to severity 5.
- `mixed`: blocks of 2,500 images, clean and corrupted by turns (a CCC corruption at severity 3-5
  drawn per block), so a 5,000-image window is half clean.
- `posterize`: every channel quantised to 6 - severity bits (PIL's ImageOps.posterize).
- `sharpen`: an unsharp mask of amount 3 x severity (the image plus that much of its difference
  from a 3x3 box blur).
The last two are shift families that neither CCC (ImageNet-C's 15), nor the calibration (ImageNet-C's
4 held-out corruptions), nor the full-range meta-set (`sources/shifts.py`: affine, invert, occlude,
compositions and mixtures of clean and corrupted images) uses; their severity walks over 1-5 in
blocks of 2,500 images. (An earlier suite had `occlusion` and `solarize`, too close to the
meta-set's `occlude` and `invert` once that was built.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stream_monitor.sources.augment import jpeg_roundtrip
from stream_monitor.sources.corruptions import STREAM_CORRUPTIONS, get_corruption
from stream_monitor.sources.glyphs import STREAM, GlyphDomain
from stream_monitor.sources.seeding import mix_seed

KINDS = ("clean", "drift", "mixed", "posterize", "sharpen")
NOVEL_FAMILIES = ("posterize", "sharpen")
UNIT = 64
BLOCK = 2_500
#: Where the suite's glyphs start: CCC seed s reads from STREAM.start + s * 2**36.
SUITE_OFFSET = STREAM.start + 5_000 * (1 << 36)


def posterize(x: torch.Tensor, severity: float, g: torch.Generator) -> torch.Tensor:
    """Each channel value kept to its 6 - severity high bits (PIL's ImageOps.posterize)."""
    drop = 8 - max(1, 6 - round(severity))
    levels = torch.floor(x * 255.0).to(torch.int64)
    return ((levels >> drop) << drop).to(x.dtype) / 255.0


def sharpen(x: torch.Tensor, severity: float, g: torch.Generator) -> torch.Tensor:
    """An unsharp mask: the image plus 3 x severity times its difference from a 3x3 box blur."""
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return (x + 3.0 * severity * (x - blurred)).clamp(0.0, 1.0)


NOVEL = {"posterize": posterize, "sharpen": sharpen}


def plan(kind: str, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(family, severity) of every image of a stream of `kind` ("" and 0 where clean)."""
    if kind not in KINDS:
        raise ValueError(f"unknown suite stream {kind!r}; valid: {', '.join(KINDS)}")
    family = np.full(length, "", dtype="<U24")
    severity = np.zeros(length, np.float32)
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    blocks = range(0, length, BLOCK)
    if kind == "drift":
        start = int(0.3 * length)
        family[start:] = "contrast"
        severity[start:] = np.linspace(0.0, 5.0, length - start, dtype=np.float32)
    elif kind == "mixed":
        for k, lo in enumerate(blocks):
            if k % 2:
                family[lo:lo + BLOCK] = STREAM_CORRUPTIONS[rng.integers(len(STREAM_CORRUPTIONS))]
                severity[lo:lo + BLOCK] = rng.uniform(3.0, 5.0)
    elif kind in NOVEL:
        levels = np.concatenate([rng.permutation(5) + 1 for _ in range(len(blocks) // 5 + 1)])
        for k, lo in enumerate(blocks):
            family[lo:lo + BLOCK] = kind
            severity[lo:lo + BLOCK] = levels[k]
    return family, severity


def render(kind: str, length: int, out: Path, seed: int = 0) -> Path:
    """Render the stream into `out` (a folder); a folder already holding it is kept as is."""
    out = Path(out)
    meta = {"kind": kind, "length": length, "seed": seed, "offset": SUITE_OFFSET + KINDS.index(kind) * (1 << 32)}
    if (out / "stream.json").exists() and json.loads((out / "stream.json").read_text()) == meta:
        return out
    out.mkdir(parents=True, exist_ok=True)
    family, severity = plan(kind, length, seed)
    domain = GlyphDomain(0, 32)
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (length, 3, 32, 32))
    labels = np.zeros(length, np.int64)
    for lo in range(0, length, UNIT):
        hi = min(lo + UNIT, length)
        glyphs, y = domain.render_range(meta["offset"] + lo, meta["offset"] + hi)
        g = torch.Generator().manual_seed(mix_seed(seed, KINDS.index(kind), lo))
        x = glyphs.float() / 255.0  # no random resized crop: the source domain's own framing
        parts = []
        i = 0
        while i < hi - lo:  # runs of one (family, severity): a unit may straddle two blocks
            name, level = family[lo + i], float(severity[lo + i])
            j = i + 1
            while j < hi - lo and family[lo + j] == name and severity[lo + j] == severity[lo + i]:
                j += 1
            xi = x[i:j]
            if name and level > 0:
                xi = NOVEL[name](xi, level, g) if name in NOVEL else get_corruption(name)(xi, level, g, "embedded")
            parts.append(xi)
            i = j
        images[lo:hi] = jpeg_roundtrip(torch.cat(parts).clamp(0, 1))[0].numpy()
        labels[lo:hi] = y.numpy()
    images.flush()
    np.save(out / "labels.npy", labels)
    np.save(out / "family.npy", family)
    np.save(out / "severity.npy", severity)
    (out / "stream.json").write_text(json.dumps(meta))
    return out


__all__ = ["KINDS", "NOVEL_FAMILIES", "plan", "render"]
