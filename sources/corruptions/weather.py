"""Weather corruptions of ImageNet-C, batched in torch: snow, frost, fog, and held-out spatter.

After ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019; hendrycks/robustness `ImageNet-C/create_c/
make_imagenet_c.py` and `make_cifar_c.py`) and CCC (Press et al., NeurIPS 2023; oripress/CCC
`make_imagenet_c.py`, which adds the level-0 rows and interpolates severities linearly).

All random fields are drawn in `sample_params` as standard normals/uniforms that do not depend
on the constants, so one seed gives the same snowflakes, clouds or drops at every severity and
the effect grows smoothly with it. Pixel-unit constants scale with the image as in blur.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Corruption, PixelScaled, pixel_scale
from .blur import clipped_zoom, depthwise_conv, gaussian_filter, motion_blur_batch
from .registry import register
from .embedded_profile import EMBEDDED

#: ITU-R 601 luma, as cv2.COLOR_RGB2GRAY.
_LUMA = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _plasma_size(h: int, w: int) -> int:
    return 1 << max(1, math.ceil(math.log2(max(h, w))))


def plasma_fractal(u: torch.Tensor, mapsize: int, decay: float) -> torch.Tensor:
    """Batched diamond-square height map in [0, 1], (N, mapsize, mapsize), toroidal.

    ImageNet-C's plasma_fractal: start from a zero corner, at each scale set square centres and
    then diamond centres to the mean of their 4 neighbours plus uniform noise of amplitude
    wibble^2, with wibble = 100 divided by `decay` per scale; finally min-max normalise.
    `u` holds uniform(-1, 1) draws, (N, >= mapsize^2 - 1), consumed scale by scale.
    """
    n = u.shape[0]
    m = torch.zeros((n, mapsize, mapsize), dtype=torch.float32, device=u.device)
    step, wibble, used = mapsize, 100.0, 0

    def noise(cells: int) -> torch.Tensor:
        nonlocal used
        out = u[:, used : used + cells * cells].view(n, cells, cells)
        used += cells * cells
        return out * wibble**2

    while step >= 2:
        half, cells = step // 2, mapsize // step
        corner = m[:, 0::step, 0::step]
        squares = corner + corner.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        m[:, half::step, half::step] = squares / 4 + noise(cells)
        centre = m[:, half::step, half::step]
        corner = m[:, 0::step, 0::step]
        left = centre + centre.roll(1, 1) + corner + corner.roll(-1, 2)
        m[:, 0::step, half::step] = left / 4 + noise(cells)
        top = centre + centre.roll(1, 2) + corner + corner.roll(-1, 1)
        m[:, half::step, 0::step] = top / 4 + noise(cells)
        step //= 2
        wibble /= decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)


def _uniform(rng: torch.Generator, shape, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=rng, device=rng.device) * (hi - lo) + lo


@register
class Snow(PixelScaled):
    """ImageNet-C snow: a thresholded, zoomed gaussian noise layer, motion-blurred at an angle
    in [-135, -45] degrees, added with its 180-degree rotation to a greyed, brightened image.

    Constants: (mean, std, zoom, threshold, blur radius px, blur sigma px, image weight).
    The zoom (flake size in px), blur radius and sigma scale with the image; the zoom is at least
    1 (flakes cannot be smaller than a pixel). The layer is not quantised to uint8 as the
    PNG round trip through ImageMagick does.
    """

    name = "snow"
    levels = {
        "imagenet": np.array(
            [
                (0.1, 0.3, 3, 1.0, 10, 4, 1.0),
                (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
                (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
            ],
            dtype=np.float64,
        ),
        # row 0 as CCC's ImageNet row 0: level-1 layer, threshold 1, image weight 1.
        "cifar": np.array(
            [
                (0.1, 0.2, 1, 1.0, 8, 3, 1.0),
                (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
            ],
            dtype=np.float64,
        ),
        "embedded": EMBEDDED["snow"],
    }

    def _sample(self, rng, shape, c):
        n, _, h, w = shape
        return {
            "layer": torch.randn((n, 1, h, w), generator=rng, device=rng.device),
            "angle": _uniform(rng, (n,), -135.0, -45.0),
        }

    def _apply(self, images, c, draws):
        s = pixel_scale(images, draws)
        layer = c[0] + c[1] * draws["layer"].to(images.device)
        layer = clipped_zoom(layer, max(c[2] * s, 1.0))
        layer = torch.where(layer < c[3], 0.0, layer).clamp(0.0, 1.0)
        layer = motion_blur_batch(layer, c[4] * s, c[5] * s, draws["angle"])
        bright = torch.maximum(images, _gray(images) * 1.5 + 0.5)
        x = c[6] * images + (1.0 - c[6]) * bright
        return x + layer + layer.flip(-2, -1)


# ---------------------------------------------------------------------------------------------
# Frost: a procedural texture instead of ImageNet-C's frost photographs
# ---------------------------------------------------------------------------------------------

_NEEDLE_ORIENTATIONS = 4  # orientation channels per needle family (long, short)


def _segment(yy, xx, cy, cx, theta, length, width):
    """Soft line segments on a (Hk, Wk) grid, one per image: centre (cy, cx), angle theta (N,),
    gaussian cross-section `width`, brightness tapering linearly to 0 at the tips."""
    dy = yy[None] - cy.view(-1, 1, 1)
    dx = xx[None] - cx.view(-1, 1, 1)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    along = dx * cos + dy * sin
    perp = dy * cos - dx * sin
    return torch.exp(-(perp**2) / (2 * width**2)) * (1 - along.abs() / (length / 2)).clamp_min(0)


def frost_texture(draws: dict, h: int, w: int, device: torch.device) -> torch.Tensor:
    """A frost-on-glass texture, (N, 3, H, W) in [0, 1], from the draws of `Frost._sample`.

    ImageNet-C blends photographs of frost; we may not ship them, so this paints an imitation:
    - needles: sparse random seed pixels, each stamped (FFT convolution, circular) with a soft
      line segment; four orientation channels of long feathered needles (a stem with three
      pairs of barbs at +-60 degrees) and four of short plain ones, angles random per image;
      lengths are fractions of the image side, so the look does not depend on resolution;
    - a plasma-fractal cloud that modulates needle density and the ice's base brightness;
    - fine gaussian grain;
    - a light blue-white tint with a little per-image variation.
    Brightness was matched to the photos ImageNet-C draws from (mean about (0.57, 0.66, 0.70)
    in RGB, std about 0.1), so the published blend weights keep their meaning.
    """
    field, angles = draws["field"].to(device), draws["angles"].to(device)
    n = field.shape[0]
    side = min(h, w)
    long_len, short_len = 0.16 * side, 0.05 * side
    width = max(0.45, 0.0035 * side)
    p_long, p_short = _seed_probabilities(h, w)
    k = _NEEDLE_ORIENTATIONS

    half = min(math.ceil(long_len / 2 + 3 * width) + 1, (side - 1) // 2)
    grid = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    yy, xx = grid[:, None].expand(2 * half + 1, -1), grid[None, :].expand(-1, 2 * half + 1)
    zero = torch.zeros(n, device=device)

    spectrum = 0
    for ch in range(2 * k):
        theta = angles[:, ch] * math.pi
        if ch < k:  # long, feathered needle
            lo, p = 0.0, p_long
            kern = _segment(yy, xx, zero, zero, theta, long_len, width)
            for t in (-0.25, 0.0, 0.25):
                for turn in (math.pi / 3, -math.pi / 3):
                    phi = theta + turn
                    cy = t * long_len * torch.sin(theta) + long_len / 8 * torch.sin(phi)
                    cx = t * long_len * torch.cos(theta) + long_len / 8 * torch.cos(phi)
                    kern = kern + 0.7 * _segment(yy, xx, cy, cx, phi, long_len / 4, width)
        else:  # short plain needle
            lo, p = p_long, p_short
            kern = _segment(yy, xx, zero, zero, theta, short_len, width)
        # seeds of this channel: a 1/k slice of this family's probability band of `field`
        band = (field - lo) / p * k - (ch % k)
        seeds = torch.where((band >= 0) & (band < 1), 0.5 + 0.5 * band, 0.0)
        kern = F.pad(kern, (0, w - kern.shape[-1], 0, h - kern.shape[-2]))
        kern = kern.roll((-half, -half), (1, 2))  # centre at (0, 0) for the circular conv
        spectrum = spectrum + torch.fft.rfft2(seeds) * torch.fft.rfft2(kern)
    needles = torch.fft.irfft2(spectrum, s=(h, w)).clamp_min(0)
    scale = needles.mean((1, 2), keepdim=True) + 2 * needles.std((1, 2), keepdim=True)
    needles = (needles / scale.clamp_min(1e-8)).clamp(0, 1)

    cloud = plasma_fractal(draws["cloud"].to(device), _plasma_size(h, w), 2.0)[:, :h, :w]
    ice = 0.46 + 0.2 * cloud + 0.45 * needles * (0.35 + 0.65 * cloud)
    ice = ice + 0.03 * draws["grain"].to(device)
    tint = torch.tensor([0.85, 0.96, 1.0], device=device) + 0.08 * (draws["tint"].to(device) - 0.5)
    return (ice[:, None] * tint.view(-1, 3, 1, 1)).clamp(0, 1)


def _seed_probabilities(h: int, w: int) -> tuple[float, float]:
    """Per-pixel seed probabilities for about 250 long and 900 short needles per square image
    at any resolution, capped so that small images are not all seeds."""
    side2 = float(min(h, w)) ** 2
    p_long, p_short = 250.0 / side2, 900.0 / side2
    cap = 0.25 / (p_long + p_short)
    return (p_long * cap, p_short * cap) if cap < 1 else (p_long, p_short)


@register
class Frost(Corruption):
    """ImageNet-C frost: c0 * image + c1 * frost, with a procedural frost texture.

    The reference crops a random 224 px window (CIFAR: of a 0.2x resized photo) from one of
    five frost photographs; we may not download those, so `frost_texture` paints a fresh
    texture per image at the batch's size (see there). The constants are the published ones.
    """

    name = "frost"
    # (image weight, frost weight)
    levels = {
        "imagenet": np.array(
            [(1.0, 0.0), (1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
            dtype=np.float64,
        ),
        "cifar": np.array(
            [(1.0, 0.0), (1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
            dtype=np.float64,
        ),
        "embedded": EMBEDDED["frost"],
    }

    def _sample(self, rng, shape, c):
        n, _, h, w = shape
        m = _plasma_size(h, w)
        return {
            "field": _uniform(rng, (n, h, w)),
            "angles": _uniform(rng, (n, 2 * _NEEDLE_ORIENTATIONS)),
            "cloud": _uniform(rng, (n, m * m), -1.0, 1.0),
            "grain": torch.randn((n, h, w), generator=rng, device=rng.device),
            "tint": _uniform(rng, (n, 3)),
        }

    def _apply(self, images, c, draws):
        h, w = images.shape[-2:]
        return c[0] * images + c[1] * frost_texture(draws, h, w, images.device)


@register
class Fog(Corruption):
    """ImageNet-C fog: x + c0 * plasma(decay c1), rescaled by max / (max + c0) per image.

    The plasma map is as large as the next power of two >= the image side and cropped (as
    ImageNet-C's 256 -> 224), so its octaves follow the image, and every image gets its own.
    """

    name = "fog"
    # (fog strength, wibble decay)
    levels = {
        "imagenet": np.array(
            [(0.0, 2.0), (1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)], dtype=np.float64
        ),
        # row 0: no fog, level-1 decay (as CCC's ImageNet row 0).
        "cifar": np.array(
            [(0.0, 3.0), (0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], dtype=np.float64
        ),
        "embedded": EMBEDDED["fog"],
    }

    def _sample(self, rng, shape, c):
        n, _, h, w = shape
        m = _plasma_size(h, w)
        return {"plasma": _uniform(rng, (n, m * m), -1.0, 1.0)}

    def _apply(self, images, c, draws):
        h, w = images.shape[-2:]
        u = draws["plasma"].to(images.device)
        fog = plasma_fractal(u, _plasma_size(h, w), float(c[1]))[:, None, :h, :w]
        peak = images.amax((1, 2, 3), keepdim=True)
        return (images + c[0] * fog) * peak / (peak + c[0])


# ---------------------------------------------------------------------------------------------
# Spatter (held-out)
# ---------------------------------------------------------------------------------------------

_WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
_MUD = (63 / 255, 42 / 255, 20 / 255)


def _dilate(mask: torch.Tensor, square: bool) -> torch.Tensor:
    if square:
        return F.max_pool2d(mask, 3, stride=1, padding=1)
    return torch.maximum(
        F.max_pool2d(mask, (3, 1), stride=1, padding=(1, 0)),
        F.max_pool2d(mask, (1, 3), stride=1, padding=(0, 1)),
    )


def _equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist per image on uint8-valued floats, (N, 1, H, W)."""
    n = img.shape[0]
    idx = img.flatten(1).long().clamp(0, 255)
    ones = torch.ones_like(idx, dtype=torch.float32)
    hist = torch.zeros((n, 256), device=img.device).scatter_add_(1, idx, ones)
    cdf = hist.cumsum(1)
    total = cdf[:, -1:]
    first = torch.where(cdf > 0, cdf, total).amin(1, keepdim=True)  # count in the lowest bin
    lut = torch.round((cdf - first).clamp_min(0) * 255 / (total - first).clamp_min(1))
    flat = (total == first).expand_as(lut)  # constant image: cv2 leaves it as is
    lut = torch.where(flat, torch.arange(256, device=img.device, dtype=torch.float32), lut)
    return lut.gather(1, idx).view_as(img)


def _blurred_noise_gain(sigma: float) -> float:
    """Std of unit white noise after `gaussian_filter(., sigma)` (2-D): sum of squared 1-D taps."""
    radius = int(4.0 * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return 1.0
    i = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (i / sigma) ** 2)
    return float(((k / k.sum()) ** 2).sum())


@register
class Spatter(PixelScaled):
    """Held-out: ImageNet-C spatter, water (c5 = 0) or mud (c5 = 1) drops.

    Constants: (mean, std, blur sigma px, threshold, water intensity | mud sigma px, mud).
    Both: a gaussian noise layer, blurred, values below the threshold set to 0.
    Water: the reference embosses a distance-to-edge map: Canny edges of the layer, L2 distance
    transform truncated at 20 px, 3x3 blur, histogram equalisation, a 3x3 emboss kernel, 3x3
    blur; the layer times that map, normalised to max c4, adds pale turquoise. Approximations
    here: the Canny edges of this layer (a blob of values >= threshold on 0) are the blob's inner
    boundary pixels; the distance transform is a count of alternating 3x3 square and cross
    dilations (an octagonal distance, within about 8% of L2). The truncation distance scales with
    the image; the 3x3 filters are per pixel and do not.
    Mud: the drop mask, blurred with sigma c4, set to 0 below 0.8, blends in mud brown.
    A fractional c5 (continuous severity between a water and a mud level) blends both outputs.
    """

    name = "spatter"
    levels = {
        # row 0: the level-1 layer with water intensity 0
        "imagenet": np.array(
            [
                (0.65, 0.3, 4, 0.69, 0.0, 0),
                (0.65, 0.3, 4, 0.69, 0.6, 0),
                (0.65, 0.3, 3, 0.68, 0.6, 0),
                (0.65, 0.3, 2, 0.68, 0.5, 0),
                (0.65, 0.3, 1, 0.65, 1.5, 1),
                (0.67, 0.4, 1, 0.65, 1.5, 1),
            ],
            dtype=np.float64,
        ),
        "cifar": np.array(
            [
                (0.62, 0.1, 0.7, 0.7, 0.0, 0),
                (0.62, 0.1, 0.7, 0.7, 0.5, 0),
                (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1),
            ],
            dtype=np.float64,
        ),
        "embedded": EMBEDDED["spatter"],
    }

    def _sample(self, rng, shape, c):
        n, _, h, w = shape
        return {"layer": torch.randn((n, 1, h, w), generator=rng, device=rng.device)}

    def _apply(self, images, c, draws):
        s = pixel_scale(images, draws)
        # Blurring white noise divides its std by the kernel's norm, which shrinks as the sigma
        # grows with the image: rescale the noise so the blurred layer (hence the share of
        # the image under drops) matches the reference size; the drops just get bigger.
        std = c[1] * _blurred_noise_gain(c[2]) / _blurred_noise_gain(c[2] * s)
        layer = gaussian_filter(c[0] + std * draws["layer"].to(images.device), c[2] * s)
        layer = torch.where(layer < c[3], 0.0, layer)
        mud = float(np.clip(c[5], 0.0, 1.0))
        out = 0.0
        if mud < 1:
            out = out + (1 - mud) * self._water(images, layer, c[4], s)
        if mud > 0:
            out = out + mud * self._mud(images, layer, c[3], c[4] * s)
        return out

    @staticmethod
    def _water(images, layer, intensity, s):
        drops = (layer > 0).float()
        edges = drops * (1 - (-_dilate(-drops, square=False)))  # inner boundary (4-neighbour)
        # distance to the nearest edge in dilation steps, truncated (reference: 20 px)
        limit = max(1, round(20 * s))
        reached, dist = edges, torch.zeros_like(edges)
        for step in range(limit):
            dist = dist + (1 - reached)
            reached = _dilate(reached, square=step % 2 == 0)
        box = torch.full((3, 3), 1 / 9, device=images.device)
        dist = torch.floor(depthwise_conv(dist, box))
        dist = _equalize_hist(dist)
        emboss = torch.tensor(
            [[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]], device=images.device
        )
        dist = torch.round(depthwise_conv(dist, emboss)).clamp(0, 255)  # CV_8U saturates
        dist = depthwise_conv(dist, box)
        m = torch.floor(layer.clamp(0, 1) * 255) * dist
        m = m / m.amax((2, 3), keepdim=True).clamp_min(1e-8) * intensity
        water = torch.tensor(_WATER, device=images.device).view(1, 3, 1, 1)
        return images + m * water

    @staticmethod
    def _mud(images, layer, threshold, sigma):
        m = gaussian_filter((layer > threshold).float(), sigma)
        m = torch.where(m < 0.8, 0.0, m)
        mud = torch.tensor(_MUD, device=images.device).view(1, 3, 1, 1)
        return images * (1 - m) + mud * m
