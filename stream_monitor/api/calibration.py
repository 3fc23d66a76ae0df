"""Calibrate the estimators for your model and adapter on your own labelled held-out data.

Entropy Enigma (Press et al., ICML 2024, section 4.2) fits its flips-to-accuracy function on a
labelled meta-set: the held-out data, clean and under corruptions the monitored stream never
uses (speckle noise, gaussian blur, spatter, saturate at severities 1-5), each run through the
probe protocol with the model adapting. `calibrate_model` does that with `Monitor`'s model and
adapter: one probe cycle per domain, the same points and fits as `stream-monitor calibrate`
(`stream_monitor.calibrate.meta_points`, `source_statistics`, `calibration.fit`), saved as a
calibration file that `Monitor(..., calibration=PATH)` reads, and that refuses any other weights,
adapter, hyperparameters, probe size or cycle.
"""

from __future__ import annotations

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
from stream_monitor.sources.base import Batch, RenderedSource
from stream_monitor.sources.corruptions import get_corruption
from stream_monitor.sources.heldout import FOLDER_DOMAINS, parse_domain
from stream_monitor.sources.seeding import mix_seed

from ..calibrate import meta_points, source_statistics
from ..calibration.fit import fit_flips
from ..calibration.format import Calibration, Provenance
from ..runtime.components import Components, CopiedModel, GivenStream
from ..runtime.runner import run, with_overrides
from ..runtime.workers import AdapterWorker
from ..schedule import cycle_length, last_probe_step
from .images import BatchFormatError, check_labels
from .adapters import fisher_images
from .monitor import Monitor
from .streams import as_stream

__all__ = ["HeldOutImages", "calibrate_model"]

#: Images of the clean domain that DoC/ATC's source statistics are measured on (as `stream-monitor calibrate`).
SOURCE_STATISTICS_IMAGES = 2048


class HeldOutImages(RenderedSource):
    """Implements `stream_monitor.sources.base.StreamSource`: labelled held-out images under one held-out corruption.

    Image i is held-out image `order[i % n]` (a seeded permutation, fresh on every pass, so every
    window holds the whole set's class balance), corrupted on a generator seeded by the domain and
    i, then stored as JPEG at quality 85 as CCC's shards are (`stream_monitor.sources.heldout`, the same steps).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, domain: str, length: int, num_classes: int,
                 seed: int = 0) -> None:
        self.corruption, self.severity = parse_domain(domain)
        self.images, self.labels, self.domain = images, labels, domain
        self.num_classes, self.image_size = num_classes, int(images.shape[-1])
        # ImageNet-C's constants are made for 224 px images; small images take the embedded base's
        self.profile = "embedded" if self.image_size <= 64 else "imagenet"
        self._length, self._seed = length, mix_seed(seed, len(domain), *domain.encode())
        self.name = f"heldout/{domain}"
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
        x = torch.from_numpy(self.images[picks]).float() / 255.0
        if self.severity > 0:
            corrupt = get_corruption(self.corruption)
            x = torch.cat([corrupt(x[k:k + 1], self.severity, torch.Generator().manual_seed(mix_seed(self._seed, i)),
                                   self.profile) for k, i in enumerate(range(start, stop))])
        n = stop - start
        return Batch(np.arange(start, stop, dtype=np.int64), jpeg_roundtrip(x)[0].numpy(), self.labels[picks],
                     np.full(n, self.corruption), np.full(n, self.severity, np.float32), np.full(n, ""),
                     np.zeros(n, np.float32))


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
                    work_dir: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Fit a calibration for `model` and `adapter` on labelled held-out data; returns the file written.

    Pass the same model, adapter, normalisation, probe settings and batch size as the `Monitor`
    that will read the file (it checks them). The held-out data must not come from the stream
    you will monitor.

    Args:
        heldout: an image folder path, or a labelled dataset or iterable of batches (as `Monitor.run`).
        domains: "clean" and CORRUPTION:SEVERITY with a held-out corruption (speckle_noise,
            gaussian_blur, spatter, saturate); default: clean plus the four at severities 1-5.
        image_size: the crop size for an image folder (default 224); a dataset keeps its own size.
        output: the calibration file to write (JSON).
        Other arguments: as `Monitor`.

    Example:
        >>> path = calibrate_model(model, heldout_dataset, "tent", mean=MEAN, std=STD, output="cal.json")
        >>> monitor = Monitor(model, "tent", mean=MEAN, std=STD, calibration=path)
    """
    if not domains:
        raise ValueError(f"domains is empty; give 'clean' and CORRUPTION:SEVERITY domains, e.g. {FOLDER_DOMAINS[:3]}.")
    for domain in domains:
        parse_domain(domain)  # a bad domain fails before any run
    monitor = Monitor(model, adapter, mean=mean, std=std, normalise=normalise, adapter_options=adapter_options,
                      probe_every=probe_every, probe_size=probe_size, probe_cycle=probe_cycle, batch_size=batch_size,
                      settings=settings, name=name)
    images, labels = load_heldout(heldout, image_size)
    source, bundle = monitor.prepare([(images[:1], labels[:1])], "heldout")
    check_labels(labels, bundle.num_classes)
    config = monitor.config(None, bundle.name)

    def components(stream: Any) -> Components:
        return Components(CopiedModel(bundle), GivenStream(stream), monitor.factory, fisher_images(adapter),
                          driver_stream=True)

    description = AdapterWorker(config, components=components(None)).describe()
    cycle = cycle_length(config.probe.cycle, description.hyperparameters.get("reset_every"))
    steps = last_probe_step(cycle, config.probe.every)
    if steps == 0:
        raise ValueError(f"probe_every ({config.probe.every}) leaves no snapshot inside a cycle of {cycle} steps")
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sm-calibrate-"))
    points: list[dict[str, Any]] = []
    for k, domain in enumerate(domains):
        started = time.perf_counter()
        stream = HeldOutImages(images, labels, domain, steps * batch_size, bundle.num_classes)
        cfg = with_overrides(config, runtime={"max_images": steps * batch_size, "use_ray": False},
                             probe={"cycle": cycle, "enabled": True}, evaluator={"frozen_every": 2},
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
    if work_dir is None:
        shutil.rmtree(scratch, ignore_errors=True)
    clean = HeldOutImages(images, labels, "clean", max(len(images), SOURCE_STATISTICS_IMAGES), bundle.num_classes)
    stats, frozen = source_statistics(config, points, SOURCE_STATISTICS_IMAGES, components(clean), clean)
    provenance = Provenance(model=description.model_name, model_sha256=description.model_sha256,
                            adapter=config.adapter.name, hyperparameters=description.hyperparameters,
                            probe_size=config.probe.size, cycle=cycle)
    calibration = Calibration(**asdict(provenance), probe_every=config.probe.every, domains=list(domains),
                              points=points, fits=fit_flips(points),
                              spread_fits=fit_flips(points, "spread_weighted_flips"),
                              served_stats=asdict(stats), frozen_stats=asdict(frozen),
                              created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return calibration.save(Path(output))
