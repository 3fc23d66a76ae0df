"""`stream-monitor calibrate`: run the meta-set and fit a calibration for a model, adapter and cadence.

Entropy Enigma (Press et al., ICML 2024, section 4.2) fits f on ImageNet validation plus CCC's
held-out corruptions, with the model adapted by RDumb for 1,000 iterations and 1,000 probe
images. This runs the same protocol, with the run's own loop, probe and adapter, on a meta-set
that never contains the stream's 15 corruptions: by default held-out CCC streams (the stream
protocol walked over speckle noise, gaussian blur, spatter and saturate, `sources.ccc` pool
"heldout"), or Entropy Enigma's fixed domains (`sources.heldout`), on the embedded glyphs or on
a user's image folder (`--data DIR`, e.g. ImageNet validation for ResNet-50: the paper's own
meta-set, clean plus the four held-out corruptions at severities 1-5). Every probe window gives one
point: the weighted flips at a snapshot step and the frozen source model's accuracy on the
window's images (labels of the meta-set, used only here). Per snapshot step a quadratic f is
fitted (the paper's form), so any cadence of the cycle has its own f.

With a meta-set (`calibrate_metaset.MetaSetOptions`) the file then gets the full-range meta-set
and the learned headline rules (`calibrate_metaset.add_full_range`, docs/headline-rule.md).

The calibration file records its provenance (model checksum, adapter and hyperparameters, probe
size, cadence, domains); a run refuses a calibration made for another model or adapter.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from stream_monitor.sources.base import StreamSource
from stream_monitor.sources.factory import open_source
from stream_monitor.sources.heldout import FOLDER_DOMAINS
from stream_monitor.sources.imagefolder import index_image_folder

from .calibration.fit import fit_flips, nuclear_line, sentinel_set
from .calibration.format import Calibration, Provenance
from .config import RunConfig
from .estimation.duo import fit_duo_temperatures
from .estimation.readings import Feed
from .estimation.window import fit_feed_stats
from .fisher import clean_fisher_images
from .models import load_model
from .runtime.components import Components
from .runtime.messages import split_batches
from .runtime.runner import run, with_overrides
from .runtime.workers import AdapterWorker, SidekickWorker
from .rundir import RunDirectory
from .schedule import cycle_length, last_probe_step

if TYPE_CHECKING:
    from .calibrate_metaset import MetaSetOptions

#: The meta-set: held-out corruptions at severities that span the embedded model's accuracy
#: (speckle noise and gaussian blur fall from ~97% to ~13%; spatter and saturate stay high).
DEFAULT_DOMAINS = (
    "clean", "speckle_noise:1.5", "speckle_noise:3", "speckle_noise:4", "speckle_noise:5",
    "gaussian_blur:1.5", "gaussian_blur:3", "gaussian_blur:4", "gaussian_blur:5",
    "spatter:3", "spatter:5", "saturate:3", "saturate:5",
)


def default_streams(speed: int = 1000) -> tuple[str, ...]:
    """The default stream meta-set: held-out CCC streams at every baseline, two seeds each."""
    return tuple(f"baseline_{b}_transition+speed_{speed}_seed_{seed}" for b in (40, 20, 0) for seed in (1, 2))


@dataclass(frozen=True)
class MetaRun:
    """One run of the meta-set: a fixed domain (one cycle) or a held-out CCC stream (`cycles` cycles)."""

    label: str
    kind: str       # the source kind: heldout (a fixed domain) or heldout-ccc (a stream)
    stream: str
    cycles: int = 1


def meta_runs(domains: tuple[str, ...] = (), streams: tuple[str, ...] = (), cycles: int = 2) -> list[MetaRun]:
    return ([MetaRun(d, "heldout", d) for d in domains]
            + [MetaRun(f"heldout-ccc/{s}", "heldout-ccc", s, cycles) for s in streams])


def calibrate(config: RunConfig, domains: tuple[str, ...] = (), work_dir: Path | None = None,
              log: Callable[[str], None] = print, streams: tuple[str, ...] | None = None,
              cycles: int = 2, clean_images: int = 2048, metaset: MetaSetOptions | None = None) -> Calibration:
    """Run the probe protocol on the meta-set and fit f per snapshot step (`cycles` 0: only the
    labelled statistics of the clean domain, in seconds; f and the nuclear-norm lines stay empty,
    and `stream-monitor eval --calibration` can add them to a run made with it). `clean_images`: how
    many clean images the labelled statistics (and the risk test's clean error and precision) read.
    `metaset`: then the full-range meta-set and the headline rules (`calibrate_metaset`; not with
    `cycles` 0); None: the file has no rules (a run headlines in the fixed order, without intervals).

    Two kinds of meta-set members, freely mixed:
    - held-out CCC streams (the default): the stream protocol itself, walked over the four held-out
      corruptions, for `cycles` probe cycles each; every probe window is one point. A run's windows
      drift through corruptions while its reference set comes from the cycle's first images, and
      an adapter that does not reset starts later cycles adapted: a fit on streams sees both;
    - fixed domains (Entropy Enigma's meta-set): one cycle on one corruption and severity.
    """
    folder = config.source.data
    if folder is not None:
        if streams:
            raise ValueError("Held-out CCC streams are rendered from the embedded base; with an image folder "
                             "(--data) the meta-set is fixed domains (--domains, default clean plus the four "
                             "held-out corruptions at severities 1-5).")
        streams, domains = (), domains or FOLDER_DOMAINS
    if streams is None:
        streams = () if domains else default_streams()
    members = meta_runs(domains, streams, cycles) if cycles else []
    if not members and cycles:
        raise ValueError("calibrate needs a meta-set: held-out streams (--streams) or fixed domains (--domains).")
    worker = AdapterWorker(config, clean_fisher_images(config))
    description = worker.describe()
    if folder is not None:
        _check_folder(folder, worker.bundle.num_classes, config.model.name)
    cycle = cycle_length(config.probe.cycle, description.hyperparameters.get("reset_every"))
    steps = last_probe_step(cycle, config.probe.every)  # up to the cycle's last snapshot (the paper's 990 of 1,000)
    if steps == 0:
        raise ValueError(f"probe.every ({config.probe.every}) leaves no snapshot inside a cycle of {cycle} steps")
    if metaset is not None and cycles:
        metaset.resolved(folder)  # every meta-set option valid before anything runs
        if metaset.too_few(folder):
            log(f"note: {metaset.too_few(folder)}")
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sm-calibrate-"))
    try:
        return _calibrate(config, members, description, cycle, steps, scratch, log, clean_images,
                          metaset if cycles else None)
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _calibrate(config: RunConfig, members: list[MetaRun], description, cycle: int, steps: int, scratch: Path,
               log: Callable[[str], None], clean_images: int, metaset: MetaSetOptions | None) -> Calibration:
    """The probe runs, the clean statistics, and (`metaset`) the full-range meta-set, in `scratch`."""
    points: list[dict[str, Any]] = []
    for k, member in enumerate(members):
        started = time.perf_counter()
        cfg = with_overrides(
            config, source={"kind": member.kind, "stream": member.stream},
            runtime={"max_images": ((member.cycles - 1) * cycle + steps) * config.source.batch_size, "start": 0,
                     "use_ray": False},
            probe={"cycle": cycle, "enabled": True, "flips_every": config.probe.every},
            evaluator={"frozen_every": 2},
            dashboard={"enabled": False}, estimation={"calibration": None},
        )
        run_dir = scratch / member.label.replace(":", "_").replace("/", "_")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        outcome = run(cfg, run_dir, log=lambda message: None)
        if outcome.status != "finished":
            raise RuntimeError(f"calibration run on {member.label} {outcome.status}: {outcome.error}")
        mine = meta_points(run_dir, member.label, fixed=member.kind == "heldout")
        points += mine
        last = [p for p in mine if p["cycle_step"] == steps]
        shown = ", ".join(f"acc {p['true_source_acc'] or 0:.1f}% WF {p['weighted_flips']:.1f} "
                          f"spread {p['spread_weighted_flips'] or 0:.1f}" for p in last)
        log(f"[{k + 1}/{len(members)}] {member.label:<18} at step {steps}: {shown}  "
            f"({time.perf_counter() - started:.0f} s)")
    stats, frozen = source_statistics(config, points, clean_images)
    for who, st in (("served adapter", stats), ("frozen model", frozen)):
        sentinel = st.sentinel or {}
        maes = ", ".join(f"{k} {v:.2f}" for k, v in (sentinel.get("cv_maes") or {}).items()) or "none"
        log(f"{who} on the clean domain: T {st.temperature:.2f}, Acc_S {st.accuracy:.1f}%, "
            f"AC_S {st.mean_confidence:.1f}%, nuclear-norm line {st.nuclear_fit}; Sentinel on "
            f"{len(sentinel.get('accuracy', []))} windows: {sentinel.get('regressor')} (forest "
            f"{sentinel.get('params')}); held-out-run MAE {maes}")
    provenance = Provenance(model=description.model_name, model_sha256=description.model_sha256,
                            adapter=config.adapter.name, hyperparameters=description.hyperparameters,
                            probe_size=config.probe.size, cycle=cycle)
    calibration = Calibration(
        **asdict(provenance), probe_every=config.probe.every, domains=[m.label for m in members], points=points,
        fits=fit_flips(points), spread_fits=fit_flips(points, "spread_weighted_flips"),
        served_stats=_as_json(asdict(stats)), frozen_stats=_as_json(asdict(frozen)),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if metaset is None:
        return calibration
    from .calibrate_metaset import add_full_range

    return add_full_range(calibration, config, metaset, scratch, log).calibration


def meta_points(run_dir: Path, label: str, fixed: bool) -> list[dict[str, Any]]:
    """The meta-set points of one calibration run: one per probe window, the flips and the estimators'
    raw scores beside the labelled truth; `fixed`: a fixed domain (one label), else a stream (one per cycle)."""
    recorded = RunDirectory(run_dir).rows("estimates")
    # the meta-set's points keep the nuclear norm's raw score x100 (calibration.fit.nuclear_line)
    scores = {(r["step"], r["feed"]): 100.0 * r["score"] for r in recorded
              if r["estimator"] == "nuclear-norm" and r["score"] is not None}
    features = {(r["step"], r["feed"]): r["features"] for r in recorded if r["estimator"] == "sentinel"}
    return [{"domain": label if fixed else f"{label}#cycle{row['cycle']}",
             "cycle_step": row["cycle_step"], "flips": row["flips"], "weighted_flips": row["weighted_flips"],
             "spread_flips": row["spread_flips"], "spread_weighted_flips": row["spread_weighted_flips"],
             "true_source_acc": row["true_source_acc"], "true_online_acc": row["true_online_acc"],
             "est_online_acc": row["est_online_acc"], "nuclear_norm_score": scores.get((row["step"], Feed.SERVED)),
             "frozen_nuclear_score": scores.get((row["step"], Feed.FROZEN)),
             "sentinel_features": features.get((row["step"], Feed.SERVED)),
             "frozen_sentinel_features": features.get((row["step"], Feed.FROZEN))}
            for row in RunDirectory(run_dir).rows("probes")]


def _as_json(stats: dict[str, Any]) -> dict[str, Any]:
    """The statistics as the file holds them (tuples as lists), so a calibration compares equal to
    itself saved and loaded again."""
    return json.loads(json.dumps(stats))


def _check_folder(root: str, num_classes: int, model: str) -> None:
    """An image folder meta-set must hold the model's classes (one sub-folder each, sorted as the
    model's class indices)."""
    classes, _ = index_image_folder(root)
    if len(classes) != num_classes:
        raise ValueError(f"The image folder {root} has {len(classes)} class folders and the model {model} predicts "
                         f"{num_classes} classes; the meta-set needs one sub-folder per class of the model, sorted "
                         f"as its class indices (e.g. ImageNet validation in its 1,000 wnid folders).")


def source_statistics(config: RunConfig, points: list[dict[str, Any]], images: int = 2048,
                      components: Components | None = None, clean: StreamSource | None = None,
                      fisher: np.ndarray | None = None):
    """DoC/ATC's labelled source statistics, for both feeds, on the clean domain's first `images`
    images: the served outputs of a fresh adapter (as a run's first steps serve them) and the
    frozen model's outputs (eval-mode BatchNorm, as the evaluator scores the stream); with each
    feed's nuclear-norm line and Sentinel training set over the meta-set's windows.

    `components`, `clean` and `fisher` (the Python API's `calibrate_model`): the model and adapter,
    the clean labelled stream and the adapter's Fisher images, in place of those the config names."""

    worker = AdapterWorker(config, fisher if components else clean_fisher_images(config), components=components)
    # not the adapter's model (it adapts in place)
    model = components.model("cpu") if components else load_model(config.model.name, config.model.weights, "cpu")
    sidekick = SidekickWorker(config) if config.estimation.duo_model else None
    source = clean or open_source("heldout", "clean", config.source.data, model)  # the glyphs, or the image folder
    served, frozen, side, labels = [], [], [], []
    images = min(images, source.length) if source.length is not None else images
    batches = list(source.read(0, images, config.source.batch_size))
    for batch, truth in split_batches(batches, 0, images, config.source.batch_size):
        served.append(worker.step(batch).probabilities)
        frozen.append(model.probabilities(torch.from_numpy(batch.images)))
        if sidekick is not None:
            side.append(sidekick.predict(batch))
        labels.append(truth.labels)
    labels = np.concatenate(labels)
    served = np.concatenate(served)
    duo = None
    if sidekick is not None:
        temperatures = fit_duo_temperatures(np.log(np.clip(served, 1e-12, None)), np.concatenate(side), labels)
        duo = {"model": config.estimation.duo_model, "sidekick": sidekick.describe().sidekick,
               "temperatures": list(temperatures)}
    sidekick_name = config.estimation.duo_model
    return (replace(fit_feed_stats(served, labels), nuclear_fit=nuclear_line(points),
                    sentinel=sentinel_set(points, sidekick=sidekick_name), duo=duo),
            replace(fit_feed_stats(np.concatenate(frozen), labels), nuclear_fit=nuclear_line(points, frozen=True),
                    sentinel=sentinel_set(points, frozen=True, sidekick=sidekick_name)))


