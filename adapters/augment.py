"""CoTTA's test-time augmentation, batched on the images' device and driven by an explicit generator.

qinenergy/cotta `get_tta_transforms` (after KATANA, arXiv 2109.08191): clip to [0, 1]; colour
jitter (brightness 0.6-1.4, contrast 0.7-1.3, saturation 0.5-1.5, hue +-0.06, gamma 0.7-1.3, in a
random order); edge padding by half the size; random affine (+-15 degrees, translate 1/16 of the
padded size, scale 0.9-1.1, bilinear); Gaussian blur (kernel 5, sigma 0.001-0.5); centre crop back;
horizontal flip with p = 0.5; Gaussian noise (std 0.005); clip. The reference applies the
composed transform to the whole batch tensor, so one draw of the parameters is shared by every
image of an augmented copy; so do we. The torchvision functional ops do the pixel work; the draws
come from our generator (not the global RNGs) so a run replays and resumes exactly.

Drawing and applying are separate (`draw_augmentation`, then `apply_augmentation`): the draws
must happen one copy after another, in the reference's order, but the pixel work of the copies is
independent and can run concurrently (`CoTTA(copy_workers=...)`) with the very same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


# The colour ops in the order of their index in the random permutation, with their factor ranges.
_JITTER = ((F.adjust_brightness, 0.6, 1.4), (F.adjust_contrast, 0.7, 1.3), (F.adjust_saturation, 0.5, 1.5),
           (F.adjust_hue, -0.06, 0.06), (F.adjust_gamma, 0.7, 1.3))
_GAMMA = 4


@dataclass(frozen=True)
class Augmentation:
    """The parameters of one augmented copy: every random choice, the pixel noise included."""

    jitter: tuple[tuple[int, float], ...]  # (colour op index, factor), in the order applied
    angle: float
    shift: tuple[int, int]
    scale: float
    sigma: float
    flip: bool
    noise: torch.Tensor


def draw_augmentation(generator: torch.Generator, noise_generator: torch.Generator, shape: torch.Size,
                      dtype: torch.dtype = torch.float32, noise_std: float = 0.005) -> Augmentation:
    """Draw one copy's parameters for images of `shape` (NCHW): `generator` (CPU) the transform,
    `noise_generator` (on the images' device) the noise, scaled by `noise_std`."""
    size = shape[-1]
    jitter = tuple((op, _uniform(generator, *_JITTER[op][1:]))
                   for op in torch.randperm(len(_JITTER), generator=generator).tolist())
    max_shift = size * 2 / 16  # translate (1/16, 1/16) of the padded image, as RandomAffine does
    angle = _uniform(generator, -15.0, 15.0)
    shift = (int(round(_uniform(generator, -max_shift, max_shift))), int(round(_uniform(generator, -max_shift,
                                                                                       max_shift))))
    scale = _uniform(generator, 0.9, 1.1)
    sigma = _uniform(generator, 0.001, 0.5)
    flip = float(torch.rand((), generator=generator)) < 0.5
    noise = noise_std * torch.randn(tuple(shape), generator=noise_generator, device=noise_generator.device, dtype=dtype)
    return Augmentation(jitter, angle, shift, scale, sigma, flip, noise)


def apply_augmentation(images: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """One augmented copy of a batch of [0, 1] float NCHW images; deterministic given the draw."""
    size = images.shape[-1]
    x = images.clamp(0.0, 1.0)
    for op, factor in augmentation.jitter:
        if op == _GAMMA:
            # The reference clamps before gamma: gamma of 0 after a contrast cut gives NaN gradients.
            x = x.clamp(1e-8, 1.0)
        x = _JITTER[op][0](x, factor)
    pad = size // 2
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    x = F.affine(x, angle=augmentation.angle, translate=list(augmentation.shift), scale=augmentation.scale,
                 shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
    x = F.gaussian_blur(x, kernel_size=[5, 5], sigma=[augmentation.sigma] * 2)
    x = F.center_crop(x, [size, size])
    if augmentation.flip:
        x = x.flip(-1)
    return (x + augmentation.noise).clamp(0.0, 1.0)


def cotta_augment(images: torch.Tensor, generator: torch.Generator, noise_generator: torch.Generator,
                  noise_std: float = 0.005) -> torch.Tensor:
    """One augmented copy of a batch of [0, 1] float NCHW images (one parameter draw per copy).

    `generator` (CPU) draws the transform parameters; `noise_generator` lives on the images' device
    and draws the pixel noise there.
    """
    draw = draw_augmentation(generator, noise_generator, images.shape, images.dtype, noise_std)
    return apply_augmentation(images, draw)
