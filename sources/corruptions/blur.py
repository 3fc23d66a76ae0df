"""Blur corruptions of ImageNet-C, batched in torch: defocus, glass, motion, zoom, gaussian.

After ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019; hendrycks/robustness `ImageNet-C/create_c/
make_imagenet_c.py` and `make_cifar_c.py`) and CCC (Press et al., NeurIPS 2023; oripress/CCC
`make_imagenet_c.py`, which adds the level-0 rows and interpolates severities linearly).
`gaussian_blur` is one of ImageNet-C's held-out corruptions.

The reference runs OpenCV, scikit-image and ImageMagick on one uint8 image at a time; here every
step is a torch op on a float batch, so it runs on CPU or GPU. The differences that remain are
listed in each class docstring. Pixel-unit constants (radii, sigmas, shuffle distances) are
given at the profile's reference size (224 px for "imagenet", 32 px for "cifar"/"embedded") and
scaled by `min(H, W) / reference size`, so a table keeps its meaning at any image size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Corruption, PixelScaled, pixel_scale
from .registry import register
from .embedded_profile import EMBEDDED

# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by weather.py)
# ---------------------------------------------------------------------------------------------


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-101 padding (OpenCV's default border) by any amount.

    torch's reflect mode needs pad < size; large kernels on small images pad in several rounds.
    """
    while pad > 0:
        step = min(pad, x.shape[-1] - 1, x.shape[-2] - 1)
        if step <= 0:  # a 1-px image: nothing to reflect
            return F.pad(x, (pad,) * 4, mode="replicate")
        x = F.pad(x, (step,) * 4, mode="reflect")
        pad -= step
    return x


def gaussian_kernel1d(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (i / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable gaussian blur of each channel, as skimage.filters.gaussian (scipy's
    gaussian_filter: radius int(truncate * sigma + 0.5), 'nearest' = replicate border)."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x
    n, c, h, w = x.shape
    k = gaussian_kernel1d(sigma, radius, x.device)
    y = F.pad(x.reshape(n * c, 1, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.view(n, c, h, w)


def depthwise_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of every image with one odd (K, K) kernel, reflect-101 border
    (cv2.filter2D's default)."""
    n, c, h, w = x.shape
    pad = kernel.shape[-1] // 2
    y = reflect_pad(x.reshape(n * c, 1, h, w), pad)
    return F.conv2d(y, kernel[None, None].to(x.dtype)).view(n, c, h, w)


def motion_blur_batch(
    x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor
) -> torch.Tensor:
    """ImageMagick's MotionBlurImage, one angle per image.

    ImageMagick averages `2 * ceil(radius) + 1` pixels along a ray that starts at the pixel and
    points at `angle` (x right, y down), weighted by a one-sided gaussian exp(-i^2 / 2 sigma^2)
    over the tap index i; tap i sits at the rounded offset (i cos a, i sin a); pixels beyond the
    border repeat the edge. Here each tap is one batched gather, so per-image angles cost nothing
    extra. Taps whose normalised weight is below 1e-6 are skipped (they cannot move an 8-bit
    value).
    """
    if radius <= 0:
        return x
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float32, device=x.device)
    weights = torch.exp(-(i**2) / (2.0 * max(sigma, 1e-6) ** 2))
    weights = weights / weights.sum()
    # tap offsets in float64 on the CPU (N x width numbers): angles such as -120 degrees put
    # taps exactly on a rounding boundary, and ImageMagick rounds in double precision
    theta = torch.deg2rad(angle_deg.detach().to("cpu", torch.float64))
    i64 = torch.arange(width, dtype=torch.float64)
    ox = torch.ceil(i64[None] * torch.cos(theta)[:, None] - 0.5).long().to(x.device)  # (N, width)
    oy = torch.ceil(i64[None] * torch.sin(theta)[:, None] - 0.5).long().to(x.device)
    pad = width - 1
    xp = F.pad(x, (pad,) * 4, mode="replicate")
    wp = w + 2 * pad
    flat = xp.flatten(2)  # (N, C, Hp * Wp)
    rows = torch.arange(h, device=x.device) + pad
    cols = torch.arange(w, device=x.device) + pad
    base = (rows[:, None] * wp + cols[None, :]).flatten()  # (H * W,)
    shift = oy * wp + ox  # (N, width)
    out = torch.zeros_like(x).flatten(2)
    for t in torch.nonzero(weights >= 1e-6).flatten().tolist():
        idx = (base[None, :] + shift[:, t : t + 1]).unsqueeze(1).expand(n, c, h * w)
        out += weights[t] * flat.gather(2, idx)
    return out.view(n, c, h, w)


def _zoom_axis(size: int, factor: float, device: torch.device):
    """Source rows for one axis of ImageNet-C's clipped_zoom: crop the central ceil(size/z)
    pixels, scipy.ndimage.zoom them (order 1, corners aligned) to round(ch * z), keep the
    central `size`. Returns (lower index, upper index, weight of upper)."""
    ch = int(math.ceil(size / factor))
    top = (size - ch) // 2
    out_size = int(round(ch * factor))
    trim = (out_size - size) // 2
    j = torch.arange(size, dtype=torch.float64, device=device) + trim
    step = (ch - 1) / (out_size - 1) if out_size > 1 else 0.0
    pos = (j * step).clamp(0, ch - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=ch - 1)
    frac = (pos - lo).to(torch.float32)
    return lo + top, hi + top, frac


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Centre zoom by `factor` >= 1 at the same size (ImageNet-C's clipped_zoom), batched.

    Bilinear, exactly scipy's order-1 zoom of the central crop; each axis is one gather.
    """
    factor = max(float(factor), 1.0)
    if factor == 1.0:
        return x
    h, w = x.shape[-2:]
    lo, hi, t = _zoom_axis(h, factor, x.device)
    x = x.index_select(-2, lo) * (1 - t)[:, None] + x.index_select(-2, hi) * t[:, None]
    lo, hi, t = _zoom_axis(w, factor, x.device)
    return x.index_select(-1, lo) * (1 - t) + x.index_select(-1, hi) * t


def disk_kernel(
    radius: float, alias_sigma: float, alias_radius: int, device: torch.device
) -> torch.Tensor:
    """ImageNet-C's `disk`: a normalised binary disk (pixel centres within `radius`), then a
    small gaussian (alias blur) to soften its staircase edge."""
    half = int(math.floor(max(radius, 0.0)))
    ll = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    disk = ((ll[:, None] ** 2 + ll[None, :] ** 2) <= radius**2).float()
    disk = disk / disk.sum()
    if alias_sigma <= 0:
        return disk
    g = gaussian_kernel1d(alias_sigma, alias_radius, device)
    # 'full' convolution: the kernel grows by alias_radius on each side instead of
    # reflecting at a fixed 17x17 frame as cv2 does (identical unless the disk fills the frame).
    k = F.pad(disk[None, None], (2 * alias_radius,) * 4)
    k = F.conv2d(k, (g[:, None] * g[None, :])[None, None])
    return k[0, 0] / k.sum()


# ---------------------------------------------------------------------------------------------
# Corruptions
# ---------------------------------------------------------------------------------------------


@register
class DefocusBlur(PixelScaled):
    """Convolution with an anti-aliased disk (radius px, alias blur sigma px), reflect border.

    Both constants scale with the image; the alias-blur window (3x3 for radius <= 8, else 5x5
    in the reference) scales too. Unlike cv2 the kernel is built on its tight support.
    """

    name = "defocus_blur"
    # (radius, alias_blur)
    levels = {
        "imagenet": np.array(
            [(0.0, 0.0), (3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)], dtype=np.float64
        ),
        "cifar": np.array(
            [(0.0, 0.0), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
            dtype=np.float64,
        ),
        "embedded": EMBEDDED["defocus_blur"],
    }

    def _apply(self, images, c, draws):
        s = pixel_scale(images, draws)
        ref_window = 1 if c[0] <= 8 else 2
        kernel = disk_kernel(
            c[0] * s, c[1] * s, max(1, round(ref_window * s)), images.device
        )
        return depthwise_conv(images, kernel)


@register
class GlassBlur(PixelScaled):
    """Gaussian blur, `iterations` rounds of local pixel shuffling within max_delta, blur again.

    The reference visits every interior pixel in turn and swaps it with a neighbour at offset
    d, d uniform on {-delta .. delta-1}^2 (numpy's randint), one pixel after another. Here a
    round is one batched gather: every pixel takes the value at offset +d or -d (random sign,
    since in the reference a pixel is as often the visited one as the partner; +-d keeps the
    same offset distribution). The differences: values may be duplicated or dropped rather than
    permuted, a pixel moves at most delta per round (the sequential loop lets a value travel on
    with later swaps), the border is clamped instead of left alone, and the image is not
    quantised to uint8 between the steps. Continuous constants stay continuous: a fractional
    delta shifts the offset distribution gradually (floor(u * delta), u uniform on [-1, 1)) and
    a fractional iteration count is a last round in which only that fraction of pixels moves
    (the reference rounds both). Delta is at least 1 px, as in CCC.
    """

    name = "glass_blur"
    # (sigma, max_delta, iterations)
    levels = {
        "imagenet": np.array(
            [(0.0, 0.0, 0.0), (0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
            dtype=np.float64,
        ),
        # row 0 keeps delta at 1 (every CIFAR level has delta 1); 0 iterations = no shuffle.
        "cifar": np.array(
            [(0.0, 1, 0), (0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
            dtype=np.float64,
        ),
        "embedded": EMBEDDED["glass_blur"],
    }

    def _sample(self, rng, shape, c):
        n, _, h, w = shape
        rounds = math.ceil(max(float(c[2]), 0.0))
        # per round and pixel: dy, dx, and one uniform for both the sign and the partial mask
        u = torch.rand((rounds, n, 3, h, w), generator=rng, device=rng.device)
        return {"shuffle": u}

    def _apply(self, images, c, draws):
        s = pixel_scale(images, draws)
        sigma, delta, iterations = c[0] * s, max(c[1] * s, 1.0), max(float(c[2]), 0.0)
        x = gaussian_filter(images, sigma)
        n, ch, h, w = x.shape
        u = draws["shuffle"].to(x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        for r in range(u.shape[0]):
            frac = min(iterations - r, 1.0)
            if frac <= 0:
                break
            d = torch.floor((2 * u[r, :, :2] - 1) * delta)  # (N, 2, H, W) in {-delta..delta-1}
            v = u[r, :, 2]
            sign = torch.where(v < 0.5, 1.0, -1.0)
            moves = ((2 * v) % 1.0) < frac  # independent of the sign bit
            d = (d * sign[:, None] * moves[:, None]).long()
            src_y = (ys + d[:, 0]).clamp(0, h - 1)
            src_x = (xs + d[:, 1]).clamp(0, w - 1)
            idx = (src_y * w + src_x).flatten(1)[:, None].expand(n, ch, h * w)
            x = x.flatten(2).gather(2, idx).view(n, ch, h, w)
        return gaussian_filter(x, sigma)


@register
class MotionBlur(PixelScaled):
    """ImageMagick motion blur (radius px, sigma px) at an angle uniform in [-45, 45] degrees.

    See `motion_blur_batch`; radius and sigma scale with the image.
    """

    name = "motion_blur"
    # (radius, sigma)
    levels = {
        "imagenet": np.array(
            [(0.0, 0.0), (10, 3), (15, 5), (15, 8), (15, 12), (20, 15)], dtype=np.float64
        ),
        "cifar": np.array(
            [(0.0, 0.0), (6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], dtype=np.float64
        ),
        "embedded": EMBEDDED["motion_blur"],
    }

    def _sample(self, rng, shape, c):
        u = torch.rand((shape[0],), generator=rng, device=rng.device)
        return {"angle": u * 90.0 - 45.0}

    def _apply(self, images, c, draws):
        s = pixel_scale(images, draws)
        return motion_blur_batch(images, c[0] * s, c[1] * s, draws["angle"])


@register
class ZoomBlur(Corruption):
    """Mean of the image and its centre zooms by np.arange(c0, c1, c2) (dimensionless).

    Zooms are exact order-1 scipy zooms of the central crop, done as batched gathers.
    """

    name = "zoom_blur"
    # (start, stop, step) of np.arange over zoom factors
    levels = {
        "imagenet": np.array(
            [
                (1.0, 1.0, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01),
                (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03),
            ],
            dtype=np.float64,
        ),
        "cifar": np.array(
            [
                (1.0, 1.0, 0.01), (1, 1.06, 0.01), (1, 1.11, 0.01),
                (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01),
            ],
            dtype=np.float64,
        ),
        "embedded": EMBEDDED["zoom_blur"],
    }

    def _apply(self, images, c, draws):
        factors = np.arange(c[0], c[1], c[2]) if c[2] > 0 else np.array([])
        out = images.clone()
        for z in factors:
            out += clipped_zoom(images, float(z))
        return out / (len(factors) + 1)


@register
class GaussianBlur(PixelScaled):
    """Held-out: separable gaussian blur (sigma px; skimage's truncate 4, replicate border)."""

    name = "gaussian_blur"
    # (sigma,)
    levels = {
        "imagenet": np.array([[0.0], [1], [2], [3], [4], [6]], dtype=np.float64),
        "cifar": np.array([[0.0], [0.4], [0.6], [0.7], [0.8], [1.0]], dtype=np.float64),
        "embedded": EMBEDDED["gaussian_blur"],
    }

    def _apply(self, images, c, draws):
        return gaussian_filter(images, c[0] * pixel_scale(images, draws))
