"""Calibrate the estimators for your model and adapter on your own labelled held-out data.

Entropy Enigma (Press et al., ICML 2024, section 4.2) fits its flips-to-accuracy function on a
labelled meta-set: the held-out data, clean and under corruptions the monitored stream never
uses (speckle noise, gaussian blur, spatter, saturate at severities 1-5), each run through the
probe protocol with the model adapting. `calibrate_model` does that with `Monitor`'s model and
adapter: one probe cycle per domain, the same points and fits as `stream-monitor calibrate`
(`stream_monitor.calibrate.meta_points`, `source_statistics`, `calibration.fit`), saved as a
calibration file that `Monitor(..., calibration=PATH)` reads, and that refuses any other weights,
adapter, hyperparameters, probe size or cycle.

Then the full-range meta-set (issue 25, docs/headline-rule.md): the held-out images under seven
shift families, read by the frozen model and the adapter, on which
`stream_monitor.calibrate_metaset.add_full_range` learns the headline rules, their 90% intervals
and the support, with the same code as `stream-monitor calibrate` (`heldout_readers` gives it the
user's model, adapter and images in place of the config's names).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream_monitor.sources.augment import jpeg_roundtrip
from stream_monitor.sources.base import Batch, RenderedSource, StreamSource
from stream_monitor.sources.corruptions import get_corruption
from stream_monitor.sources.heldout import FOLDER_DOMAINS, parse_domain
from stream_monitor.sources.seeding import mix_seed
from stream_monitor.sources.shifts import ShiftedSource

from ..calibrate import meta_points, source_statistics
from ..calibrate_metaset import UNCALIBRATED_ADAPTERS, MetaSetOptions, adapts_by_name, add_full_range
from ..calibration.fit import fit_flips
from ..calibration.format import Calibration, Provenance
from ..config import RunConfig
from ..estimation.sentinel import MIN_IMAGES
from ..metaset import MetaSetReaders, domain_offset
from ..runtime.components import Components, CopiedModel, GivenStream
from ..runtime.runner import run, with_overrides
from ..runtime.workers import AdapterWorker
from ..schedule import cycle_length, last_probe_step
from .adapters import adapter_factory, fisher_images, restart
from .images import BatchFormatError, check_labels
from .models import UserModel
from .monitor import Monitor
from .streams import as_stream

__all__ = ["HeldOutImages", "LabelledImages", "calibrate_model"]

#: Images of the clean domain that DoC/ATC's source statistics are measured on (as `stream-monitor calibrate`).
SOURCE_STATISTICS_IMAGES = 2048
#: The meta-set's data: any non-empty name selects an image folder's default domains (`metaset.default_domains`).
HELDOUT = "your held-out images"
#: How `calibrate_model`'s messages spell the meta-set options.
API_NAMES = {"domains": "metaset_domains", "windows": "metaset_windows", "window_images": "metaset_window_images"}


class LabelledImages(RenderedSource):
    """Implements `stream_monitor.sources.base.StreamSource`: a labelled held-out set read in passes.

    Image i is held-out image `order[i % n]` of a seeded permutation, fresh on every pass, so every
    window holds the whole set's class balance. The full-range meta-set shifts these images
    (`stream_monitor.sources.shifts.ShiftedSource`, which adds the stream's pipeline and JPEG).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, length: int, num_classes: int, seed: int = 0,
                 name: str = "heldout") -> None:
        self.images, self.labels, self.name = images, labels, name
        self.num_classes, self.image_size = num_classes, int(images.shape[-1])
        self._length, self._seed = length, seed
        self.has_labels = True

    @property
    def length(self) -> int:
        return self._length

    def _index(self, i: int) -> int:
        n = len(self.images)
        order = np.random.default_rng([self._seed, i // n]).permutation(n)
        return int(order[i % n])

    def render(self, start: int, stop: int) -> Batch:
        picks = [self._index(i) for i in range(start, stop)]
        n = stop - start
        return Batch(np.arange(start, stop, dtype=np.int64), self.images[picks], self.labels[picks],
                     np.full(n, ""), np.zeros(n, np.float32), np.full(n, ""), np.zeros(n, np.float32))


class HeldOutImages(LabelledImages):
    """Implements `stream_monitor.sources.base.StreamSource`: labelled held-out images under one held-out corruption.

    The images of `LabelledImages` (the permutation seeded by the domain), corrupted on a generator
    seeded by the domain and i, then stored as JPEG at quality 85 as CCC's shards are
    (`stream_monitor.sources.heldout`, the same steps).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, domain: str, length: int, num_classes: int,
                 seed: int = 0) -> None:
        self.corruption, self.severity = parse_domain(domain)
        super().__init__(images, labels, length, num_classes, mix_seed(seed, len(domain), *domain.encode()),
                         f"heldout/{domain}")
        self.domain = domain
        self.profile = size_profile(self.image_size)

    def render(self, start: int, stop: int) -> Batch:
        picks = [self._index(i) for i in range(start, stop)]
        x = torch.from_numpy(self.images[picks]).float() / 255.0
        if self.severity > 0:
            corrupt = get_corruption(self.corruption)
            x = torch.cat([corrupt(x[k:k + 1], self.severity, torch.Generator().manual_seed(mix_seed(self._seed, i)),
                                   self.profile) for k, i in enumerate(range(start, stop))])
        n = stop - start
        return Batch(np.arange(start, stop, dtype=np.int64), jpeg_roundtrip(x)[0].numpy(), self.labels[picks],
                     np.full(n, self.corruption), np.full(n, self.severity, np.float32), np.full(n, ""),
                     np.zeros(n, np.float32))


def size_profile(image_size: int) -> str:
    """The corruption constants for held-out images of this size: ImageNet-C's are made for 224 px
    images; small images take the embedded base's."""
    return "embedded" if image_size <= 64 else "imagenet"


def load_heldout(heldout: Any, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of a labelled held-out set: an image folder (`root/<class>/<image>`,
    sub-folders sorted as the model's class indices; resized and centre-cropped to `image_size`),
    or anything `Monitor.run` streams, with labels."""
    if isinstance(heldout, (str, Path)):
        from stream_monitor.sources.imagefolder import ImageFolderSource

        size = image_size or 224
        folder = ImageFolderSource(heldout, image_size=size, resize=max(size, round(size * 256 / 224)))
        batches = list(folder.read(0, folder.length, 256))
    else:
        stream = as_stream(heldout, None, "heldout")
        if not stream.has_labels:
            raise BatchFormatError("Calibration needs labelled held-out data: give (images, labels) batches or "
                                   "(image, label) items.")
        end = stream.length if stream.length is not None else stream.reached(1 << 62)
        batches = list(stream.read(0, end, 256))
    batch = Batch.concat(batches)
    return batch.images, batch.labels


def calibrate_model(model: nn.Module, heldout: Any, adapter: Any = "tent", *, output: str | Path,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    adapter_options: dict[str, Any] | None = None, probe_every: int = 100, probe_size: int = 1000,
                    probe_cycle: int | None = None, batch_size: int = 64, domains: Sequence[str] = FOLDER_DOMAINS,
                    image_size: int | None = None, settings: Sequence[str] = (), name: str | None = None,
                    work_dir: str | Path | None = None, log: Callable[[str], None] = print, metaset: bool = True,
                    metaset_domains: Sequence[str] = (), metaset_windows: int = 3,
                    metaset_window_images: int = 512) -> Path:
    """Fit a calibration for `model` and `adapter` on labelled held-out data; returns the file written.

    Pass the same model, adapter, normalisation, probe settings and batch size as the `Monitor`
    that will read the file (it checks them). The held-out data must not come from the stream
    you will monitor.

    Three stages, as `stream-monitor calibrate --data FOLDER`: the probe runs (one cycle per domain
    of `domains`: Entropy Enigma's f), the clean domain's labelled statistics (DoC, ATC, the
    Sentinel, the nuclear norm), then the full-range meta-set (`metaset`): windows of the held-out
    images under seven shift families, from the source domain to chance (docs/headline-rule.md),
    read by your frozen model and by your adapter (fresh at each domain). On them the headline
    rules are learned with leave-one-family-out cross-validation: per target (source and online
    accuracy) the estimator that headlines, its 90% split-conformal interval and the support, the
    region of features a window must lie in for the rule to hold (`rules` and `meta_windows` in
    the file). A `Monitor` run with the file shows each headline with its interval and flags
    windows out of support.

    With `adapter="source"` (no adaptation) the file is the frozen model's, as `stream-monitor
    calibrate` makes it: its online rule is the one for adapters without a calibration of their
    own, measured on the served feeds of `norm` and `tent` over your model. Those adapt BatchNorm
    layers, so a model without any is refused (pass `metaset=False`, or calibrate the adapter you run).
    A custom adapter object is taken to adapt: it gets its own online rule, and it is `reset()` to
    the source model at each meta-set domain.

    Args:
        heldout: an image folder path, or a labelled dataset or iterable of batches (as `Monitor.run`).
        domains: the probe runs' domains: "clean" and CORRUPTION:SEVERITY with a held-out corruption
            (speckle_noise, gaussian_blur, spatter, saturate); default: clean plus the four at severities 1-5.
        image_size: the crop size for an image folder (default 224); a dataset keeps its own size.
        output: the calibration file to write (JSON).
        metaset: build the full-range meta-set and learn the headline rules. False: the file has no
            rules, so a run headlines in a fixed order with no interval and no out-of-support flag.
        metaset_domains: the meta-set's domains (`stream_monitor.sources.shifts`, e.g. "clean/whole",
            "heldout:speckle_noise:3/whole", "occlude:3/whole"); empty: those of an image folder
            (`stream_monitor.metaset.FOLDER_DOMAINS`, 25 domains).
        metaset_windows: windows per meta-set domain; a rule ranks an estimator on at least 19 windows.
        metaset_window_images: images per meta-set window (at least the Sentinel's 32, and at most
            the held-out images, so a window holds no image twice within one pass).
        work_dir: where the runs and the meta-set's `metaset.jsonl` go (kept; a stopped meta-set resumes
            there); default: a temporary folder, removed.
        Other arguments: as `Monitor`.

    Raises:
        ValueError, TypeError: a bad argument, before anything runs or is written.

    Example:
        >>> path = calibrate_model(model, heldout_dataset, "tent", mean=MEAN, std=STD, output="cal.json")
        >>> monitor = Monitor(model, "tent", mean=MEAN, std=STD, calibration=path)
    """
    if not domains:
        raise ValueError(f"domains is empty; give 'clean' and CORRUPTION:SEVERITY domains, e.g. {FOLDER_DOMAINS[:3]}.")
    for domain in domains:
        parse_domain(domain)  # a bad domain fails before any run
    options = MetaSetOptions(tuple(metaset_domains), metaset_windows, metaset_window_images, API_NAMES)
    if metaset:
        options.resolved(HELDOUT)
    monitor = Monitor(model, adapter, mean=mean, std=std, normalise=normalise, adapter_options=adapter_options,
                      probe_every=probe_every, probe_size=probe_size, probe_cycle=probe_cycle, batch_size=batch_size,
                      settings=settings, name=name)
    images, labels = load_heldout(heldout, image_size)
    source, bundle = monitor.prepare([(images[:1], labels[:1])], "heldout")
    check_labels(labels, bundle.num_classes)
    config = monitor.config(None, bundle.name)
    if metaset:
        _check_metaset(options, config.adapter.name, bundle, len(images))
    # the source model as given: an adapter object adapts the caller's module in place
    pristine = CopiedModel(bundle)("cpu")
    fisher = clean_images(images, labels, pristine.num_classes, fisher_images(adapter))

    def components(stream: Any) -> Components:
        # every probe run and the clean statistics start at the source model, an adapter object too
        restart(monitor.factory)
        return Components(CopiedModel(pristine), GivenStream(stream), monitor.factory, fisher_images(adapter),
                          driver_stream=True)

    description = AdapterWorker(config, fisher, components=components(None)).describe()
    cycle = cycle_length(config.probe.cycle, description.hyperparameters.get("reset_every"))
    steps = last_probe_step(cycle, config.probe.every)
    if steps == 0:
        raise ValueError(f"probe_every ({config.probe.every}) leaves no snapshot inside a cycle of {cycle} steps")
    if metaset and options.too_few(HELDOUT):
        log(f"note: {options.too_few(HELDOUT)}")
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sm-calibrate-"))
    try:
        points = _probe_points(config, domains, images, labels, bundle.num_classes, cycle, steps, components,
                               scratch, log)
        clean = HeldOutImages(images, labels, "clean", max(len(images), SOURCE_STATISTICS_IMAGES), bundle.num_classes)
        stats, frozen = source_statistics(config, points, SOURCE_STATISTICS_IMAGES, components(clean), clean, fisher)
        provenance = Provenance(model=description.model_name, model_sha256=description.model_sha256,
                                adapter=config.adapter.name, hyperparameters=description.hyperparameters,
                                probe_size=config.probe.size, cycle=cycle)
        calibration = Calibration(**asdict(provenance), probe_every=config.probe.every, domains=list(domains),
                                  points=points, fits=fit_flips(points),
                                  spread_fits=fit_flips(points, "spread_weighted_flips"),
                                  served_stats=asdict(stats), frozen_stats=asdict(frozen),
                                  created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if metaset:
            readers = heldout_readers(config, monitor.factory, pristine, images, labels, fisher)
            calibration = add_full_range(calibration, config, options, scratch, log, readers).calibration
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return calibration.save(Path(output))


def _probe_points(config: RunConfig, domains: Sequence[str], images: np.ndarray, labels: np.ndarray,
                  num_classes: int, cycle: int, steps: int, components: Callable[[Any], Components], scratch: Path,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One probe cycle per domain (`stream_monitor.calibrate.meta_points` of each run)."""
    batch_size = config.source.batch_size
    points: list[dict[str, Any]] = []
    for k, domain in enumerate(domains):
        started = time.perf_counter()
        stream = HeldOutImages(images, labels, domain, steps * batch_size, num_classes)
        cfg = with_overrides(config, runtime={"max_images": steps * batch_size, "use_ray": False},
                             probe={"cycle": cycle, "enabled": True, "flips_every": config.probe.every},
                             evaluator={"frozen_every": 2},
                             dashboard={"enabled": False}, estimation={"calibration": None})
        run_dir = scratch / domain.replace(":", "_")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        outcome = run(cfg, run_dir, log=lambda message: None, components=components(stream))
        if outcome.status != "finished":
            raise RuntimeError(f"calibration run on {domain} {outcome.status}: {outcome.error}")
        mine = meta_points(run_dir, domain, fixed=True)
        points += mine
        last = mine[-1] if mine else {}
        log(f"[{k + 1}/{len(domains)}] {domain:<18} step {steps}: source accuracy "
            f"{last.get('true_source_acc') or 0:.1f}%, weighted flips {last.get('weighted_flips') or 0:.1f} "
            f"({time.perf_counter() - started:.0f} s)")
    return points


def _check_metaset(options: MetaSetOptions, adapter: str, model: UserModel, images: int) -> None:
    """The meta-set's checks that need the held-out data and the model (the options' own come first).

    Raises:
        ValueError: a window larger than the held-out set, or the `source` adapter on a model
            without BatchNorm layers (the frozen file's online rule is measured on norm and tent).
    """
    if options.window_images > images:
        fewer = (f"lower metaset_window_images to {images} or fewer (at least {MIN_IMAGES})" if images >= MIN_IMAGES
                 else f"a window needs at least {MIN_IMAGES} images")
        raise ValueError(f"The held-out data has {images} images and a meta-set window reads metaset_window_images="
                         f"{options.window_images} distinct ones: give at least {options.window_images} held-out "
                         f"images, or {fewer}; or pass metaset=False (no headline rules, no intervals).")
    if not adapts_by_name(adapter) and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                               for m in model.module.modules()):
        raise ValueError(f"adapter={adapter!r} makes the frozen model's file, whose online rule is measured on the "
                         f"served feeds of {' and '.join(UNCALIBRATED_ADAPTERS)} over your model; they adapt "
                         f"BatchNorm layers and {model.name} has none. Pass metaset=False (the file then has no "
                         f"headline rules: no intervals, no out-of-support flags), or calibrate the adapter you run.")


def clean_images(images: np.ndarray, labels: np.ndarray, num_classes: int, count: int) -> np.ndarray | None:
    """The clean held-out domain's first `count` images (None for 0): the in-distribution images an
    EATA-style adapter computes its Fisher information on (Niu et al., ICML 2022), as
    `stream_monitor.fisher.clean_fisher_images` gives them to `stream-monitor calibrate`."""
    if not count:
        return None
    return HeldOutImages(images, labels, "clean", count, num_classes).render(0, count).images


def heldout_readers(config: RunConfig, factory: Callable[[Any, Any], Any], model: UserModel, images: np.ndarray,
                    labels: np.ndarray, fisher: np.ndarray | None) -> MetaSetReaders:
    """The full-range meta-set's readers for a user's model, adapter and held-out images.

    Every domain shifts the held-out set read in passes (`LabelledImages`) from its own offset
    (`metaset.domain_offset`), as `stream-monitor calibrate --data` shifts an image folder; the
    frozen feed is `model`; the served adapter is the caller's (`factory`, built as `Monitor`
    builds it) or, for the frozen model's file, a registered one by name (`UNCALIBRATED_ADAPTERS`).
    """
    own = config.adapter.name
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]

    def adapter(name: str) -> AdapterWorker:
        mine = name == own
        if mine:
            restart(factory)  # an adapter object is one object: back to the source model at each domain
        parts = Components(CopiedModel(model), GivenStream(None), factory if mine else adapter_factory(name, {}))
        return AdapterWorker(with_overrides(config, adapter={"name": name}), fisher if mine else None,
                             components=parts)

    def domain(text: str, length: int) -> StreamSource:
        offset = domain_offset(text, len(images))
        base = LabelledImages(images, labels, offset + length, model.num_classes)
        return ShiftedSource(base, text, length, profile=size_profile(base.image_size), offset=offset)

    return MetaSetReaders(model, adapter, domain, f"{HELDOUT} ({len(images)} images, sha256 {digest})")
