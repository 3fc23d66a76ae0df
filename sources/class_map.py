"""Which model class each folder of an image folder is: checked, never assumed silently.

An ImageFolder's labels are indices into its sorted sub-folder names (torchvision's
``find_classes``). They mean the model's classes only when the folder holds exactly the model's
classes in the model's order. So a folder is accepted as it is only when

- it has as many class folders as the model has outputs, and
- where the model's class names are known, its folder names are them: the digits ``0``-``9`` for
  the embedded models, ImageNet's WordNet ids (``n01440764``, ...; sorted, they are torchvision's
  class order) or torchvision's category names for a 1,000-class ImageNet model.

A model whose class names are unknown (a torchvision architecture with a head of its own size)
takes the sorted folders as its classes when the counts agree. Anything else needs an explicit
mapping: a JSON or YAML file ``{folder name: model class index}`` (``source.class_map``,
``--class-map FILE``), which may also name a subset of the model's classes (e.g. ImageNet-R's 200).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

__all__ = ["ClassMapError", "folder_labels", "load_class_map"]

_WNID = re.compile(r"n\d{8}")
_MAP_HINT = ("give the mapping with --class-map FILE (source.class_map): a JSON or YAML file of "
             "{folder name: model class index}")


class ClassMapError(ValueError):
    """A folder's classes do not fit the model; the message says why and how to map them."""


def load_class_map(path: str | Path) -> dict[str, int]:
    """``{folder name: model class index}`` from a JSON or YAML file; ClassMapError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise ClassMapError(f"class map {path}: no such file; {_MAP_HINT}.")
    try:
        data = yaml.safe_load(path.read_text())  # YAML reads JSON too
    except yaml.YAMLError as error:
        raise ClassMapError(f"class map {path} is neither JSON nor YAML: {error}") from None
    if not isinstance(data, dict) or not data:
        raise ClassMapError(f"class map {path} must be a non-empty mapping of folder name -> model class index, "
                            f'e.g. {json.dumps({"cat": 281, "dog": 207})}')
    bad = [f"{k!r}: {v!r}" for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise ClassMapError(f"class map {path}: every value must be a model class index (an integer >= 0); "
                            f"not {', '.join(bad[:3])}")
    return {str(k): int(v) for k, v in data.items()}


def folder_labels(folders: Sequence[str], num_classes: int, class_names: Sequence[str] | None,
                  class_map: dict[str, int] | None = None, model: str = "the model") -> list[int]:
    """The model class index of each (sorted) class folder.

    Args:
        folders: the folder's class sub-folder names, sorted (``find_classes`` order).
        num_classes: outputs of the model's head.
        class_names: the model's class names in index order, None when unknown.
        class_map: an explicit ``{folder: index}``; it must cover every folder.
        model: the model's name, for the messages.

    Raises:
        ClassMapError: the folder does not fit the model and no (valid) mapping says how.
    """
    if class_map is not None:
        missing = [f for f in folders if f not in class_map]
        if missing:
            raise ClassMapError(f"the class map names no model class for {len(missing)} of the folder's "
                                f"{len(folders)} class folders ({_few(missing)}); add them to the map.")
        outside = {f: class_map[f] for f in folders if class_map[f] >= num_classes}
        if outside:
            raise ClassMapError(f"the class map gives indices beyond {model}'s {num_classes} classes "
                                f"({_few([f'{k} -> {v}' for k, v in outside.items()])}); valid indices are "
                                f"0-{num_classes - 1}.")
        return [class_map[f] for f in folders]
    if len(folders) != num_classes:
        raise ClassMapError(f"the image folder has {len(folders)} class folders ({_few(folders)}) and {model} "
                            f"predicts {num_classes} classes, so its labels would not mean the model's classes; "
                            f"{_MAP_HINT}, or pass a folder of the model's classes.")
    if class_names is None or list(folders) == [str(n) for n in class_names]:
        return list(range(len(folders)))
    if num_classes == 1000 and all(_WNID.fullmatch(f) for f in folders):
        return list(range(len(folders)))  # sorted WordNet ids are ImageNet's class order
    index = {str(name): i for i, name in enumerate(class_names)}
    if all(f in index for f in folders):
        return [index[f] for f in folders]
    unknown = [f for f in folders if f not in index]
    known = "ImageNet WordNet ids (n01440764, ...) or the category names" if num_classes == 1000 else \
        f"{', '.join(map(str, class_names[:10]))}{', ...' if len(class_names) > 10 else ''}"
    raise ClassMapError(f"the image folder's class folders ({_few(unknown)}) are not {model}'s class names "
                        f"({known}); {_MAP_HINT}.")


def _few(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
