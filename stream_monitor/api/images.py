"""A user's batches in the stream protocol's form: uint8 NCHW images and int64 labels (or none).

The stream protocol carries images as 8-bit RGB (DESIGN.md section 5: normalisation happens on the
adapter's device), so a float batch in [0, 1] is quantised to uint8, which is what an image file
holds anyway; an already normalised batch (values outside [0, 1]) is refused, because the monitor
normalises with the model's own mean and std or callable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["BatchFormatError", "check_labels", "split_item", "to_labels", "to_uint8"]


class BatchFormatError(ValueError):
    """A batch or dataset item the monitor cannot read; the message says which form is expected."""


FORMS = ("a tensor of images (N, 3, H, W), an (images, labels) pair, or a dict with 'images' (or 'image') and "
         "optionally 'labels' (or 'label')")


def split_item(item: Any) -> tuple[Any, Any]:
    """(images, labels or None) of one batch or dataset item."""
    if isinstance(item, dict):
        images = item.get("images", item.get("image"))
        if images is None:
            raise BatchFormatError(f"A dict item needs an 'images' or 'image' key; got keys {sorted(item)}. "
                                   f"Accepted: {FORMS}.")
        return images, item.get("labels", item.get("label"))
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise BatchFormatError(f"A tuple item must be (images,) or (images, labels); got {len(item)} elements. "
                               f"Accepted: {FORMS}.")
    return item, None


def to_uint8(images: Any, single: bool = False) -> np.ndarray:
    """uint8 (N, 3, H, W) numpy from a torch tensor, numpy array or PIL image; `single`: one image (3, H, W)."""
    if hasattr(images, "mode") and hasattr(images, "size") and not isinstance(images, (np.ndarray, torch.Tensor)):
        array = np.asarray(images.convert("RGB")).transpose(2, 0, 1)  # a PIL image: HWC -> CHW
    elif isinstance(images, torch.Tensor):
        array = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        array = images
    else:
        raise BatchFormatError(f"Images must be a torch tensor, a numpy array or a PIL image, got "
                               f"{type(images).__name__}. Accepted items: {FORMS}.")
    if single:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        hint = " (channels last? use images.permute(0, 3, 1, 2))" if array.ndim == 4 and array.shape[-1] == 3 else ""
        raise BatchFormatError(f"Images must be RGB in (N, 3, H, W) layout{' per batch' if not single else ''}, got "
                               f"shape {tuple(array.shape[1:] if single else array.shape)}{hint}.")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise BatchFormatError(f"Images must be uint8 (0-255) or float in [0, 1], got {array.dtype}.")
    if array.size:
        low, high = float(array.min()), float(array.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise BatchFormatError(f"Float images must lie in [0, 1] (before normalisation); these span [{low:.2f}, "
                                   f"{high:.2f}], as normalised images do. Give the monitor the images before "
                                   f"normalisation and the model's mean and std (or normalise callable).")
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def to_labels(labels: Any, n: int, num_classes: int | None = None) -> np.ndarray:
    """int64 (n,) class indices in [0, num_classes) (None: the range is checked later, `check_labels`)."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    array = array.reshape(-1)
    if len(array) != n:
        raise BatchFormatError(f"A batch of {n} images came with {len(array)} labels; give one class index per image.")
    if not np.issubdtype(array.dtype, np.integer):
        raise BatchFormatError(f"Labels must be integer class indices, got {array.dtype}.")
    array = array.astype(np.int64)
    if num_classes is not None:
        check_labels(array, num_classes)
    return array


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Labels must be class indices of the model."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise BatchFormatError(f"Labels must be class indices of the model, 0 to {num_classes - 1}; got "
                               f"{int(labels.min())} to {int(labels.max())}. Map your classes to the model's "
                               f"output indices.")
