"""The full-range meta-set (issue 25): windows from the clean source domain down to chance, each
with every registered estimator's reading on both feeds and the labelled truth, and the shift
family it came from so fitting can hold whole families out.

Every domain (`sources.shifts`) is read as `windows` consecutive windows of `window_images`
images, of the embedded glyphs' calibration range or (`MetaSetBuild.data`) of a user's labelled
image folder, each domain from its own stretch of the shuffled folder (`FOLDER_DOMAINS`). The frozen model scores every image (the frozen feed); each adapter starts fresh at the
domain's first image and adapts through its windows (the served feed), so its later windows are
read from an adapted model. The readings come from the run's own `EstimationPipeline` with the
shipped calibrations' labelled statistics, so a meta-set window is what a probe window of that
size would record; the Sentinel's features and the nuclear norm's raw score are kept so the
fitting (`calibration.trust`) can refit those maps with a family held out.

Results go to a JSON-lines file, one window per line, as they are made: a build that stops
resumes where it stopped (windows already in the file are skipped).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from stream_monitor.sources.base import StreamSource
from stream_monitor.sources.seeding import mix_seed
from stream_monitor.sources.shifts import ShiftedGlyphSource, ShiftedSource, parse_shift

from .estimation.context import EstimationContext
from .estimation.pipeline import EstimationPipeline
from .estimation.readings import Feed
from .estimation.window import FeedStats, with_frozen_line

if TYPE_CHECKING:
    from .models import SourceModel
    from .runtime.workers import AdapterWorker

__all__ = ["DEFAULT_DOMAINS", "FOLDER_DOMAINS", "VALIDATION_DOMAINS", "MetaSetBuild", "MetaSetReaders", "build", "default_domains",
           "domain_offset", "domain_source", "family_of", "read_windows"]

#: The default full-range meta-set of the embedded glyphs (accuracy of the frozen model from 98%,
#: the source domain, to chance): 7 families, none of them the stream's 15 corruptions.
DEFAULT_DOMAINS = (
    "clean/whole", "clean",
    "heldout:speckle_noise:1/whole", "heldout:speckle_noise:3", "heldout:speckle_noise:5",
    "heldout:gaussian_blur:1/whole", "heldout:gaussian_blur:2/whole", "heldout:gaussian_blur:4",
    "heldout:spatter:2/whole", "heldout:spatter:5", "heldout:saturate:3/whole",
    "compose:spatter:3+gaussian_blur:2", "compose:gaussian_blur:1+speckle_noise:4",
    "compose:spatter:5+speckle_noise:5",
    "mix:0.25:gaussian_blur:5/whole", "mix:0.5:speckle_noise:5/whole", "mix:0.75:gaussian_blur:5",
    "affine:1/whole", "affine:5/whole", "affine:3",
    "invert:1/whole", "invert:1.5", "invert:2", "invert:5/whole",
    "occlude:1/whole", "occlude:3/whole", "occlude:4",
)

#: Families kept out of every fit of the embedded files, to validate them on shifts that none of
#: their maps, rules or intervals saw (`benchmarks/validate_families.py`); frozen accuracy 21-98%.
VALIDATION_DOMAINS = (
    "jigsaw:1/whole", "jigsaw:3/whole", "jigsaw:2", "jigsaw:5",
    "stripes:2/whole", "stripes:3/whole", "stripes:2", "stripes:4",
    "channel:5/whole", "channel:3",
)

#: The full-range meta-set of a user's image folder (`stream-monitor calibrate --data`): the same
#: seven families, mostly on the whole evaluation-transformed image (`/whole`, as the model is
#: evaluated; a random resized crop of an already centre-cropped photo is a far harder domain).
FOLDER_DOMAINS = (
    "clean/whole", "clean",
    "heldout:speckle_noise:1/whole", "heldout:speckle_noise:3/whole", "heldout:speckle_noise:5/whole",
    "heldout:gaussian_blur:1/whole", "heldout:gaussian_blur:3/whole", "heldout:gaussian_blur:5/whole",
    "heldout:spatter:2/whole", "heldout:spatter:5/whole", "heldout:saturate:3/whole",
    "compose:spatter:3+gaussian_blur:2/whole", "compose:gaussian_blur:1+speckle_noise:4/whole",
    "mix:0.25:gaussian_blur:5/whole", "mix:0.5:speckle_noise:5/whole", "mix:0.75:gaussian_blur:5/whole",
    "affine:1/whole", "affine:3/whole", "affine:5/whole",
    "invert:1/whole", "invert:2/whole", "invert:5/whole",
    "occlude:1/whole", "occlude:3/whole", "occlude:4/whole",
)


def default_domains(data: str | Path | None) -> tuple[str, ...]:
    """The default meta-set for the embedded glyphs (`data` None) or an image folder."""
    return DEFAULT_DOMAINS if data is None else FOLDER_DOMAINS


def domain_source(domain: str, length: int, model, data: str | Path | None = None, seed: int = 0) -> StreamSource:
    """One meta-set domain of `length` images: rendered glyphs, or `data`'s images (an ImageFolder of
    the model's classes, labelled by sorted class folder as `sources.heldout.HeldOutFolderSource`
    labels them), resized and centre-cropped as `model` is evaluated, with the model's corruption
    constants. Each domain reads the shuffled folder from its own offset, so the domains of a small
    folder do not all start with the same images."""
    if data is None:
        return ShiftedGlyphSource(domain, length, image_size=model.image_size)
    from stream_monitor.sources.factory import corruption_profile
    from stream_monitor.sources.imagefolder import ImageFolderSource

    base = ImageFolderSource(data, image_size=model.image_size, resize=model.resize_size, shuffle_seed=seed)
    offset = domain_offset(domain, len(base.samples))
    base.passes = -(-(offset + length) // len(base.samples))  # as many passes as the domain reaches
    return ShiftedSource(base, domain, length, profile=corruption_profile(model), seed=seed, offset=offset)


def domain_offset(domain: str, images: int) -> int:
    """Where a domain starts reading a set of `images` labelled images: its own position, so the
    domains of a small set do not all start with the same images."""
    return mix_seed(7, *domain.encode()) % images


def family_of(domain: str) -> str:
    """A domain's shift family (what leave-one-family-out holds out)."""
    return parse_shift(domain).family


@dataclass(frozen=True)
class MetaSetBuild:
    """What one build reads: the domains, the window size, and per adapter the served feed's
    labelled statistics (its calibration's; the frozen feed's are `frozen`); `data`: an image
    folder whose images the domains shift (None: the embedded glyphs), or the name of the images
    that `MetaSetReaders.domain` shifts."""

    domains: tuple[str, ...]
    adapters: dict[str, FeedStats | None]
    frozen: FeedStats
    windows: int = 4
    window_images: int = 512
    batch_size: int = 64
    data: str | None = None


@dataclass(frozen=True)
class MetaSetReaders:
    """Who reads a meta-set: the frozen model (`model`, which scores every image), a fresh served
    adapter per adapter name (`adapter`: name -> an `AdapterWorker` at the source model), and the
    labelled images of each domain (`domain`: (domain, images) -> a source); `data` names those
    images in the meta-set's record (`MetaSetBuild.data`; None: the embedded glyphs).

    `config_readers` gives `stream-monitor calibrate`'s (the model and adapters the config names,
    the glyphs or the image folder); the Python API's `calibrate_model` gives the user's model,
    adapter and held-out images.
    """

    model: SourceModel
    adapter: Callable[[str], AdapterWorker]
    domain: Callable[[str, int], StreamSource]
    data: str | None = None


def config_readers(spec: MetaSetBuild, config) -> MetaSetReaders:
    """The readers the config names: its model from the registry, each adapter built by name (with
    the clean domain's Fisher images where it needs them), `spec.data`'s images or the glyphs."""
    from .fisher import clean_fisher_images
    from .models import load_model
    from .runtime.runner import with_overrides
    from .runtime.workers import AdapterWorker

    model = load_model(config.model.name, config.model.weights, "cpu")
    fisher: dict[str, Any] = {}  # per adapter, rendered once for every domain

    def adapter(name: str) -> AdapterWorker:
        named = with_overrides(config, adapter={"name": name})
        if name not in fisher:
            fisher[name] = clean_fisher_images(named)
        return AdapterWorker(named, fisher[name])

    return MetaSetReaders(model, adapter, lambda domain, images: domain_source(domain, images, model, spec.data),
                          spec.data)


def read_windows(path: Path) -> list[dict[str, Any]]:
    """The windows of a meta-set file (a line cut short by a stopped build is dropped)."""
    out = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def merge_windows(*files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The windows of several builds over the same domains, each window's served feeds merged (the
    first file's order and frozen readings). A window missing from a later file keeps what it has.

    Raises:
        ValueError: two files disagree on a window's true source accuracy (not the same images).
    """
    merged = {(w["domain"], w["window"]): {**w, "served": dict(w["served"])} for w in files[0]} if files else {}
    for windows in files[1:]:
        for w in windows:
            mine = merged.get((w["domain"], w["window"]))
            if mine is None:
                continue
            if abs(mine["true_source_acc"] - w["true_source_acc"]) > 1e-9:
                raise ValueError(f"meta-set window {w['domain']}#{w['window']}: the files disagree on the frozen "
                                 f"model's accuracy ({mine['true_source_acc']} against {w['true_source_acc']}); "
                                 f"they were built on other images or another model: rebuild one of them")
            mine["served"].update(w["served"])
    return list(merged.values())


def union_windows(*files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every window of several builds, once: a window in more than one file (the same domain and
    window number) has the served feeds of all of them (`merge_windows`' check); the others are
    kept as they are, in the order first seen.

    Raises:
        ValueError: two files disagree on a window's true source accuracy (not the same images).
    """
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for windows in files:
        for w in windows:
            key = (w["domain"], w["window"])
            seen[key] = merge_windows([seen[key]], [w])[0] if key in seen else {**w, "served": dict(w["served"])}
    return list(seen.values())


def _reading_dict(readings: Iterable) -> dict[str, dict[str, Any]]:
    return {r.estimator: {"value": r.value, "score": r.score,
                          "features": None if r.features is None else list(r.features)} for r in readings}


def build(spec: MetaSetBuild, config, out: Path, log: Callable[[str], None] = print,
          readers: MetaSetReaders | None = None) -> list[dict[str, Any]]:
    """Run the meta-set, appending each window to `out` (JSON lines); resumes a stopped build.

    `readers`: the model, adapters and images to read it with (None: those `config` names)."""
    from .runtime.messages import Images

    for domain in spec.domains:
        parse_shift(domain)  # every domain valid before anything runs
    done = {(w["domain"], w["window"]) for w in read_windows(out)}
    readers = readers or config_readers(spec, config)
    model = readers.model
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for k, domain in enumerate(spec.domains):
        if all((domain, i) in done for i in range(spec.windows)):
            continue
        started = time.perf_counter()
        source = readers.domain(domain, spec.windows * spec.window_images)
        workers = {name: readers.adapter(name) for name in spec.adapters}
        pipelines = {name: EstimationPipeline(EstimationContext(served=with_frozen_line(stats, spec.frozen),
                                                                frozen=spec.frozen), model.num_classes)
                     for name, stats in spec.adapters.items()}
        frozen_only = EstimationPipeline(EstimationContext(frozen=spec.frozen), model.num_classes)
        written: dict[str, Any] | None = None  # the domain's last window written now
        for i in range(spec.windows):
            for pipeline in (*pipelines.values(), frozen_only):
                pipeline.reset()
            correct = {name: 0 for name in spec.adapters}
            frozen_correct = n = 0
            lo = i * spec.window_images
            for batch in source.read(lo, lo + spec.window_images, spec.batch_size):
                if not len(batch):
                    continue  # every image of the slice unreadable (an image folder's bad files)
                n += len(batch)
                frozen = model.probabilities(torch.from_numpy(batch.images))
                frozen_correct += int((frozen.argmax(1) == batch.labels).sum())
                frozen_only.observe(Feed.FROZEN, frozen)
                images = Images(int(batch.indices[0]), int(batch.indices[-1]) + 1, batch.indices, batch.images)
                for name, worker in workers.items():
                    served = worker.step(images).probabilities
                    correct[name] += int((served.argmax(1) == batch.labels).sum())
                    pipelines[name].observe(Feed.SERVED, served)
            if (domain, i) in done or not n:
                continue  # done: the adapters had to pass through it to reach the next window
            window = {"family": family_of(domain), "domain": domain, "window": i, "images": n,
                      "true_source_acc": 100.0 * frozen_correct / n,
                      "frozen": _reading_dict(r for r in frozen_only.readings() if r.feed == Feed.FROZEN),
                      "served": {name: {"true_online_acc": 100.0 * correct[name] / n,
                                        "readings": _reading_dict(r for r in pipelines[name].readings()
                                                                  if r.feed == Feed.SERVED)}
                                 for name in spec.adapters}}
            with out.open("a") as handle:
                handle.write(json.dumps(window) + "\n")
            written = window
        if written is None:  # its remaining windows were done before, or had no readable image
            log(f"[{k + 1}/{len(spec.domains)}] {domain}: no new window ({time.perf_counter() - started:.0f} s)")
            continue
        log(f"[{k + 1}/{len(spec.domains)}] {domain}: frozen {written['true_source_acc']:.1f}%  "
            + "  ".join(f"{a} {written['served'][a]['true_online_acc']:.1f}%" for a in spec.adapters)
            + f"  ({time.perf_counter() - started:.0f} s)")
    return read_windows(out)
