"""CCC's per-image transforms: RandomHorizontalFlip, RandomResizedCrop, JPEG quality 85.

oripress/CCC `generate.py` applies `RandomHorizontalFlip()` then `RandomResizedCrop(224)` (scale
0.08-1, ratio 3/4-4/3) to every image before the corruptions, and stores the result as a JPEG at
quality 85. torchvision's transforms draw from the global RNG one image at a time; here the crop
boxes follow torchvision's `RandomResizedCrop.get_params` algorithm but are drawn, vectorised,
from an explicit generator (so a block of a stream is reproducible), and the crops of a batch
are resampled together with `torchvision.ops.roi_align`.
"""

from __future__ import annotations

import math

import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
JPEG_QUALITY = 85


def crop_boxes(
    rng: torch.Generator,
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
    attempts: int = 10,
) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, h, w) drawn like torchvision's RandomResizedCrop."""
    area = height * width
    target = area * (torch.rand(n, attempts, generator=rng) * (scale[1] - scale[0]) + scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(n, attempts, generator=rng) * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    w_pick = w[rows, first.clamp(min=0)]
    h_pick = h[rows, first.clamp(min=0)]
    # Fallback (no attempt fits): torchvision's whole-image centre crop at the clamped ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    missed = first < 0
    w_pick = torch.where(missed, torch.tensor(float(fw)), w_pick)
    h_pick = torch.where(missed, torch.tensor(float(fh)), h_pick)
    u_top, u_left = torch.rand(n, generator=rng), torch.rand(n, generator=rng)
    top = torch.where(missed, (height - h_pick) // 2, torch.floor(u_top * (height - h_pick + 1)))
    left = torch.where(missed, (width - w_pick) // 2, torch.floor(u_left * (width - w_pick + 1)))
    return torch.stack([top, left, h_pick, w_pick], 1).long()


def random_resized_crop_flip(
    images: torch.Tensor | list[torch.Tensor],
    rng: torch.Generator,
    size: int,
    scale: tuple[float, float] = SCALE,
    flip: bool = True,
) -> torch.Tensor:
    """Flip (p = 0.5) then random-resized-crop to `size`; returns float32 (N, 3, size, size) in [0, 1].

    `images` is a uint8 or float batch (N, 3, H, W), or a list of uint8 CHW tensors of any sizes
    (ImageNet). The random draws happen in a fixed order (flips, then boxes) so results depend
    only on the generator state.
    """
    n = len(images)
    flips = torch.rand(n, generator=rng) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    if isinstance(images, torch.Tensor):
        batch = _to_float(images)
        h, w = batch.shape[-2:]
        boxes = crop_boxes(rng, n, h, w, scale)
        batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
        top, left, bh, bw = boxes.unbind(1)
        x0 = left.float()
        y0 = top.float()
        rois = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], 1)
        return roi_align(batch, rois.to(batch.device), output_size=size, spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True).clamp_(0, 1)
    out = []
    for image, flipped in zip(images, flips.tolist()):
        h, w = image.shape[-2:]
        top, left, bh, bw = crop_boxes(rng, 1, h, w, scale)[0].tolist()
        if flipped:
            image = image.flip(-1)
        crop = TF.resized_crop(image, top, left, bh, bw, [size, size], antialias=True)
        out.append(_to_float(crop))
    return torch.stack(out) if out else torch.empty(0, 3, size, size)


def jpeg_roundtrip(images: torch.Tensor, quality: int = JPEG_QUALITY) -> tuple[torch.Tensor, list[bytes]]:
    """Encode float [0, 1] images as JPEG and decode them again: (uint8 NCHW, encoded bytes)."""
    as_uint8 = to_uint8(images).cpu()
    encoded = encode_jpeg(list(as_uint8), quality=quality)
    decoded = decode_jpeg(encoded)
    return torch.stack(decoded), [bytes(e.numpy().tobytes()) for e in encoded]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
