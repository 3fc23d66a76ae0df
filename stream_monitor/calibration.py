"""`stream-monitor calibrate`: fit the flips-to-accuracy function f for a model, adapter and cadence.

Entropy Enigma (Lee et al., ICML 2024, section 4.2) fits f on ImageNet validation plus CCC's
held-out corruptions, with the model adapted by RDumb for 1,000 iterations and 1,000 probe
images. This runs the same protocol, with the run's own loop, probe and adapter, on a meta-set of
fixed domains (`sources.heldout`: clean, and speckle noise, gaussian blur, spatter, saturate at
several severities; never the stream's 15 corruptions): per domain, one probe cycle from the
source state, weighted flips at every snapshot step, and the frozen source model's accuracy on
the images of the cycle (labels of the meta-set, used only here). Per snapshot step a quadratic
f is fitted (the paper's form), so any cadence of the cycle has its own f.

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

    def flips_calibrations(self) -> dict[int, FlipsCalibration]:
        """cycle_step -> f, for the run loop."""
        return {int(step): FlipsCalibration(
            model=self.model, coefficients=tuple(fit["coefficients"]), fitted_range=tuple(fit["range"]),
            cycle_step=int(step), probe_size=self.probe_size, adapter=self.adapter,
            origin=f"stream-monitor calibrate, {len(self.domains)} domains",
        ) for step, fit in self.fits.items()}

    def window_stats(self):
        from .estimation.window import stats_from_dict

        return stats_from_dict(self.source_stats)

    def check(self, provenance: dict[str, Any]) -> None:
        """Raise CalibrationMismatch, naming every difference, unless `provenance` matches."""
        mine = asdict(self)
        wrong = [f"{key}: calibration has {mine[key]!r}, the run has {provenance[key]!r}"
                 for key in PROVENANCE_KEYS if key in provenance and _normal(mine[key]) != _normal(provenance[key])]
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
    stats = first.source_stats and {**first.source_stats, "nuclear_fit": _nuclear_line(points)}
    return replace(first, domains=[d for c in calibrations for d in c.domains], points=points,
                   fits=fit_flips(points), source_stats=stats)


def _nuclear_line(points: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Online accuracy = slope * NN + intercept over the meta-set's windows (Deng et al.'s regression)."""
    pairs = [(p["nuclear_norm_score"], p["true_online_acc"]) for p in points
             if p.get("nuclear_norm_score") is not None and p.get("true_online_acc") is not None]
    if len(pairs) < 3:
        return None
    x, y = np.array(pairs).T
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x / 100.0, y, 1)
    return float(slope), float(intercept)


def run_provenance(describe: dict[str, Any], config: RunConfig, cycle: int) -> dict[str, Any]:
    """The provenance of a run (or a calibration), from the adapter worker's description."""
    return {"model": describe["model_name"], "model_sha256": describe["model_sha256"], "adapter": config.adapter.name,
            "hyperparameters": describe["hyperparameters"], "probe_size": config.probe.size, "cycle": cycle}


def fit_flips(points: list[dict[str, Any]], min_domains: int = 4) -> dict[int, dict[str, Any]]:
    """Per snapshot step, the least-squares quadratic acc = a WF^2 + b WF + c over the domains
    (a line when fewer than `min_domains` + 1 domains, a quadratic needs spread)."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for p in points:
        if p["true_source_acc"] is not None:
            by_step.setdefault(int(p["cycle_step"]), []).append((p["weighted_flips"], p["true_source_acc"]))
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


def calibrate(config: RunConfig, domains: tuple[str, ...] = DEFAULT_DOMAINS, work_dir: Path | None = None,
              log: Callable[[str], None] = print) -> Calibration:
    """Run the probe protocol on every domain of the meta-set and fit f per snapshot step."""
    from .metrics.sink import read_table
    from .runtime.loop import DEFAULT_CYCLE, is_probe_step
    from .runtime.runner import run, with_overrides
    from .runtime.workers import AdapterWorker

    describe = AdapterWorker(config).describe()
    cycle = config.probe.cycle or describe["hyperparameters"].get("reset_every") or DEFAULT_CYCLE
    # one cycle per domain, up to its last snapshot (the paper's 990 of 1,000)
    steps = max([k for k in range(1, cycle) if is_probe_step(k, cycle, config.probe.every)], default=0)
    if steps == 0:
        raise ValueError(f"probe.every ({config.probe.every}) leaves no snapshot inside a cycle of {cycle} steps")
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sm-calibrate-"))
    points: list[dict[str, Any]] = []
    for k, domain in enumerate(domains):
        started = time.perf_counter()
        cfg = with_overrides(
            config, source={"kind": "heldout", "stream": domain},
            runtime={"max_images": steps * config.source.batch_size, "start": 0, "use_ray": False},
            probe={"cycle": cycle, "enabled": True}, evaluator={"source_every": 2},
            dashboard={"enabled": False}, estimation={"calibration": None},
        )
        run_dir = scratch / domain.replace(":", "_")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        outcome = run(cfg, run_dir, log=lambda message: None)
        if outcome.status != "finished":
            raise RuntimeError(f"calibration run on {domain} {outcome.status}: {outcome.error}")
        nuclear = {r["step"]: r["value"] for r in read_table(run_dir, "estimates").to_pylist()
                   if r["estimator"] == "nuclear-norm-score"}
        for row in read_table(run_dir, "probes").to_pylist():
            points.append({"domain": domain, "cycle_step": row["cycle_step"], "flips": row["flips"],
                           "weighted_flips": row["weighted_flips"], "true_source_acc": row["true_source_acc"],
                           "true_online_acc": row["true_online_acc"], "est_online_acc": row["est_online_acc"],
                           "nuclear_norm_score": nuclear.get(row["step"])})
        last = points[-1] if points else {}
        log(f"[{k + 1}/{len(domains)}] {domain:<18} source acc {last.get('true_source_acc') or 0:5.1f}%  "
            f"WF {last.get('weighted_flips', 0):7.2f} at step {last.get('cycle_step')}  "
            f"({time.perf_counter() - started:.0f} s)")
    if work_dir is None:
        shutil.rmtree(scratch, ignore_errors=True)
    stats = source_statistics(config, points)
    log(f"source statistics (clean domain): T {stats.temperature:.2f}, Acc_S {stats.accuracy:.1f}%, "
        f"AC_S {stats.mean_confidence:.1f}%, nuclear-norm line {stats.nuclear_fit}")
    provenance = run_provenance(describe, config, cycle)
    return Calibration(**provenance, probe_every=config.probe.every, domains=list(domains), points=points,
                       fits=fit_flips(points), source_stats=asdict(stats),
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def source_statistics(config: RunConfig, points: list[dict[str, Any]], images: int = 2048):
    """DoC/ATC's labelled source statistics: the served outputs of a fresh adapter on the clean
    domain's first `images` images (as a run's first steps serve them), and the nuclear norm's
    line to the online accuracy over the meta-set's windows."""
    from dataclasses import replace

    from sources.heldout import HeldOutDomainSource

    from .estimation.window import fit_source_stats
    from .runtime.workers import AdapterWorker
    from .runtime.messages import split_batches

    worker = AdapterWorker(config)
    source = HeldOutDomainSource("clean", images)
    probs, labels = [], []
    batches = list(source.read(0, images, config.source.batch_size))
    for served, truth in split_batches(batches, 0, images, config.source.batch_size):
        probs.append(worker.step(served).probabilities)
        labels.append(truth.labels)
    return replace(fit_source_stats(np.concatenate(probs), np.concatenate(labels)), nuclear_fit=_nuclear_line(points))


def _normal(value: Any) -> Any:
    """Floats compared to 6 significant digits (JSON round trips), dicts by their items."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items())}
    return value
