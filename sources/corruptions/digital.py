"""Digital corruptions: brightness, contrast, elastic, pixelate, jpeg (CCC), saturate (held out).

Semantics and constants follow ImageNet-C (Hendrycks & Dietterich, ICLR 2019;
hendrycks/robustness `ImageNet-C/create_c/make_imagenet_c.py` and `make_cifar_c.py`) with CCC's
level 0 and linear interpolation between levels (Press et al., NeurIPS 2023, oripress/CCC
`make_imagenet_c.py`). Everything is batched torch on the images' device, except the JPEG codec,
which runs on the CPU so that a stream is the same whichever device renders it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

from .base import Corruption, level_table
from .registry import register
from .embedded_profile import EMBEDDED


# --------------------------------------------------------------------------- colour


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV in [0, 1], as `skimage.color.rgb2hsv` defines it.

    Ties for the maximum channel resolve blue over green over red, and grey pixels get hue 0
    and saturation 0, as in skimage (this matters for `saturate`, which adds to S).
    """
    r, g, b = rgb.unbind(1)
    value = rgb.amax(1)
    delta = value - rgb.amin(1)
    grey = delta <= 0
    safe = torch.where(grey, 1.0, delta)
    sat = torch.where(grey, 0.0, delta / torch.where(value > 0, value, 1.0))
    hue = torch.where(g == value, 2.0 + (b - r) / safe, (g - b) / safe)
    hue = torch.where(b == value, 4.0 + (r - g) / safe, hue)
    hue = torch.where(grey, 0.0, torch.remainder(hue / 6.0, 1.0))
    return torch.stack((hue, sat, value), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`: the piecewise-linear hexcone in its closed form.

    Channel n (5, 3, 1 for R, G, B) is V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6,
    which equals skimage's six-sector table.
    """
    hue, sat, value = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue, 6.0)
    return value - value * sat * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


@register
class Brightness(Corruption):
    """HSV value + c, clipped. Constant: c."""

    name = "brightness"
    levels = {
        "imagenet": level_table(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
        "cifar": level_table(0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
        "embedded": EMBEDDED["brightness"],
    }

    def _apply(self, images, c, draws):
        hsv = rgb_to_hsv(images)
        hsv[:, 2] = (hsv[:, 2] + float(c[0])).clamp(0.0, 1.0)
        return hsv_to_rgb(hsv)


@register
class Saturate(Corruption):
    """HSV saturation * c0 + c1, clipped (held out). Constants: (c0, c1).

    ImageNet-C's levels 1-2 desaturate (c0 < 1) and 3-5 saturate, so the interpolated factor
    passes through 1 between severities 2 and 3: near 2.47 ("imagenet") the image is almost
    unchanged. That is the published table, kept as is.
    """

    name = "saturate"
    levels = {
        "imagenet": level_table((1.0, 0.0), (0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)),
        "cifar": level_table((1.0, 0.0), (0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
        "embedded": EMBEDDED["saturate"],
    }

    def _apply(self, images, c, draws):
        hsv = rgb_to_hsv(images)
        hsv[:, 1] = (hsv[:, 1] * float(c[0]) + float(c[1])).clamp(0.0, 1.0)
        return hsv_to_rgb(hsv)


@register
class Contrast(Corruption):
    """(x - mean) * c + mean, with the per-image, per-channel mean over H, W. Constant: c."""

    name = "contrast"
    levels = {
        "imagenet": level_table(1.0, 0.4, 0.3, 0.2, 0.1, 0.05),
        "cifar": level_table(1.0, 0.75, 0.5, 0.4, 0.3, 0.15),
        "embedded": EMBEDDED["contrast"],
    }

    def _apply(self, images, c, draws):
        means = images.mean(dim=(2, 3), keepdim=True)
        return (images - means) * float(c[0]) + means


# --------------------------------------------------------------------------- resampling


def pil_box_matrix(size_in: int, size_out: int, device=None) -> torch.Tensor:
    """(size_out, size_in) weights of PIL's `Image.resize(..., BOX)` along one axis.

    PIL's box filter averages the input pixels whose centres fall inside the output pixel's
    footprint (no fractional coverage); upscaling picks the pixel under the output centre.
    Rebuilding its coefficients makes pixelate match PIL at any ratio, where
    `interpolate(mode="area")` differs for non-integer ratios (e.g. 224 -> 134).
    """
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    center = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    first = torch.floor(center - support + 0.5).clamp(min=0)
    stop = torch.floor(center + support + 0.5).clamp(max=size_in)
    j = torch.arange(size_in, dtype=torch.float64)
    offset = (j[None, :] - center[:, None] + 0.5) / max(scale, 1.0)
    inside = (offset > -0.5) & (offset <= 0.5)
    inside &= (j[None, :] >= first[:, None]) & (j[None, :] < stop[:, None])
    weights = inside.to(torch.float64)
    weights /= weights.sum(1, keepdim=True)
    return weights.to(device=device, dtype=torch.float32)


@register
class Pixelate(Corruption):
    """PIL BOX downscale to int(size * c), BOX (nearest) upscale back. Constant: c."""

    name = "pixelate"
    levels = {
        "imagenet": level_table(1.0, 0.6, 0.5, 0.4, 0.3, 0.25),
        "cifar": level_table(1.0, 0.95, 0.9, 0.85, 0.75, 0.65),
        "embedded": EMBEDDED["pixelate"],
    }

    def _apply(self, images, c, draws):
        height, width = images.shape[-2:]
        factor = min(float(c[0]), 1.0)
        # int() as the reference truncates; the 1e-6 keeps an interpolated 0.875 * 32 at 28.
        small_h = max(1, int(height * factor + 1e-6))
        small_w = max(1, int(width * factor + 1e-6))
        dev = images.device
        # Down then up along each axis is one (size, size) matrix: out = Mh @ x @ Mw^T.
        rows = pil_box_matrix(small_h, height, dev) @ pil_box_matrix(height, small_h, dev)
        cols = pil_box_matrix(small_w, width, dev) @ pil_box_matrix(width, small_w, dev)
        return rows @ images @ cols.T


@register
class JPEG(Corruption):
    """A real JPEG round trip (libjpeg via torchvision) at quality round(c). Constant: c.

    CCC's level 0 for ImageNet is quality 85 (so severity 0+ already compresses); for the 32 px
    tables, whose level 1 is 80, level 0 is quality 100.
    """

    name = "jpeg"
    levels = {
        "imagenet": level_table(85, 25, 18, 15, 10, 7),
        "cifar": level_table(100, 80, 65, 58, 50, 40),
        "embedded": EMBEDDED["jpeg"],
    }

    def _apply(self, images, c, draws):
        # Python's round, as CCC rounds (half to even); libjpeg accepts 1..100.
        quality = min(100, max(1, round(float(c[0]))))
        # The CPU codec everywhere, so the result does not depend on the rendering device.
        pixels = images.mul(255.0).round_().clamp_(0, 255).to(device="cpu", dtype=torch.uint8)
        encoded = encode_jpeg(list(pixels), quality=quality)
        decoded = torch.stack(decode_jpeg(encoded))
        return decoded.to(device=images.device, dtype=torch.float32).div_(255.0)


# --------------------------------------------------------------------------- elastic


def gaussian_blur_matrix(size: int, sigma: float, device=None) -> torch.Tensor:
    """(size, size) matrix of a 1-d gaussian blur, as scipy's `gaussian_filter(mode="reflect",
    truncate=3)` (what skimage's `gaussian` calls): radius int(3 sigma + 0.5), half-sample
    symmetric borders folded in however many times the radius wraps the image (CCC's level 0
    has sigma 999 on 224 px). As a matrix the cost does not grow with sigma.
    """
    if sigma <= 1e-15:  # scipy skips the filter below this
        return torch.eye(size, device=device)
    radius = int(3.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    source = torch.remainder(torch.arange(size)[:, None] + taps.long()[None, :], 2 * size)
    source = torch.where(source >= size, 2 * size - 1 - source, source)  # d c b a | a b c d
    matrix = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)[:, None].expand_as(source)
    matrix.index_put_((rows.reshape(-1), source.reshape(-1)), weights.repeat(size), accumulate=True)
    return matrix.to(device=device, dtype=torch.float32)


@register
class Elastic(Corruption):
    """ImageNet-C's elastic transform: a random affine warp of three points, then a smooth random
    displacement field. Constants: (alpha, sigma, affine, reference size), in pixels at the
    reference size (224 for ImageNet-C, whose 244 * x is a typo it keeps; 32 for CIFAR-10-C).

    At another image size the warp is rendered as the reference one would look resized: with
    s = min(H, W) / reference, sigma and the affine jitter scale by s and alpha by s**2 (the blurred
    white noise is 1/s times stronger when it is blurred over s times fewer pixels).
    Borders reflect as the reference does: cv2's BORDER_REFLECT_101 for the affine warp
    (`grid_sample` with align_corners=True) and scipy's half-sample "reflect" for the displacement
    (align_corners=False).
    """

    name = "elastic"
    levels = {
        "imagenet": level_table(
            (0.0, 999.0, 0.0, 224),  # CCC's level 0
            (244 * 2, 244 * 0.7, 244 * 0.1, 224),
            (244 * 2, 244 * 0.08, 244 * 0.2, 224),
            (244 * 0.05, 244 * 0.01, 244 * 0.02, 224),
            (244 * 0.07, 244 * 0.01, 244 * 0.02, 224),
            (244 * 0.12, 244 * 0.01, 244 * 0.02, 224),
        ),
        "cifar": level_table(
            (0.0, 0.0, 0.0, 32),
            (32 * 0, 32 * 0, 32 * 0.08, 32),
            (32 * 0.05, 32 * 0.2, 32 * 0.07, 32),
            (32 * 0.08, 32 * 0.06, 32 * 0.06, 32),
            (32 * 0.1, 32 * 0.04, 32 * 0.05, 32),
            (32 * 0.1, 32 * 0.03, 32 * 0.03, 32),
        ),
        "embedded": EMBEDDED["elastic"],
    }

    def _sample(self, rng, shape, c):
        n, _, height, width = shape
        # Unit draws; `_apply` scales them, so one generator state gives the same warp shape
        # at every severity.
        return {
            "affine": torch.rand(n, 3, 2, generator=rng, device=rng.device) * 2 - 1,
            "field": torch.rand(n, 2, height, width, generator=rng, device=rng.device) * 2 - 1,
        }

    def _apply(self, images, c, draws):
        forward, field = self.transforms(images.shape, c, draws, images.device)
        return displace(warp_affine(images, forward), field)

    @staticmethod
    def transforms(shape, c, draws, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (N, 3, 3) affine maps (float64, CPU) and the (N, 2, H, W) displacement (dx, dy)
        in pixels, for a batch of `shape` at constants `c`."""
        _, _, height, width = shape
        scale = min(height, width) / float(c[3])
        alpha, sigma, jitter = float(c[0]) * scale**2, float(c[1]) * scale, float(c[2]) * scale

        # Affine: three points around the centre, each coordinate jittered by up to `jitter`.
        cx, cy, half = width // 2, height // 2, min(height, width) // 3
        points = torch.tensor(
            [[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]],
            dtype=torch.float64,
        )
        # The 3x3 solves are tiny: float64 on the CPU, as cv2.getAffineTransform does.
        moved = points + jitter * draws["affine"].to("cpu", torch.float64)
        forward = affine_from_points(points, moved)

        # Displacement: uniform(-1, 1) noise, gaussian-blurred separably, times alpha.
        field = draws["field"].to(device)
        blur_rows = gaussian_blur_matrix(height, sigma, device)
        blur_cols = gaussian_blur_matrix(width, sigma, device)
        field = blur_rows @ field @ blur_cols.T
        return forward, field * alpha


def affine_from_points(points: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) affine maps taking the three (x, y) `points` to each `moved` (N, 3, 2), as
    cv2.getAffineTransform (float64)."""
    homogeneous = torch.cat([points, torch.ones(3, 1, dtype=points.dtype)], 1)
    forward = torch.eye(3, dtype=points.dtype).repeat(moved.shape[0], 1, 1)
    forward[:, :2] = torch.linalg.solve(homogeneous, moved).transpose(1, 2)
    return forward


def warp_affine(images: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """cv2.warpAffine(image, M, (W, H), borderMode=BORDER_REFLECT_101), bilinear, batched.

    Output pixel p takes the source at M^-1 p (pixel centres at integers). `grid_sample` with
    align_corners=True puts -1, 1 on the corner pixel centres, so its reflection is about those
    centres: BORDER_REFLECT_101.
    """
    _, _, height, width = images.shape
    to_norm = torch.tensor(
        [
            [2.0 / max(width - 1, 1), 0.0, -1.0],
            [0.0, 2.0 / max(height - 1, 1), -1.0],
            [0.0, 0.0, 1.0],
        ],
        dtype=torch.float64,
    )
    theta = to_norm @ torch.linalg.inv(forward.cpu().to(torch.float64)) @ torch.linalg.inv(to_norm)
    theta = theta[:, :2].to(images.device, torch.float32)
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )


def displace(images: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Sample image at (row + dy, col + dx), field (N, 2, H, W) = (dx, dy) in pixels, as
    scipy's map_coordinates(order=1, mode="reflect"): with align_corners=False, -1 and 1 are
    the outer pixel edges, so `grid_sample`'s reflection is scipy's half-sample symmetric one.
    """
    _, _, height, width = images.shape
    rows = torch.arange(height, device=images.device, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, device=images.device, dtype=torch.float32).view(1, 1, width)
    gx = (2.0 * (cols + field[:, 0]) + 1.0) / width - 1.0
    gy = (2.0 * (rows + field[:, 1]) + 1.0) / height - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
