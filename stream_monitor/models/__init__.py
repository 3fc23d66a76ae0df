"""Source models: the embedded ResNet-20 and any torchvision classifier, with their preprocessing.

    >>> bundle = load_model("embedded")                 # shipped weights, checksum verified
    >>> bundle = load_model("resnet50")                 # IMAGENET1K_V1 from torchvision's cache
    >>> bundle = load_model("resnet50", weights="rn50.pth")

Weights are only ever read with `torch.load(weights_only=True)`; nothing is downloaded at run
time (the machines this runs on often have no internet), so a missing file is an error that says
where to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ..registry import unknown_name_message
from .embedded import CifarResNet
from .normalisation import EMBEDDED_MEAN, EMBEDDED_STD

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_CARD = ASSETS / "embedded_resnet20.json"
#: The embedded models by name: the source model, and the ResNet-8 sidekick of Asymmetric Duos.
EMBEDDED = {"embedded": ("embedded_resnet20", 20), "embedded-small": ("embedded_resnet8", 8)}
#: The paper's model (Entropy Enigma, CCC): ResNet-50 with torchvision's IMAGENET1K_V1 weights.
DEFAULT_IMAGENET_WEIGHTS = {"resnet50": "IMAGENET1K_V1"}


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or fail their checksum."""


@dataclass
class SourceModel:
    """A classifier with everything needed to feed it uint8 images."""

    name: str
    module: nn.Module
    num_classes: int
    image_size: int  # the input size the model expects (crop size)
    resize_size: int  # shorter side before the centre crop, for image folders
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str  # where the weights came from
    sha256: str  # checksum of the weights file
    class_names: tuple[str, ...] | None = None  # in index order; None where unknown (a head of one's own)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float NCHW images -> normalised float on the model's device."""
        device = next(iter(self.module.state_dict().values()), torch.empty(0)).device
        x = images.to(device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        # channels_last convolutions are ~1.7x faster for the ResNets on CPU (and GPU tensor cores).
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    @cached_property
    def short_id(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen model in eval mode (running BatchNorm statistics)."""
        self.module.eval()
        with torch.inference_mode():
            return self.module(self.normalise(images))

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """The frozen model's softmax (float32 numpy, on the CPU), as the evaluator and calibrate score it."""
        return self.predict(images).float().softmax(1).cpu().numpy()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(name: str = "embedded", weights: str | os.PathLike | None = None, device: str = "cpu") -> SourceModel:
    """Load a source model by name: `embedded` or any torchvision classification model."""
    if name in EMBEDDED:
        model = _load_embedded(Path(weights) if weights else None, *EMBEDDED[name])
    else:
        model = _load_torchvision(name, Path(weights) if weights else None)
    model.module.to(device, memory_format=torch.channels_last).eval()
    return model


@dataclass(frozen=True)
class ModelClasses:
    """What a model predicts, known before it is built: its head size and class names (None: unknown)."""

    num_classes: int
    names: tuple[str, ...] | None


def model_classes(name: str = "embedded", weights: str | os.PathLike | None = None) -> ModelClasses:
    """The classes of `load_model(name, weights)` without building the model (a run checks its
    stream against them before it creates anything); a weights file's head size is read from it."""
    if name in EMBEDDED:
        from stream_monitor.sources.glyphs import CLASS_NAMES

        return ModelClasses(len(CLASS_NAMES), tuple(CLASS_NAMES))
    spec = _default_weights(name)
    categories = tuple(spec.meta["categories"])
    if weights is None:
        return ModelClasses(len(categories), categories)
    module = torchvision.models.get_model(name, weights=None, num_classes=len(categories))
    head = _head_size(module, _read_state_dict(Path(weights)), name, Path(weights))
    return ModelClasses(head, categories if head == len(categories) else None)


def model_names() -> list[str]:
    return [*EMBEDDED, *torchvision.models.list_models(module=torchvision.models)]


def _load_embedded(weights: Path | None, name: str = "embedded_resnet20", depth: int = 20) -> SourceModel:
    card_path = ASSETS / f"{name}.json"
    if not card_path.exists():
        raise WeightsError(
            f"The embedded model card {card_path} is missing; reinstall stream-monitor, or train the "
            f"model with `python -m stream_monitor.train_embedded --depth {depth} --out {ASSETS}`."
        )
    card = json.loads(card_path.read_text())
    path = weights or ASSETS / card["weights"]
    if not path.exists():
        raise WeightsError(
            f"Embedded model weights not found at {path}. They ship with stream-monitor; reinstall it, "
            f"or train them again with `python -m stream_monitor.train_embedded --out DIR`."
        )
    digest = sha256_file(path)
    if weights is None and digest != card["sha256"]:
        raise WeightsError(
            f"Checksum mismatch for {path}: sha256 {digest}, expected {card['sha256']} "
            f"(from {card_path.name}). The file is corrupt or was replaced; reinstall stream-monitor "
            f"or pass your own file with --weights."
        )
    module = CifarResNet(depth=depth, num_classes=10)
    module.load_state_dict(_read_state_dict(path))
    from stream_monitor.sources.glyphs import CLASS_NAMES

    return SourceModel(name, module, 10, 32, 32, tuple(card.get("mean", EMBEDDED_MEAN)),
                       tuple(card.get("std", EMBEDDED_STD)), str(path), digest, tuple(CLASS_NAMES))


def _load_torchvision(name: str, weights: Path | None) -> SourceModel:
    spec = _default_weights(name)
    categories = tuple(spec.meta["categories"])
    module = torchvision.models.get_model(name, weights=None, num_classes=len(categories))
    path = weights or Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.url)
    if not path.exists():
        raise WeightsError(
            f"Weights for {name} ({spec}) not found at {path}. This machine does not download them: "
            f"fetch {spec.url} on a machine with internet and either copy it to {path.parent}/ "
            f"(torchvision's cache) or pass --weights PATH."
        )
    state = _read_state_dict(path)
    head = _head_size(module, state, name, path)
    if head != len(categories):  # a user's fine-tuned head: same architecture, its own classes
        module = torchvision.models.get_model(name, weights=None, num_classes=head)
    module.load_state_dict(state)
    preprocess = spec.transforms()
    return SourceModel(
        name, module, head, int(preprocess.crop_size[0]), int(preprocess.resize_size[0]),
        tuple(preprocess.mean), tuple(preprocess.std), f"{spec} ({path})", sha256_file(path),
        categories if head == len(categories) else None,
    )


def _default_weights(name: str):
    """torchvision's weights enum entry for `name` (its preprocessing and class names); ValueError if unknown."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(unknown_name_message("model", name, [*EMBEDDED, *available]))
    return getattr(torchvision.models.get_model_weights(name), DEFAULT_IMAGENET_WEIGHTS.get(name, "DEFAULT"))


def _head_size(module: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> int:
    """The number of classes of `state`'s final linear layer; WeightsError, saying which tensor and
    why, when the file is not a state dict of `name` (other than in its head)."""
    expected = module.state_dict()
    linears = [key for key, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    head = f"{linears[-1]}." if linears else None
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    body = [k for k in mismatched if head is None or not k.startswith(head)]
    if missing or unexpected or body:
        first = (f"{body[0]} is {tuple(state[body[0]].shape)}, {name} expects {tuple(expected[body[0]].shape)}"
                 if body else f"missing {', '.join(missing[:3])}" if missing else
                 f"unexpected {', '.join(unexpected[:3])}")
        raise WeightsError(f"{path} is not a state dict of torchvision's {name} ({first}). Pass the weights of "
                           f"that architecture (--weights FILE, from `torch.save(model.state_dict(), FILE)`), "
                           f"or the --model they were trained for.")
    if head is None or not any(k.startswith(head) for k in mismatched):
        return len(_default_weights(name).meta["categories"])
    return int(state[f"{head}weight"].shape[0])


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for bad files
        raise WeightsError(f"Cannot read weights from {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
