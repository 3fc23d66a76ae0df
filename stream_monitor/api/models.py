"""A user's classifier as the runtime's `SourceModel`: the module, its normalisation, a weights id."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models import SourceModel

__all__ = ["UserModel", "wrap_model", "weights_digest"]

#: No normalisation: the model takes [0, 1] images as they are.
IDENTITY_MEAN, IDENTITY_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@dataclass
class UserModel(SourceModel):
    """A `SourceModel` whose normalisation may be the user's callable ([0, 1] float NCHW in, model input out)."""

    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    base: str = "your images"

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return super().normalise(images)
        device = next(iter(self.module.state_dict().values()), torch.empty(0)).device
        x = images.to(device, non_blocking=True)
        return self.transform(x.float().div_(255.0) if x.dtype == torch.uint8 else x.float())


def weights_digest(module: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, values): the model's identity in run.json
    and in a calibration's provenance, so a calibration or a resume never meets other weights."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def wrap_model(module: nn.Module, image_size: int, mean: tuple[float, float, float] | None = None,
               std: tuple[float, float, float] | None = None,
               normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
               name: str | None = None, num_classes: int | None = None) -> UserModel:
    """`module` ready for the runtime; its class count is read from one forward pass when not given.

    Raises:
        ValueError: both mean/std and `normalise`, only one of mean and std, or a module whose
            output is not (N, classes) logits.
    """
    if normalise is not None and (mean is not None or std is not None):
        raise ValueError("Give the normalisation either as mean and std or as a normalise callable, not both.")
    if (mean is None) != (std is None):
        raise ValueError("Give both mean and std (per RGB channel, for [0, 1] images), or neither.")
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and len(tuple(values)) != 3:
            raise ValueError(f"{label} must have 3 values (one per RGB channel), got {values!r}.")
    if num_classes is None:
        num_classes = _count_classes(module, image_size)
    module = module.to(memory_format=torch.channels_last)
    digest = weights_digest(module)
    name = name or type(module).__name__.lower()
    return UserModel(name, module, num_classes, image_size, image_size,
                     tuple(float(v) for v in (mean or IDENTITY_MEAN)), tuple(float(v) for v in (std or IDENTITY_STD)),
                     "your model (weights sha256 of the state dict)", digest, transform=normalise)


def _count_classes(module: nn.Module, image_size: int) -> int:
    training = module.training
    module.eval()  # no BatchNorm statistic moves
    try:
        device = next(iter(module.state_dict().values()), torch.empty(0)).device
        with torch.inference_mode():
            out = module(torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        module.train(training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"The model must return logits of shape (N, classes); it returned {shape}. Wrap it so "
                         f"that forward returns the class logits.")
    return int(out.shape[1])
