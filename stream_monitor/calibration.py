"""`stream-monitor calibrate`: fit the flips-to-accuracy function f for a model, adapter and cadence.

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

The calibration file records its provenance (model checksum, adapter and hyperparameters, probe
size, cadence, domains); a run refuses a calibration made for another model or adapter.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sources.heldout import FOLDER_DOMAINS

from .config import RunConfig
from .estimation.flips import FlipsCalibration

FORMAT = 1
#: The meta-set: held-out corruptions at severities that span the embedded model's accuracy
#: (speckle noise and gaussian blur fall from ~97% to ~13%; spatter and saturate stay high).
DEFAULT_DOMAINS = (
    "clean", "speckle_noise:1.5", "speckle_noise:3", "speckle_noise:4", "speckle_noise:5",
    "gaussian_blur:1.5", "gaussian_blur:3", "gaussian_blur:4", "gaussian_blur:5",
    "spatter:3", "spatter:5", "saturate:3", "saturate:5",
)
#: What must match between a calibration and a run for f to mean anything.
PROVENANCE_KEYS = ("model", "model_sha256", "adapter", "hyperparameters", "probe_size", "cycle")
#: What the frozen model's feed needs to match: its estimators never see the adapter.
FROZEN_PROVENANCE_KEYS = ("model", "model_sha256")


class CalibrationMismatch(ValueError):
    """A calibration was made for another model, adapter, probe or cadence than the run's."""


@dataclass
class Calibration:
    model: str
    model_sha256: str
    adapter: str
    hyperparameters: dict[str, Any]
    probe_size: int
    probe_every: int
    cycle: int
    domains: list[str]
    points: list[dict[str, Any]] = field(default_factory=list)  # one per (domain, cycle_step)
    fits: dict[int, dict[str, Any]] = field(default_factory=dict)  # cycle_step -> coefficients, range, residual
    source_stats: dict[str, Any] | None = None  # estimation.window.SourceStats: T, Acc_S, AC_S, ATC, NN line
    created: str = ""
    format: int = FORMAT
    frozen_stats: dict[str, Any] | None = None  # the same for the frozen model (the source-target estimators)
    spread_fits: dict[int, dict[str, Any]] = field(default_factory=dict)  # f of the spread reference set's flips

    def flips_calibrations(self, spread: bool = False) -> dict[int, FlipsCalibration]:
        """cycle_step -> f, for the run loop: of the first-images reference set, or (`spread`) of
        the spread one."""
        return {int(step): FlipsCalibration(
            model=self.model, coefficients=tuple(fit["coefficients"]), fitted_range=tuple(fit["range"]),
            cycle_step=int(step), probe_size=self.probe_size, adapter=self.adapter,
            origin=f"stream-monitor calibrate, {len(self.domains)} meta-set runs",
        ) for step, fit in (self.spread_fits if spread else self.fits).items()}

    def window_stats(self, frozen: bool = False):
        """SourceStats of the served adapter at its source state, or (`frozen`) of the frozen model."""
        from .estimation.window import stats_from_dict

        return stats_from_dict(self.frozen_stats if frozen else self.source_stats)

    def check(self, provenance: dict[str, Any]) -> None:
        """Raise CalibrationMismatch, naming every difference, unless `provenance` matches."""
        mine = asdict(self)
        wrong = [f"{key}: calibration has {mine[key]!r}, the run has {provenance[key]!r}"
                 for key in PROVENANCE_KEYS if key in provenance and not _same(key, mine[key], provenance[key])]
        if wrong:
            raise CalibrationMismatch(
                "This calibration was made for another setting, so its f would not mean anything here: "
                + "; ".join(wrong) + ". Run `stream-monitor calibrate` with the run's model, adapter and probe "
                "settings, or drop --set estimation.calibration.")

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["fits"] = {str(k): v for k, v in self.fits.items()}
        data["spread_fits"] = {str(k): v for k, v in self.spread_fits.items()}
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Calibration file {path} not found; `stream-monitor calibrate --out {path}` "
                                    f"makes one.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"Calibration file {path} is not valid JSON ({error}).") from None
        if data.get("format") != FORMAT:
            raise ValueError(f"Calibration file {path} has format {data.get('format')}; this version reads {FORMAT}.")
        data["fits"] = {int(k): v for k, v in data["fits"].items()}
        data["spread_fits"] = {int(k): v for k, v in data.get("spread_fits", {}).items()}
        return cls(**data)


def merge(calibrations: list[Calibration]) -> Calibration:
    """One calibration from several made on disjoint domains with the same provenance (e.g. in
    parallel processes): the points together, f and the nuclear-norm line fitted again."""
    from dataclasses import replace

    first = calibrations[0]
    provenance = {k: getattr(first, k) for k in PROVENANCE_KEYS}
    for other in calibrations[1:]:
        other.check(provenance)
    points = [p for c in calibrations for p in c.points]
    # agreement columns of two sidekicks don't mix; a file whose windows have no Sentinel features
    # (made before them) adds no window to the Sentinel, so it has no say in its sidekick
    sidekicks = {((c.source_stats or {}).get("duo") or {}).get("model") for c in calibrations
                 if any(p.get("sentinel_features") or p.get("frozen_sentinel_features") for p in c.points)}
    sidekick = sidekicks.pop() if len(sidekicks) == 1 else None
    stats = first.source_stats and {**first.source_stats, "nuclear_fit": _nuclear_line(points),
                                     "sentinel": _sentinel_set(points, sidekick=sidekick)}
    frozen = first.frozen_stats and {**first.frozen_stats, "nuclear_fit": _nuclear_line(points, frozen=True),
                                     "sentinel": _sentinel_set(points, frozen=True, sidekick=sidekick)}
    return replace(first, domains=[d for c in calibrations for d in c.domains], points=points,
                   fits=fit_flips(points), spread_fits=fit_flips(points, "spread_weighted_flips"),
                   source_stats=stats, frozen_stats=frozen)


def _nuclear_line(points: list[dict[str, Any]], frozen: bool = False) -> tuple[float, float] | None:
    """Accuracy = slope * NN + intercept over the meta-set's windows (Deng et al.'s regression):
    the served outputs' score against the online accuracy, or (`frozen`) the frozen model's
    score against the source accuracy."""
    score, truth = ("frozen_nuclear_score", "true_source_acc") if frozen else ("nuclear_norm_score", "true_online_acc")
    pairs = [(p[score], p[truth]) for p in points if p.get(score) is not None and p.get(truth) is not None]
    if len(pairs) < 3:
        return None
    x, y = np.array(pairs).T
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x / 100.0, y, 1)
    return float(slope), float(intercept)


def _sentinel_set(points: list[dict[str, Any]], frozen: bool = False,
                  sidekick: str | None = None) -> dict[str, Any] | None:
    """The Sentinel forest's training set over the meta-set's windows: the served outputs' features
    against the online accuracy, or (`frozen`) the frozen model's against the source accuracy. The
    cross-validation folds hold out whole meta-set runs (a domain, or a stream with all its cycles).
    Without one `sidekick` for all points, the windows' Duos agreement column is left out."""
    from .estimation.sentinel import FEATURES, MARGINAL_FEATURES, fit_sentinel

    features, truth = ("frozen_sentinel_features", "true_source_acc") if frozen else ("sentinel_features", "true_online_acc")
    rows = [(p[features], p[truth], p["domain"].split("#")[0]) for p in points
            if p.get(features) is not None and p.get(truth) is not None]
    if len(rows) < 4:
        return None
    x, y, groups = zip(*rows)
    if sidekick is None:
        x = [f[:len(FEATURES + MARGINAL_FEATURES)] for f in x]
    return fit_sentinel(x, y, groups, sidekick=sidekick)


def run_provenance(describe: dict[str, Any], config: RunConfig, cycle: int) -> dict[str, Any]:
    """The provenance of a run (or a calibration), from the adapter worker's description."""
    return {"model": describe["model_name"], "model_sha256": describe["model_sha256"], "adapter": config.adapter.name,
            "hyperparameters": describe["hyperparameters"], "probe_size": config.probe.size, "cycle": cycle}


def run_provenance_of_dir(run_dir: Path) -> dict[str, Any]:
    """A finished run's provenance from its run.json and config.yaml (the model by name only:
    run.json keeps a 12-digit checksum prefix, checked here)."""
    from .config import load_config
    from .schedule import cycle_length

    info_path = Path(run_dir) / "run.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{run_dir} has no run.json, so its model and adapter are unknown; "
                                f"pass a run directory written by `stream-monitor run`.")
    info = json.loads(info_path.read_text())
    config = load_config(Path(run_dir) / "config.yaml", [])
    name, _, digest = str(info["model"]).partition(" ")
    cycle = cycle_length(config.probe.cycle, info["hyperparameters"].get("reset_every"))
    return {"model": name, "model_sha256": digest, "adapter": info["adapter"],
            "hyperparameters": info["hyperparameters"], "probe_size": info["probe_size"], "cycle": cycle}


def fit_flips(points: list[dict[str, Any]], key: str = "weighted_flips", min_domains: int = 4) -> dict[int, dict[str, Any]]:
    """Per snapshot step, the least-squares quadratic acc = a WF^2 + b WF + c over the meta-set's
    windows (a line when fewer than `min_domains` + 1 windows, a quadratic needs spread); `key`:
    the weighted flips of the first-images or (spread_weighted_flips) of the spread reference set."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for p in points:
        if p["true_source_acc"] is not None and p.get(key) is not None:
            by_step.setdefault(int(p["cycle_step"]), []).append((p[key], p["true_source_acc"]))
    fits = {}
    for step, pairs in sorted(by_step.items()):
        if len(pairs) < min_domains:
            continue
        wf, acc = np.array(pairs).T
        degree = 2 if len(pairs) > min_domains and np.ptp(wf) > 0 else 1
        coefficients = np.polyfit(wf, acc, degree) if np.ptp(wf) > 0 else np.array([0.0, float(acc.mean())])
        coefficients = np.concatenate([np.zeros(3 - len(coefficients)), coefficients])
        residual = acc - np.polyval(coefficients, wf)
        fits[step] = {"coefficients": [float(c) for c in coefficients], "range": [float(wf.min()), float(wf.max())],
                      "rmse": float(np.sqrt(np.mean(residual ** 2))), "domains": len(pairs)}
    return fits


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
              cycles: int = 2) -> Calibration:
    """Run the probe protocol on the meta-set and fit f per snapshot step (`cycles` 0: only the
    labelled statistics of the clean domain, in seconds; f and the nuclear-norm lines stay empty,
    and `stream-monitor eval --calibration` can add them to a run made with it).

    Two kinds of meta-set members, freely mixed:
    - held-out CCC streams (the default): the stream protocol itself, walked over the four held-out
      corruptions, for `cycles` probe cycles each; every probe window is one point. A run's windows
      drift through corruptions while its reference set comes from the cycle's first images, and
      an adapter that does not reset starts later cycles adapted: a fit on streams sees both;
    - fixed domains (Entropy Enigma's meta-set): one cycle on one corruption and severity.
    """
    from .metrics.sink import read_table
    from .schedule import cycle_length, last_probe_step
    from .runtime.runner import run, with_overrides
    from .runtime.workers import AdapterWorker

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
    worker = AdapterWorker(config)
    describe = worker.describe()
    if folder is not None:
        _check_folder(folder, worker.bundle.num_classes, config.model.name)
    cycle = cycle_length(config.probe.cycle, describe["hyperparameters"].get("reset_every"))
    steps = last_probe_step(cycle, config.probe.every)  # up to the cycle's last snapshot (the paper's 990 of 1,000)
    if steps == 0:
        raise ValueError(f"probe.every ({config.probe.every}) leaves no snapshot inside a cycle of {cycle} steps")
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sm-calibrate-"))
    points: list[dict[str, Any]] = []
    for k, member in enumerate(members):
        started = time.perf_counter()
        cfg = with_overrides(
            config, source={"kind": member.kind, "stream": member.stream},
            runtime={"max_images": ((member.cycles - 1) * cycle + steps) * config.source.batch_size, "start": 0,
                     "use_ray": False},
            probe={"cycle": cycle, "enabled": True}, evaluator={"source_every": 2},
            dashboard={"enabled": False}, estimation={"calibration": None},
        )
        run_dir = scratch / member.label.replace(":", "_").replace("/", "_")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        outcome = run(cfg, run_dir, log=lambda message: None)
        if outcome.status != "finished":
            raise RuntimeError(f"calibration run on {member.label} {outcome.status}: {outcome.error}")
        recorded = read_table(run_dir, "estimates").to_pylist()
        scores = {(r["step"], r["target"]): r["value"] for r in recorded if r["estimator"] == "nuclear-norm-score"}
        features = {(r["step"], r["target"]): r["features"] for r in recorded if r["estimator"] == "sentinel"}
        mine = [{"domain": member.label if member.kind == "heldout" else f"{member.label}#cycle{row['cycle']}",
                 "cycle_step": row["cycle_step"], "flips": row["flips"], "weighted_flips": row["weighted_flips"],
                 "spread_flips": row["spread_flips"], "spread_weighted_flips": row["spread_weighted_flips"],
                 "true_source_acc": row["true_source_acc"], "true_online_acc": row["true_online_acc"],
                 "est_online_acc": row["est_online_acc"], "nuclear_norm_score": scores.get((row["step"], "score")),
                 "frozen_nuclear_score": scores.get((row["step"], "source-score")),
                 "sentinel_features": features.get((row["step"], "online")),
                 "frozen_sentinel_features": features.get((row["step"], "source"))}
                for row in read_table(run_dir, "probes").to_pylist()]
        points += mine
        last = [p for p in mine if p["cycle_step"] == steps]
        shown = ", ".join(f"acc {p['true_source_acc'] or 0:.1f}% WF {p['weighted_flips']:.1f} "
                          f"spread {p['spread_weighted_flips'] or 0:.1f}" for p in last)
        log(f"[{k + 1}/{len(members)}] {member.label:<18} at step {steps}: {shown}  "
            f"({time.perf_counter() - started:.0f} s)")
    if work_dir is None:
        shutil.rmtree(scratch, ignore_errors=True)
    stats, frozen = source_statistics(config, points)
    for who, st in (("served adapter", stats), ("frozen model", frozen)):
        sentinel = st.sentinel or {}
        maes = ", ".join(f"{k} {v:.2f}" for k, v in (sentinel.get("cv_maes") or {}).items()) or "none"
        log(f"{who} on the clean domain: T {st.temperature:.2f}, Acc_S {st.accuracy:.1f}%, "
            f"AC_S {st.mean_confidence:.1f}%, nuclear-norm line {st.nuclear_fit}; Sentinel on "
            f"{len(sentinel.get('accuracy', []))} windows: {sentinel.get('regressor')} (forest "
            f"{sentinel.get('params')}); held-out-run MAE {maes}")
    provenance = run_provenance(describe, config, cycle)
    return Calibration(**provenance, probe_every=config.probe.every, domains=[m.label for m in members],
                       points=points, fits=fit_flips(points), spread_fits=fit_flips(points, "spread_weighted_flips"),
                       source_stats=asdict(stats), frozen_stats=asdict(frozen),
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _check_folder(root: str, num_classes: int, model: str) -> None:
    """An image folder meta-set must hold the model's classes (one sub-folder each, sorted as the
    model's class indices)."""
    from sources.imagefolder import index_image_folder

    classes, _ = index_image_folder(root)
    if len(classes) != num_classes:
        raise ValueError(f"The image folder {root} has {len(classes)} class folders and the model {model} predicts "
                         f"{num_classes} classes; the meta-set needs one sub-folder per class of the model, sorted "
                         f"as its class indices (e.g. ImageNet validation in its 1,000 wnid folders).")


def source_statistics(config: RunConfig, points: list[dict[str, Any]], images: int = 2048):
    """DoC/ATC's labelled source statistics, for both feeds, on the clean domain's first `images`
    images: the served outputs of a fresh adapter (as a run's first steps serve them) and the
    frozen model's outputs (eval-mode BatchNorm, as the evaluator scores the stream); with each
    feed's nuclear-norm line and Sentinel training set over the meta-set's windows."""
    from dataclasses import replace

    from sources.factory import open_source

    from .estimation.duo import fit_duo_temperatures
    from .estimation.window import fit_source_stats
    from .models import load_model
    from .runtime.messages import split_batches
    from .runtime.workers import AdapterWorker, SidekickWorker

    worker = AdapterWorker(config)
    model = load_model(config.model.name, config.model.weights, "cpu")  # not the adapter's (it adapts in place)
    sidekick = SidekickWorker(config) if config.estimation.duo_model else None
    source = open_source("heldout", "clean", config.source.data, model)  # the glyphs, or the image folder
    served, frozen, side, labels = [], [], [], []
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
        duo = {"model": config.estimation.duo_model, "sidekick": sidekick.describe()["sidekick"],
               "temperatures": list(temperatures)}
    sidekick_name = config.estimation.duo_model
    return (replace(fit_source_stats(served, labels), nuclear_fit=_nuclear_line(points),
                    sentinel=_sentinel_set(points, sidekick=sidekick_name), duo=duo),
            replace(fit_source_stats(np.concatenate(frozen), labels), nuclear_fit=_nuclear_line(points, frozen=True),
                    sentinel=_sentinel_set(points, frozen=True, sidekick=sidekick_name)))


def _same(key: str, mine: Any, theirs: Any) -> bool:
    if key == "model_sha256" and theirs and len(theirs) < len(mine):  # run.json keeps a prefix
        return mine.startswith(theirs)
    return _normal(mine) == _normal(theirs)


def _normal(value: Any) -> Any:
    """Floats compared to 6 significant digits (JSON round trips), dicts by their items."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items())}
    return value
