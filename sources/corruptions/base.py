"""Contract shared by all corruptions: continuous severity, `sample_params` then `apply`.

ImageNet-C (Hendrycks & Dietterich, ICLR 2019) defines five severity levels per corruption.
CCC (Press et al., NeurIPS 2023, oripress/CCC `make_imagenet_c.py`) adds a level 0 and
interpolates every constant linearly, so severity is any float in [0, 5]. Here severity 0 is
always the identity (CCC never applies a corruption at severity 0 either).

Randomness lives only in `sample_params`, so `apply` is a deterministic, batched function of
(images, params) that runs on whatever device the images are on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

#: Constant tables: "imagenet" (224 px, ImageNet-C), "cifar" (32 px, CIFAR-10-C) and
#: "embedded" (32 px, tuned so the embedded model's difficulty matches ResNet-50 on ImageNet-C).
PROFILES = ("imagenet", "cifar", "embedded")


@dataclass
class CorruptionParams:
    """Everything `apply` needs: the interpolated constants and the random draws."""

    severity: float
    constants: np.ndarray
    draws: dict[str, Any] = field(default_factory=dict)


class Corruption(ABC):
    """One corruption. Subclasses set `name` and `levels` and implement `_sample` and `_apply`.

    `levels[profile]` is a (6, k) table: row s holds the k constants at integer severity s
    (row 0 is the value that means "no corruption").
    """

    name: ClassVar[str]
    levels: ClassVar[dict[str, np.ndarray]]

    def constants(self, severity: float, profile: str) -> np.ndarray:
        """The k constants at a continuous severity, linearly interpolated between levels."""
        check_severity(severity)
        table = self._table(profile)
        lo = int(np.floor(severity))
        if lo >= 5:
            return table[5].copy()
        frac = severity - lo
        return (1.0 - frac) * table[lo] + frac * table[lo + 1]

    def sample_params(
        self,
        rng: torch.Generator,
        shape: tuple[int, ...],
        severity: float,
        profile: str,
    ) -> CorruptionParams:
        """Draw the randomness for a batch of `shape` (N, 3, H, W) on `rng`'s device."""
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"{self.name}: expected a batch shape (N, 3, H, W), got {tuple(shape)}")
        params = CorruptionParams(float(severity), self.constants(severity, profile))
        if severity > 0:
            params.draws = self._sample(rng, tuple(shape), params.constants)
        return params

    def apply(self, images: torch.Tensor, params: CorruptionParams) -> torch.Tensor:
        """Corrupt float images in [0, 1], (N, 3, H, W); returns float32 in [0, 1]."""
        if images.dtype != torch.float32:
            raise TypeError(f"{self.name}: expected float32 images in [0, 1], got {images.dtype}")
        if params.severity == 0:
            return images
        out = self._apply(images, params.constants, params.draws)
        return out.clamp_(0.0, 1.0)

    def __call__(
        self, images: torch.Tensor, severity: float, rng: torch.Generator, profile: str
    ) -> torch.Tensor:
        return self.apply(images, self.sample_params(rng, images.shape, severity, profile))

    def _sample(self, rng: torch.Generator, shape: tuple[int, ...], c: np.ndarray) -> dict[str, Any]:
        """Random draws for one batch at constants `c`; none for deterministic corruptions."""
        return {}

    @abstractmethod
    def _apply(self, images: torch.Tensor, c: np.ndarray, draws: dict[str, Any]) -> torch.Tensor:
        """The corruption itself; may return values outside [0, 1] (the caller clamps)."""

    def _table(self, profile: str) -> np.ndarray:
        try:
            return self.levels[profile]
        except KeyError:
            raise ValueError(
                f"Unknown corruption constants profile {profile!r}; valid: {', '.join(PROFILES)}"
            ) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def level_table(*rows) -> np.ndarray:
    """A (6, k) level table from six rows (scalars become one column)."""
    return np.asarray(rows, dtype=np.float64).reshape(6, -1)


def check_severity(severity: float) -> None:
    if not (0.0 <= float(severity) <= 5.0) or np.isnan(severity):
        raise ValueError(f"severity must be in [0, 5], got {severity}")


#: Image side (px) at which each profile's pixel-unit constants were published.
REFERENCE_SIZE = {"imagenet": 224, "cifar": 32, "embedded": 32}


class PixelScaled(Corruption):
    """A corruption with constants in pixels: remembers the profile's reference size.

    `_sample` and `_apply` do not see the profile, so the reference size travels in `draws`
    and `pixel_scale` rescales the constants to the batch's image size.
    """

    def sample_params(
        self, rng: torch.Generator, shape: tuple[int, ...], severity: float, profile: str
    ) -> CorruptionParams:
        params = super().sample_params(rng, shape, severity, profile)  # validates the profile
        params.draws["reference_size"] = REFERENCE_SIZE[profile]
        return params


def pixel_scale(images: torch.Tensor, draws: dict[str, Any]) -> float:
    """Factor from the reference image size to this batch's size."""
    if "reference_size" not in draws:
        raise KeyError("params.draws lacks 'reference_size': build params with sample_params()")
    return min(images.shape[-2:]) / float(draws["reference_size"])
