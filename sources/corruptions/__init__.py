"""The 15 ImageNet-C corruptions of CCC and the 4 held-out ones, batched in torch.

    >>> from sources.corruptions import get_corruption
    >>> fog = get_corruption("fog")
    >>> params = fog.sample_params(rng, images.shape, severity=2.75, profile="embedded")
    >>> out = fog.apply(images, params)
"""

from .base import PROFILES, Corruption, CorruptionParams
from .registry import CORRUPTIONS, HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS, get_corruption, register

# Importing the modules registers their corruptions.
from . import blur, digital, noise, weather  # noqa: E402,F401  isort:skip

__all__ = [
    "CORRUPTIONS", "Corruption", "CorruptionParams", "HELD_OUT_CORRUPTIONS", "PROFILES",
    "STREAM_CORRUPTIONS", "get_corruption", "register",
]
