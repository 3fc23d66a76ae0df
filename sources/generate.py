"""Generate CCC streams locally from an ImageNet validation folder, as webdataset shards.

This is oripress/CCC ``generate.py`` (Press et al., NeurIPS 2023) on top of this package's
batched torch corruptions, writing the same shard layout `sources.shards.CCCShardSource` reads
(and the official server serves): ``<out>/<stream name>/serial_<5 digits>.tar``, each holding
``sample_<i>`` with ``input.jpg`` (JPEG quality 85), ``output.cls`` (class index as ASCII) and
``info`` (``++dir++..++name++..++n1++..++s1++..++n2++..++s2++..``).

For lattice point ``k`` of the walk (stream images ``k*speed .. (k+1)*speed - 1``), as in the
reference's ``ApplyTransforms``:

1. ``speed`` images are drawn from the folder: a random permutation of all files, first ``speed``;
2. each is flipped with p = 0.5 and random-resized-cropped to ``image_size`` (scale 0.08-1, ratio
   3/4-4/3), ``sources.augment.random_resized_crop_flip``;
3. noise A at severity A if it is > 0, then noise B at severity B if it is > 0
   (``sources.corruptions``); like the reference (``np.uint8`` after each corruption), the result
   of each corruption is truncated to 8 bits;
4. JPEG at quality 85 (``sources.augment.jpeg_roundtrip``); written in stream order.

Deviations from the reference, and why:

- **Randomness per lattice point.** The reference seeds the global ``numpy``/``torch``/``random``
  generators once per stream and shuffles the file list with ``np.random`` for each point, so a
  point's images depend on every draw before it (and on the process layout, enigma_ccc.md 3.1).
  Here point ``k`` draws its file permutation from ``numpy.random.default_rng([seed, k])`` and its
  crops and corruption noise from a ``torch.Generator`` seeded from ``SeedSequence([seed, k, 1])``.
  Any shard can therefore be generated alone, in parallel (``shards=range(i, n, workers)``), and
  regenerated bit for bit. The walk itself (which corruptions, which severities) is the
  reference's. Images are processed in chunks of ``chunk_size`` per point, drawing from the same
  generator chunk after chunk, so ``chunk_size`` is part of the recipe (default 250).
- **Files**: classes and files come from torchvision's ``find_classes``/``make_dataset`` (image
  extensions only, sorted) instead of ``os.walk`` over every file; labels are the same sorted-folder
  indices (CCC issue #3). A file that cannot be decoded is logged and replaced by the next file of
  the point's permutation. A folder with fewer files than ``speed`` is used in several
  permutations, one after another.
- **Resumable**: a shard is written to a temporary file and renamed when complete; on a rerun,
  shards whose sample count is right are kept and a partial or damaged one is rewritten. Tar
  member times are fixed (``mtime=0``) so identical content gives identical bytes.
- ``max_images`` cuts the stream short (the last shard may then be partial); the reference always
  writes whole shards up to 7.5M images.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import webdataset

from .augment import jpeg_roundtrip, random_resized_crop_flip
from .corruptions import get_corruption
from .imagefolder import index_image_folder, load_image_uint8
from .shards import CCCInfo, ccc_shard_size, count_shard_samples, format_info, shard_filename

logger = logging.getLogger(__name__)

JPEG_QUALITY = 85


@dataclass(frozen=True)
class ShardSample:
    """One stream image as stored: JPEG bytes, class index and CCC's ``info`` string."""

    jpeg: bytes
    label: int
    info: str


class _Spec(Protocol):
    name: str
    speed: int
    seed: int
    length: int


class _Walk(Protocol):
    def point(self, k: int): ...  # -> Point(noise_a, severity_a, noise_b, severity_b)


# ------------------------------------------------------------------------------------ writing


def write_shard(path: str | Path, samples: Sequence[ShardSample | tuple]) -> Path:
    """Write one shard, keys ``sample_0..``, atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    with webdataset.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
        for i, item in enumerate(samples):
            jpeg, label, info = (item.jpeg, item.label, item.info) if isinstance(item, ShardSample) else item
            sink.write({
                "__key__": f"sample_{i}",
                "info": info.encode("utf-8") if isinstance(info, str) else bytes(info),
                "input.jpg": bytes(jpeg),
                "output.cls": str(int(label)).encode("ascii"),
            })
    os.replace(tmp, path)
    return path


def write_ccc_shards(
    samples: Iterable[ShardSample | tuple],
    out_dir: str | Path,
    stream_name: str,
    shard_size: int,
    first_shard: int = 0,
) -> list[Path]:
    """Write samples, in stream order, into ``out_dir/stream_name/serial_XXXXX.tar``.

    Shard ``first_shard`` gets the first ``shard_size`` samples, and so on; if the samples run out
    mid-shard, that last shard is written with fewer. Items are `ShardSample`s or
    ``(jpeg_bytes, label, info)`` tuples.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    folder = Path(out_dir) / stream_name
    folder.mkdir(parents=True, exist_ok=True)
    written, buffer, shard = [], [], first_shard
    for item in samples:
        buffer.append(item)
        if len(buffer) == shard_size:
            written.append(write_shard(folder / shard_filename(shard), buffer))
            buffer, shard = [], shard + 1
    if buffer:
        written.append(write_shard(folder / shard_filename(shard), buffer))
    return written


# ---------------------------------------------------------------------------------- rendering


def point_generators(seed: int, k: int) -> tuple[np.random.Generator, torch.Generator]:
    """The two generators of lattice point ``k``: file choice (numpy) and crops/noise (torch)."""
    files = np.random.default_rng([seed, k])
    state = np.random.SeedSequence([seed, k, 1]).generate_state(1, dtype=np.uint64)[0]
    return files, torch.Generator().manual_seed(int(state))


def _truncate_to_8bit(images: torch.Tensor) -> torch.Tensor:
    """What the reference's ``np.uint8(img)`` does to a corrupted float image: floor to 1/255."""
    return torch.floor(images.clamp(0, 1) * 255.0) / 255.0


class CCCRenderer:
    """Renders the images of lattice points from an image folder (the core of the generator)."""

    def __init__(
        self,
        image_root: str | Path,
        spec: _Spec,
        walk: _Walk,
        profile: str = "imagenet",
        image_size: int = 224,
        chunk_size: int = 250,
        quality: int = JPEG_QUALITY,
    ) -> None:
        self.root = Path(image_root)
        self.classes, self.files = index_image_folder(self.root)
        self.spec, self.walk, self.profile = spec, walk, profile
        self.image_size, self.chunk_size, self.quality = int(image_size), int(chunk_size), int(quality)
        self.substituted: list[str] = []

    def _candidates(self, rng: np.random.Generator) -> Iterator[int]:
        while True:  # fewer files than `speed`: one permutation after another
            yield from rng.permutation(len(self.files)).tolist()

    def render_point(self, k: int) -> list[ShardSample]:
        """The ``speed`` images of lattice point ``k``, in stream order."""
        point = self.walk.point(k)
        speed = int(self.spec.speed)
        file_rng, gen = point_generators(int(self.spec.seed), k)
        candidates = self._candidates(file_rng)
        failures = 0
        out: list[ShardSample] = []
        while len(out) < speed:
            chunk: list[tuple[int, torch.Tensor]] = []
            while len(chunk) < min(self.chunk_size, speed - len(out)):
                index = next(candidates)
                path = self.files[index][0]
                try:
                    chunk.append((index, load_image_uint8(path)))
                except (OSError, RuntimeError) as exn:
                    failures += 1
                    logger.warning("CCC generation, point %d: cannot read %s (%s); using the next file", k, path, exn)
                    self.substituted.append(f"{path}: {exn}")
                    if failures > 10 * speed + len(self.files):
                        raise RuntimeError(f"too many unreadable images in {self.root}; last: {path}") from exn
            images = random_resized_crop_flip([img for _, img in chunk], gen, self.image_size)
            if point.severity_a > 0:
                images = self._corrupt(point.noise_a, images, point.severity_a, gen)
            if point.severity_b > 0:
                images = self._corrupt(point.noise_b, images, point.severity_b, gen)
            _, jpegs = jpeg_roundtrip(images, quality=self.quality)
            for (index, _), jpeg in zip(chunk, jpegs):
                path, label = self.files[index]
                info = CCCInfo(Path(path).parent.name, Path(path).name, point.noise_a,
                               float(point.severity_a), point.noise_b, float(point.severity_b))
                out.append(ShardSample(jpeg, label, format_info(info)))
        return out

    def _corrupt(self, name: str, images: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
        corrupted = get_corruption(name)(images, float(severity), gen, self.profile)
        return _truncate_to_8bit(corrupted)


# --------------------------------------------------------------------------------- generation


@dataclass
class GenerationReport:
    """What a `generate_ccc_from_imagefolder` call did."""

    stream_dir: Path
    length: int
    shard_size: int
    written: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    substituted: list[str] = field(default_factory=list)


def generate_ccc_from_imagefolder(
    imagenet_val_dir: str | Path,
    out_dir: str | Path,
    spec: _Spec,
    walk: _Walk,
    profile: str = "imagenet",
    max_images: int | None = None,
    image_size: int = 224,
    shard_size: int | None = None,
    shards: Iterable[int] | None = None,
    chunk_size: int = 250,
    quality: int = JPEG_QUALITY,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationReport:
    """Generate (or complete) the CCC stream ``spec`` under ``out_dir/spec.name``.

    Args:
        imagenet_val_dir: ``<root>/<wnid>/<image>`` (ImageNet val sorted into class folders).
        spec: the stream (``name``, ``speed``, ``seed``, ``length``), e.g. `sources.ccc.CCCSpec`.
        walk: its lattice points, ``walk.point(k)``, e.g. `sources.ccc.CCCWalk`.
        profile: the corruption constants (``"imagenet"`` for 224 px ImageNet).
        max_images: stop after this many images (default: the whole stream, ``spec.length``).
        image_size: crop size (224 as in CCC).
        shard_size: images per shard (default CCC's ``ceil(25000 / speed) * speed``).
        shards: which shard indices to produce (default all); give disjoint sets to parallel workers.
        chunk_size: images transformed at once within a point (part of the random recipe).
        progress: called as ``progress(shards_done, shards_total)``.

    Existing shards with the right number of samples are kept; others are (re)written.
    """
    speed = int(spec.speed)
    size = int(shard_size or ccc_shard_size(speed))
    total = int(spec.length) if max_images is None else min(int(spec.length), int(max_images))
    if total <= 0:
        raise ValueError(f"nothing to generate: max_images={max_images}, stream length {spec.length}")
    num_shards = math.ceil(total / size)
    todo = list(range(num_shards)) if shards is None else sorted(set(int(s) for s in shards))
    bad = [s for s in todo if not 0 <= s < num_shards]
    if bad:
        raise ValueError(f"shard indices {bad[:5]} are outside 0..{num_shards - 1} of {spec.name}")

    renderer = CCCRenderer(imagenet_val_dir, spec, walk, profile, image_size, chunk_size, quality)
    folder = Path(out_dir) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    report = GenerationReport(folder, total, size)
    cache: tuple[int, list[ShardSample]] | None = None  # the last point, if a shard splits it

    for done, shard in enumerate(todo):
        lo, hi = shard * size, min((shard + 1) * size, total)
        path = folder / shard_filename(shard)
        if path.exists():
            count = count_shard_samples(path)
            if count == hi - lo:
                report.kept.append(shard)
                if progress:
                    progress(done + 1, len(todo))
                continue
            logger.warning("CCC generation: %s has %d of %d samples; rewriting it", path, count, hi - lo)
        samples: list[ShardSample] = []
        for k in range(lo // speed, (hi - 1) // speed + 1):
            if cache is not None and cache[0] == k:
                rendered = cache[1]
            else:
                rendered = renderer.render_point(k)
                cache = (k, rendered)
            first = k * speed
            samples.extend(rendered[max(lo, first) - first: min(hi, first + speed) - first])
        write_shard(path, samples)
        report.written.append(shard)
        logger.info("CCC generation: wrote %s (%d images)", path, len(samples))
        if progress:
            progress(done + 1, len(todo))
    report.substituted = renderer.substituted
    return report
