"""The plain classes behind the Ray actors (style_anchors.md 4.5): no Ray in here.

- `StreamWorker` renders or reads slices of the stream and splits them into `Images` and `Truth`.
- `AdapterWorker` owns the model being adapted on its device.
- `ProbeWorker` owns the reference set and counts label flips of weight snapshots (Entropy
  Enigma, Press et al., ICML 2024, `main.py`: reference predictions with test-batch BatchNorm,
  in chunks of 100).

Each builds its model inside its own process from the config, as Ray's docs recommend (never an
`nn.Module` pickled into an actor).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch

from stream_monitor.adapters.base import StepStats, use_batch_statistics

from ..config import RunConfig
from ..estimation.aetta import DropoutDisagreement, stage_ends
from ..estimation.flips import count_flips, position_hash
from ..models import load_model
from .components import Components, config_components
from .messages import (AdapterDescription, Images, ProbeResult, SidekickDescription, StepSummary, StreamDescription,
                       Truth, split_batches)

AETTA_RNG_KEY = "aetta_generator"  # beside the adapter's own keys in the checkpoint's adapter state


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device is cuda but this machine has no CUDA device; use --set runtime.device=cpu")
    return device


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


class StreamWorker:
    """Reads slices of the stream; the frozen source model scores every `frozen_every`-th batch."""

    def __init__(self, config: RunConfig, threads: int | None = None, components: Components | None = None) -> None:
        _set_threads(threads)
        self.config = config
        components = components or config_components(config)
        self.bundle = components.model("cpu")
        self.source = components.stream(self.bundle)
        self.frozen_every = config.evaluator.frozen_every
        self.has_labels = getattr(self.source, "has_labels", True)

    def describe(self) -> StreamDescription:
        source = self.source
        return StreamDescription(source.name, source.length, source.num_classes, self.has_labels,
                                 getattr(source, "resume_refusal", None))

    def reached(self, position: int) -> int:
        """How far the stream reaches, up to `position` (its length, or `position` when it is longer)."""
        reached = getattr(self.source, "reached", None)
        return reached(position) if reached is not None else min(position, self.source.length)

    def read(self, start: int, stop: int) -> list[Images | Truth]:
        """Batches of [start, stop) as a flat list [images_0, truth_0, images_1, truth_1, ...]
        (a flat list so that Ray can return each item as its own object)."""
        batch_size = self.config.source.batch_size
        batches = list(self.source.read(start, stop, batch_size))
        out: list[Images | Truth] = []
        for images, truth in split_batches(batches, start, stop, batch_size):
            if not self.has_labels:  # an unlabelled stream (the Python API's): nothing to score
                truth.labels = np.zeros(0, np.int64)
            if self.frozen_every and len(images) and (images.start // batch_size) % self.frozen_every == 0:
                probs = self.bundle.probabilities(torch.from_numpy(images.images))
                truth.frozen_predictions, truth.frozen_probabilities = probs.argmax(1), probs
            out += [images, truth]
        return out

    def first_images(self, n: int) -> np.ndarray:
        """The stream's first `n` images (EATA's Fisher information, as CCC's eval does)."""
        n = self.reached(n)
        return np.concatenate([b.images for b in self.source.read(0, n, self.config.source.batch_size)])

    def ping(self) -> str:
        return "ok"

    def __repr__(self) -> str:
        # Ray calls repr to label an actor's errors, also when __init__ raised before `source` existed
        source = getattr(self, "source", None)
        return f"StreamWorker({source.name if source is not None else 'not started'})"


class AdapterWorker:
    """Owns the adapter and its device: uint8 in, served predictions and statistics out."""

    def __init__(self, config: RunConfig, fisher_images: np.ndarray | None = None, threads: int | None = None,
                 components: Components | None = None) -> None:
        _set_threads(threads)
        self.device = resolve_device(config.runtime.device)
        components = components or config_components(config)
        self.bundle = components.model(self.device)
        first = (lambda n: torch.from_numpy(fisher_images[:n])) if fisher_images is not None else None
        self.adapter = components.adapter(self.bundle, first)
        self.name = config.adapter.name
        est = config.estimation
        self.pdd_every = est.aetta_every
        self.pdd = DropoutDisagreement(est.aetta_dropout, est.aetta_forwards) if est.aetta_every else None
        if self.pdd is not None:
            stage_ends(self.adapter.serving_model())  # a model without stages fails here, not mid-run

    def step(self, images: Images) -> StepSummary:
        started = time.perf_counter()
        if not len(images):  # every image of the window was unreadable: nothing to serve or adapt on
            return StepSummary(self.adapter.num_steps, np.zeros(0, np.int64), np.zeros(0, np.float32),
                               StepStats.nothing_served(), float("nan"), float("nan"), 0.0, False)
        x = self.bundle.normalise(torch.from_numpy(images.images))
        result = self.adapter.step(x)
        probs = result.logits.detach().float().softmax(1)
        confidences, predictions = probs.max(1)
        marginal = probs.mean(0)
        counts = torch.bincount(predictions, minlength=probs.shape[1])
        extra = torch.stack([-(marginal * marginal.clamp_min(1e-12).log()).sum(), counts.max() / len(predictions),
                             torch.isfinite(result.logits).all().float()])
        stats = result.stats()  # the one host sync of the step
        dropout = None
        if self.pdd is not None and self.adapter.num_steps % self.pdd_every == 0:
            dropout = self.pdd(self.adapter.serving_model(), x, predictions)
        marginal_entropy, top_share, finite_logits = extra.tolist()
        diverged = not (finite_logits and math.isfinite(stats.loss) and math.isfinite(stats.grad_norm))
        every = self.adapter.reset_every
        return StepSummary(
            step=self.adapter.num_steps, predictions=predictions.cpu().numpy(),
            confidences=confidences.cpu().numpy().astype(np.float32), stats=stats,
            marginal_entropy=marginal_entropy, top_class_share=top_share,
            step_ms=1000.0 * (time.perf_counter() - started),
            reset=bool(every and self.adapter.num_steps % every == 0),
            probabilities=probs.cpu().numpy().astype(np.float32, copy=False), dropout=dropout, diverged=diverged,
        )

    def snapshot(self) -> dict[str, np.ndarray]:
        return self.adapter.snapshot()

    def reset(self) -> None:
        self.adapter.reset()

    def state_dict(self) -> dict[str, Any]:
        state = _to_cpu(self.adapter.state_dict())
        if self.pdd is not None:  # AETTA's dropout masks continue where they were after a resume
            state[AETTA_RNG_KEY] = self.pdd.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        generator = state.pop(AETTA_RNG_KEY, None)
        if self.pdd is not None and generator is not None:
            self.pdd.generator.set_state(generator)
        self.adapter.load_state_dict(state)

    def describe(self) -> AdapterDescription:
        """Model, base, device and hyperparameters: the dashboard header, run.json and the provenance."""
        bundle = self.bundle
        base = getattr(bundle, "base", None) or \
            ("embedded glyphs (not ImageNet)" if bundle.name == "embedded_resnet20" else "ImageNet-format images")
        return AdapterDescription(base, f"{bundle.name} {bundle.sha256[:12]}", self.device, self.hyperparameters(),
                                  bundle.name, bundle.sha256)

    def hyperparameters(self) -> dict[str, Any]:
        """The adapter's scalar options, for the dashboard header and the run card."""
        out: dict[str, Any] = {}
        for key, value in vars(self.adapter).items():
            if not key.startswith("_") and isinstance(value, (int, float, str, bool)) and key != "num_steps":
                out[key] = value
        if self.adapter.optimizer is not None:
            group = self.adapter.optimizer.param_groups[0]
            out.update({k: group[k] for k in ("lr", "momentum", "nesterov") if k in group})
            out["optimizer"] = type(self.adapter.optimizer).__name__
        return out

    def ping(self) -> str:
        return self.device

    def __repr__(self) -> str:
        return f"AdapterWorker({getattr(self, 'name', 'not started')})"  # safe before __init__ ends, as above


class SidekickWorker:
    """The frozen smaller model of Asymmetric Duos (`estimation.duo_model`), on its own actor: uint8
    in, log-softmax out (eval-mode BatchNorm: the sidekick never adapts)."""

    def __init__(self, config: RunConfig, threads: int | None = None) -> None:
        _set_threads(threads)
        est = config.estimation
        self.bundle = load_model(est.duo_model, est.duo_weights, resolve_device(config.runtime.device))

    def predict(self, images: Images) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.bundle.num_classes), np.float32)
        logits = self.bundle.predict(torch.from_numpy(images.images))
        return logits.float().log_softmax(1).cpu().numpy()

    def describe(self) -> SidekickDescription:
        return SidekickDescription(self.bundle.short_id, self.bundle.num_classes)

    def ping(self) -> str:
        return "ok"

    def __repr__(self) -> str:
        bundle = getattr(self, "bundle", None)  # safe before __init__ ends, as StreamWorker's
        return f"SidekickWorker({bundle.name if bundle is not None else 'not started'})"


class ProbeWorker:
    """The reference set and flip counting of the Entropy Enigma protocol.

    A cycle starts from a snapshot: the next `size` stream images become the reference set, and
    the snapshot's predictions and confidences on them (test-batch BatchNorm, chunks of `chunk`)
    the reference. Each later snapshot is scored by its flips against that reference, weighted by
    the percentile rank of the reference confidence.

    With `probe.spread`, a second reference set is a uniform sample of `size` images of the whole
    cycle so far (bottom-k of a hash of the stream position: deterministic, resumable, no RNG
    state); at each snapshot both the cycle-start snapshot and the new one predict it. In the
    paper the reference set is drawn from the whole dataset whose accuracy f estimates; on a
    drifting stream this is the sample that matches the window, while the first images only
    describe the cycle's first domain.

    A snapshot that loads the cycle-start weights bit for bit (a `source` or `norm` adapter, whose
    BatchNorm statistics the probe replaces with the chunk's) predicts what the cycle start
    predicted: same weights, same images, same chunks. Its flips are counted from the stored
    reference predictions and the cycle-start snapshot's on the spread set, which saves 2 of a
    probe's 3 forwards of `size` images (`same_weights`).
    """

    def __init__(self, config: RunConfig, threads: int | None = None, components: Components | None = None) -> None:
        _set_threads(threads)
        device = "cuda" if config.probe.num_gpus and torch.cuda.is_available() else "cpu"
        self.bundle = (components or config_components(config)).model(device)
        self.model = copy.deepcopy(self.bundle.module)
        use_batch_statistics(self.model)
        self.model.eval()
        self.initial_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.size, self.chunk = config.probe.size, config.probe.chunk
        self.spread = config.probe.spread
        self.cycle = -1
        self.cycle_start = 0
        self._reset_reference()

    def _reset_reference(self) -> None:
        self.reference_images: list[np.ndarray] = []
        self.reference_count = 0
        self.reference_positions = 0  # stream positions covered, unreadable ones included (the driver's count)
        self.cycle_snapshot: dict[str, np.ndarray] | None = None
        self.reference_predictions: np.ndarray | None = None
        self.reference_confidences: np.ndarray | None = None
        self.start_snapshot: dict[str, np.ndarray] | None = None  # the cycle's first weights
        self.spread_images = np.zeros((0,), np.uint8)
        self.spread_keys = np.zeros((0,), np.uint64)

    def start_cycle(self, snapshot: dict[str, np.ndarray], cycle: int, step: int) -> None:
        """Begin a cycle at adapter step `step`; the reference images follow with `add_reference`."""
        self._reset_reference()
        self.cycle, self.cycle_start = cycle, step
        self.cycle_snapshot = self.start_snapshot = snapshot

    def observe(self, images: Images) -> None:
        """Every batch of the cycle: keep the `size` images of smallest position hash (the spread set)."""
        if not self.spread or not len(images):
            return
        keys = position_hash(images.indices, self.cycle)
        if len(self.spread_keys) == self.size and keys.min() >= self.spread_keys.max():
            return  # nothing here enters the sample (the common case once the cycle is long)
        pool = np.concatenate([self.spread_images, images.images]) if len(self.spread_keys) else np.array(images.images)
        keys = np.concatenate([self.spread_keys, keys])
        keep = np.sort(np.argsort(keys, kind="stable")[:self.size])
        self.spread_images, self.spread_keys = pool[keep], keys[keep]

    def add_reference(self, images: Images) -> int:
        """Take the readable images of the cycle's first `size` stream positions as the reference set;
        returns the image count. Positions, not images, are counted, as the driver counts what it sends:
        unreadable images make the reference set smaller instead of leaving it incomplete forever."""
        need = self.size - self.reference_positions
        if need > 0:
            keep = images.indices < images.start + need
            if keep.any():
                self.reference_images.append(np.array(images.images[keep]))  # a copy: Ray hands out read-only views
                self.reference_count += int(keep.sum())
            self.reference_positions += min(need, images.stop - images.start)
            if self.reference_positions >= self.size and self.reference_count and self.cycle_snapshot is not None:
                self.reference_predictions, self.reference_confidences = self._predict(
                    self.cycle_snapshot, np.concatenate(self.reference_images))
                self.cycle_snapshot = None  # no longer needed
        return self.reference_count

    @property
    def ready(self) -> bool:
        return self.reference_predictions is not None

    def evaluate(self, snapshot: dict[str, np.ndarray], step: int) -> ProbeResult | None:
        """Flips of `snapshot` (taken after `step` adapter steps); None until the reference is complete."""
        if not self.ready:
            return None
        started = time.perf_counter()
        unchanged = self.start_snapshot is not None and same_weights(snapshot, self.start_snapshot, self.initial_state)
        if unchanged:
            predictions = self.reference_predictions
        else:
            predictions, _ = self._predict(snapshot, np.concatenate(self.reference_images))
        flips, weighted = count_flips(self.reference_predictions, self.reference_confidences, predictions)
        spread = {}
        if self.spread and self.start_snapshot is not None and len(self.spread_keys):
            initial, confidences = self._predict(self.start_snapshot, self.spread_images)
            now = initial if unchanged else self._predict(snapshot, self.spread_images)[0]
            count, value = count_flips(initial, confidences, now)
            spread = {"spread_size": len(now), "spread_flips": count, "spread_weighted_flips": value}
        return ProbeResult(step, self.cycle, step - self.cycle_start, len(predictions), flips, weighted,
                           1000.0 * (time.perf_counter() - started), **spread)

    @torch.inference_mode()
    def _predict(self, snapshot: dict[str, np.ndarray], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = dict(self.initial_state)
        own = set(state)
        state.update({k: torch.from_numpy(np.asarray(v)) for k, v in snapshot.items() if k in own})
        self.model.load_state_dict(state)
        device = next(self.model.parameters()).device
        predictions, confidences = [], []
        for lo in range(0, len(images), self.chunk):
            x = self.bundle.normalise(torch.from_numpy(images[lo:lo + self.chunk]).to(device))
            probs = self.model(x).float().softmax(1)
            conf, pred = probs.max(1)
            predictions.append(pred.cpu().numpy())
            confidences.append(conf.cpu().numpy())
        return np.concatenate(predictions), np.concatenate(confidences)

    def state_dict(self) -> dict[str, Any]:
        def tensor(a):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

        return {
            "cycle": self.cycle, "cycle_start": self.cycle_start, "reference_count": self.reference_count,
            "reference_positions": self.reference_positions,
            "reference_images": [tensor(a) for a in self.reference_images],
            "cycle_snapshot": None if self.cycle_snapshot is None else {k: tensor(v) for k, v in self.cycle_snapshot.items()},
            "reference_predictions": tensor(self.reference_predictions),
            "reference_confidences": tensor(self.reference_confidences),
            "start_snapshot": None if self.start_snapshot is None else {k: tensor(v) for k, v in self.start_snapshot.items()},
            "spread_images": tensor(self.spread_images),
            "spread_keys": tensor(self.spread_keys.view(np.int64)),  # torch has no uint64 tensors to save
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def array(t):
            return None if t is None else t.numpy()

        self.cycle, self.cycle_start = int(state["cycle"]), int(state["cycle_start"])
        self.reference_count = int(state["reference_count"])
        self.reference_positions = int(state["reference_positions"])
        self.reference_images = [array(t) for t in state["reference_images"]]
        snap = state["cycle_snapshot"]
        self.cycle_snapshot = None if snap is None else {k: array(v) for k, v in snap.items()}
        self.reference_predictions = array(state["reference_predictions"])
        self.reference_confidences = array(state["reference_confidences"])
        start = state.get("start_snapshot")
        self.start_snapshot = None if start is None else {k: array(v) for k, v in start.items()}
        if "spread_images" in state:
            self.spread_images = array(state["spread_images"])
            self.spread_keys = array(state["spread_keys"]).view(np.uint64)

    def ping(self) -> str:
        return "ok"

    def __repr__(self) -> str:
        return "ProbeWorker()"


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray], own: dict[str, Any]) -> bool:
    """Whether snapshots `a` and `b` load the same weights into a model whose state has the keys of
    `own` (the keys it lacks are never loaded). Bit for bit: a signed zero or a NaN is a value
    `==` would call equal (or unequal) where a forward need not."""
    keys = own.keys()
    if keys & a.keys() != keys & b.keys():
        return False
    return all(_bits(a[k]) == _bits(b[k]) for k in keys & a.keys())


def _bits(value: np.ndarray) -> tuple[Any, tuple[int, ...], bytes]:
    array = np.asarray(value)
    return array.dtype, array.shape, array.tobytes()


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state
