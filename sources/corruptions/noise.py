"""Noise corruptions: gaussian, shot and impulse noise (CCC stream) and speckle noise (held out).

Semantics and constants follow ImageNet-C (Hendrycks & Dietterich, ICLR 2019;
hendrycks/robustness `ImageNet-C/create_c/make_imagenet_c.py` and `make_cifar_c.py`) with CCC's
level 0 and linear interpolation between levels (Press et al., NeurIPS 2023, oripress/CCC
`make_imagenet_c.py`). Everything is batched torch; the random draws are made in `_sample` on the
generator's device and are independent of the severity, so one generator state gives the same
noise pattern at every severity (only its strength changes).
"""

from __future__ import annotations

import torch

from .base import Corruption, level_table
from .registry import register
from .embedded_profile import EMBEDDED


@register
class GaussianNoise(Corruption):
    """x + N(0, sigma^2), per pixel and channel. Constant: sigma."""

    name = "gaussian_noise"
    levels = {
        "imagenet": level_table(0.0, 0.08, 0.12, 0.18, 0.26, 0.38),
        "cifar": level_table(0.0, 0.04, 0.06, 0.08, 0.09, 0.10),
        "embedded": EMBEDDED["gaussian_noise"],
    }

    def _sample(self, rng, shape, c):
        return {"normal": torch.randn(shape, generator=rng, device=rng.device)}

    def _apply(self, images, c, draws):
        return images + float(c[0]) * draws["normal"].to(images.device)


@register
class ShotNoise(Corruption):
    """Poisson(x * r) / r. Constant: 1 / r, as CCC interpolates it (0 = no noise).

    ImageNet-C publishes the photon count r (60, 25, ...); CCC interpolates its reciprocal, so
    the table stores 1 / r. The rate depends on the image, which `_sample` does not see, so
    `_sample` draws a seed and `_apply` runs `torch.poisson` with a generator seeded from it on
    the images' device: deterministic per device, and ~6x cheaper than inverting the Poisson CDF
    from stored uniforms (CPU and GPU streams of the same seed differ in this noise).
    """

    name = "shot_noise"
    levels = {
        "imagenet": level_table(0.0, 1 / 60, 1 / 25, 1 / 12, 1 / 5, 1 / 3),
        "cifar": level_table(0.0, 1 / 500, 1 / 250, 1 / 100, 1 / 75, 1 / 50),
        "embedded": EMBEDDED["shot_noise"],
    }

    def _sample(self, rng, shape, c):
        return {"seed": int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device))}

    def _apply(self, images, c, draws):
        if c[0] <= 0:  # no noise (only reachable with a hand-edited table)
            return images
        photons = 1.0 / float(c[0])
        generator = torch.Generator(device=images.device).manual_seed(draws["seed"])
        return torch.poisson(images * photons, generator=generator) / photons


@register
class ImpulseNoise(Corruption):
    """Salt and pepper: a fraction `amount` of all values (per channel) set to 1 or 0, half each.

    As `skimage.util.random_noise(mode="s&p")` on an HWC array: each value is replaced
    independently with probability `amount`, by salt or pepper with equal odds. One uniform per
    value decides both (u < amount/2: salt; u < amount: pepper), so a stronger severity replaces
    a superset of the values of a weaker one.
    """

    name = "impulse_noise"
    levels = {
        "imagenet": level_table(0.0, 0.03, 0.06, 0.09, 0.17, 0.27),
        "cifar": level_table(0.0, 0.01, 0.02, 0.03, 0.05, 0.07),
        "embedded": EMBEDDED["impulse_noise"],
    }

    def _sample(self, rng, shape, c):
        return {"uniform": torch.rand(shape, generator=rng, device=rng.device)}

    def _apply(self, images, c, draws):
        amount = float(c[0])
        u = draws["uniform"].to(images.device)
        out = torch.where(u < amount, 0.0, images)
        return torch.where(u < amount / 2, 1.0, out)


@register
class SpeckleNoise(Corruption):
    """x + x * N(0, sigma^2) (held out). Constant: sigma."""

    name = "speckle_noise"
    levels = {
        "imagenet": level_table(0.0, 0.15, 0.2, 0.35, 0.45, 0.6),
        "cifar": level_table(0.0, 0.06, 0.1, 0.12, 0.16, 0.2),
        "embedded": EMBEDDED["speckle_noise"],
    }

    def _sample(self, rng, shape, c):
        return {"normal": torch.randn(shape, generator=rng, device=rng.device)}

    def _apply(self, images, c, draws):
        return images * (1.0 + float(c[0]) * draws["normal"].to(images.device))
