"""A plain image folder as a stream: ``root/<class>/<image>``, no corruption.

Classes are the sorted sub-folders of ``root`` and files are found with torchvision's
``datasets.folder`` helpers (``find_classes``, ``make_dataset``, ``IMG_EXTENSIONS``), so labels
match ``torchvision.datasets.ImageFolder`` and oripress/CCC's sorted class list (CCC issue #3).
Every image is resized on its shorter side to ``resize`` and centre-cropped to ``image_size``
(the usual ImageNet evaluation transform), giving uint8 NCHW batches.

Order is deterministic: ``make_dataset``'s sorted order, or a permutation drawn from
``numpy.random.default_rng(shuffle_seed)``. With ``passes`` > 1 the stream goes over the folder
that many times, each later pass in a fresh permutation seeded by (shuffle_seed, pass), as a
reshuffling loader would (Entropy Enigma's ``DataLoader(shuffle=True)`` over ``--data``, adapting
for more iterations than the folder has images). A shuffled stream's windows hold the whole
folder's class balance, where the sorted order holds one or two classes per window; position
``i`` stays a pure function of (folder, seed, i), so a resumed run reads exactly what it would
have read. ``class_labels`` maps each sorted class folder to a model class (`sources.class_map`).
An unreadable or corrupt file is left out of its batch, logged with its path and listed in
``Batch.skipped``; so is an image whose header declares more than ``max_pixels`` pixels, refused
before it is decoded (one hostile file must not cost a worker gigabytes). Batches are cut by
stream position, as in `sources.shards`, so one bad file never shifts the rest of the stream.
Labels need no range check here: they are indices into the folder's own sorted class list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from .base import Batch

logger = logging.getLogger(__name__)

#: Default pixel limit of `ImageFolderSource`: far above any ImageNet photo, low enough that a
#: decoded image stays a bounded allocation whatever a file's header claims.
MAX_IMAGE_PIXELS = 50_000_000


class ImageTooLarge(RuntimeError):
    """An image whose header declares more pixels than allowed; raised before any decoding."""


def image_header(file: str | Path | BinaryIO) -> tuple[str | None, int, int]:
    """(format, width, height) from an image's header only; raises RuntimeError if unreadable.

    PIL's ``Image.open`` is lazy (it parses the header, not the pixel data), so this is the cheap
    way to learn what a file claims before trusting it with a decoder's allocation.
    """
    try:
        with Image.open(file) as img:
            width, height = img.size
            return img.format, int(width), int(height)
    except Image.DecompressionBombError as exn:  # PIL's own, far higher, limit
        raise ImageTooLarge(str(exn)) from None
    except Exception as exn:  # PIL raises many types on hostile headers
        raise RuntimeError(f"cannot read the image header ({type(exn).__name__}: {exn})") from None


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    """Raise ImageTooLarge when ``width x height`` exceeds ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} ({width * height:,} pixels), over the limit of "
            f"{max_pixels:,} (max_pixels=); refused before decoding"
        )


def load_image_uint8(path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """An image file as a uint8 RGB (3, H, W) tensor; raises OSError/RuntimeError if unreadable.

    torchvision's decoders first (JPEG incl. CMYK, PNG, GIF, WebP); PIL for the other
    ``IMG_EXTENSIONS`` (BMP, PPM/PGM, TIFF). With ``max_pixels`` the header is read first and an
    image larger than that raises `ImageTooLarge` without being decoded. Generation passes no
    limit, so that the images it renders stay exactly those of oripress/CCC.
    """
    if max_pixels is not None:
        _, width, height = image_header(path)
        check_pixels(width, height, max_pixels)
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as first:
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except Exception as exn:
            raise RuntimeError(f"cannot decode {path}: {_reason(first)}; PIL: {exn}") from None
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _reason(exn: Exception) -> str:
    text = str(exn.args[0]) if exn.args else type(exn).__name__
    return text.split(", ")[-1]


def index_image_folder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, label), ...]) of an ImageFolder tree, sorted; clear errors if unusable."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} does not exist. Pass a folder laid out as "
            "<root>/<class>/<image> (e.g. the ImageNet validation set sorted into wnid folders)."
        )
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Image folder {str(root)!r} has no class sub-folders; expected <root>/<class>/<image>."
        ) from None
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(
            f"Image folder {str(root)!r} has {len(classes)} class folders but no image files "
            f"(extensions {', '.join(IMG_EXTENSIONS)})."
        )
    return classes, samples


class ImageFolderSource:
    """An image folder as an indexed, uncorrupted stream (`StreamSource`).

    Args:
        root: ``root/<class>/<image>``; classes are the sorted sub-folder names.
        image_size: side of the centre crop.
        resize: the shorter side is resized to this before cropping (256 for 224 crops).
        shuffle_seed: None for sorted order (class, then file name), else a seeded permutation.
        passes: times the stream goes over the folder; pass p > 0 is permuted with the seed
            (shuffle_seed or 0, p).
        max_pixels: images whose header declares more pixels are skipped undecoded (None: no limit).
        class_labels: the model class of each sorted class folder (None: its index), with
            `num_classes` the model's; from `sources.class_map.folder_labels`.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 224,
        resize: int = 256,
        shuffle_seed: int | None = None,
        name: str | None = None,
        passes: int = 1,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        class_labels: list[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if resize < image_size:
            raise ValueError(f"resize ({resize}) must be at least image_size ({image_size})")
        self.root = Path(root)
        self.classes, samples = index_image_folder(self.root)
        if class_labels is not None:
            if len(class_labels) != len(self.classes):
                raise ValueError(f"class_labels has {len(class_labels)} entries for {len(self.classes)} class folders")
            samples = [(path, int(class_labels[label])) for path, label in samples]
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(samples))
            samples = [samples[i] for i in order]
        self.samples = samples
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.passes = int(passes)
        self._orders: dict[int, np.ndarray] = {}
        self.image_size = int(image_size)
        self.resize = int(resize)
        self.shuffle_seed = shuffle_seed
        self.max_pixels = max_pixels
        self.num_classes = int(num_classes) if num_classes is not None else len(self.classes)
        self.name = name or f"imagefolder:{self.root.name}"

    @property
    def length(self) -> int:
        return len(self.samples) * self.passes

    def sample(self, index: int) -> tuple[str, int]:
        """(path, label) of stream position `index`."""
        n = len(self.samples)
        turn, j = divmod(index, n)
        if turn == 0:
            return self.samples[j]
        if turn not in self._orders:
            seed = [self.shuffle_seed or 0, turn]
            self._orders[turn] = np.random.default_rng(seed).permutation(n)
        return self.samples[self._orders[turn][j]]

    def load(self, index: int) -> torch.Tensor:
        """Image `index` of the stream, resized and centre-cropped: uint8 (3, S, S)."""
        image = load_image_uint8(self.sample(index)[0], self.max_pixels)
        image = TF.resize(image, [self.resize], antialias=True)
        return TF.center_crop(image, [self.image_size, self.image_size])

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        """Batches covering positions [start, stop), cut every `batch_size` positions."""
        if not 0 <= start <= stop <= self.length:
            raise ValueError(f"slice [{start}, {stop}) is outside {self.name!r} of {self.length} images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        carried: list[str] = []
        for lo in range(start, stop, batch_size):
            indices, images, skipped = [], [], []
            for i in range(lo, min(lo + batch_size, stop)):
                path = self.sample(i)[0]
                try:
                    images.append(self.load(i))
                    indices.append(i)
                except (OSError, RuntimeError, ValueError) as exn:
                    reason = str(exn) if isinstance(exn, ImageTooLarge) else f"unreadable image ({exn})"
                    logger.warning("image folder %s: skipped %s: %s", self.root, path, reason)
                    skipped.append(f"{path}: {reason}")
            if not indices:  # nothing readable here: report it with the next batch
                carried.extend(skipped)
                continue
            yield self._batch(indices, images, carried + skipped)
            carried = []
        if carried:
            yield self._batch([], [], carried)

    def _batch(self, indices: list[int], images: list[torch.Tensor], skipped: list[str]) -> Batch:
        n = len(indices)
        return Batch(
            indices=np.asarray(indices, dtype=np.int64),
            images=(torch.stack(images).numpy() if images
                    else np.zeros((0, 3, self.image_size, self.image_size), np.uint8)),
            labels=np.asarray([self.sample(i)[1] for i in indices], dtype=np.int64),
            noise_a=np.full(n, "", dtype=str),
            severity_a=np.zeros(n, dtype=np.float32),
            noise_b=np.full(n, "", dtype=str),
            severity_b=np.zeros(n, dtype=np.float32),
            skipped=skipped,
        )

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {self.length} images, {self.num_classes} classes)"
