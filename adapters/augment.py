"""CoTTA's test-time augmentation, batched on the images' device and driven by an explicit generator.

qinenergy/cotta `get_tta_transforms` (after KATANA, arXiv 2109.08191): clip to [0, 1]; colour
jitter (brightness 0.6-1.4, contrast 0.7-1.3, saturation 0.5-1.5, hue +-0.06, gamma 0.7-1.3, in a
random order); edge padding by half the size; random affine (+-15 degrees, translate 1/16 of the
padded size, scale 0.9-1.1, bilinear); Gaussian blur (kernel 5, sigma 0.001-0.5); centre crop back;
horizontal flip with p = 0.5; Gaussian noise (std 0.005); clip. The reference applies the
composed transform to the whole batch tensor, so one draw of the parameters is shared by every
image of an augmented copy; so do we. The torchvision functional ops do the pixel work; the draws
come from our generator (not the global RNGs) so a run replays and resumes exactly.
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    for op in torch.randperm(5, generator=generator).tolist():
        if op == 0:
            x = F.adjust_brightness(x, _uniform(generator, 0.6, 1.4))
        elif op == 1:
            x = F.adjust_contrast(x, _uniform(generator, 0.7, 1.3))
        elif op == 2:
            x = F.adjust_saturation(x, _uniform(generator, 0.5, 1.5))
        elif op == 3:
            x = F.adjust_hue(x, _uniform(generator, -0.06, 0.06))
        else:
            # The reference clamps before gamma: gamma of 0 after a contrast cut gives NaN gradients.
            x = F.adjust_gamma(x.clamp(1e-8, 1.0), _uniform(generator, 0.7, 1.3))
    return x


def cotta_augment(images: torch.Tensor, generator: torch.Generator, noise_generator: torch.Generator,
                  noise_std: float = 0.005) -> torch.Tensor:
    """One augmented copy of a batch of [0, 1] float NCHW images (one parameter draw per copy).

    `generator` (CPU) draws the transform parameters; `noise_generator` lives on the images' device
    and draws the pixel noise there.
    """
    size = images.shape[-1]
    x = _jitter(images.clamp(0.0, 1.0), generator)
    pad = size // 2
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    max_shift = size * 2 / 16  # translate (1/16, 1/16) of the padded image, as RandomAffine does
    angle = _uniform(generator, -15.0, 15.0)
    shift = [int(round(_uniform(generator, -max_shift, max_shift))) for _ in range(2)]
    scale = _uniform(generator, 0.9, 1.1)
    x = F.affine(x, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0],
                 interpolation=InterpolationMode.BILINEAR)
    x = F.gaussian_blur(x, kernel_size=[5, 5], sigma=[_uniform(generator, 0.001, 0.5)] * 2)
    x = F.center_crop(x, [size, size])
    if float(torch.rand((), generator=generator)) < 0.5:
        x = x.flip(-1)
    noise = torch.randn(x.shape, generator=noise_generator, device=x.device, dtype=x.dtype)
    return (x + noise_std * noise).clamp(0.0, 1.0)

