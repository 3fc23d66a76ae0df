"""The corruption registry and the CCC name lists."""

from __future__ import annotations

from stream_monitor.registry import Registry

from .base import Corruption

CORRUPTIONS: Registry[Corruption] = Registry("corruption")

#: The 15 ImageNet-C corruptions, named as CCC names them (`elastic`, `jpeg`).
STREAM_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic", "pixelate", "jpeg",
)
#: ImageNet-C's four held-out corruptions: for calibration only, never in a stream.
HELD_OUT_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def register(cls: type[Corruption]) -> type[Corruption]:
    """Class decorator: register one instance under `cls.name`."""
    CORRUPTIONS.register(cls.name)(cls())
    return cls


def get_corruption(name: str) -> Corruption:
    return CORRUPTIONS.get(name)
