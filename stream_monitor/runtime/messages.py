"""What travels between the workers: small, picklable dataclasses of numpy arrays and numbers.

A stream batch is split by the stream worker into the part the adapter and probe may see (`Images`)
and the part only the driver's evaluator sees (`Truth`: labels, CCC info and the frozen
model's outputs), so labels cannot reach an adapter, a probe or an estimator by accident
(DESIGN.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_monitor.adapters.base import StepStats
from stream_monitor.sources.base import Batch

from ..calibration.format import Provenance
from ..config import RunConfig
from ..schedule import cycle_length


@dataclass
class Images:
    """The unlabelled images of stream positions [start, stop); `indices` are the readable ones."""

    start: int
    stop: int
    indices: np.ndarray  # int64 (N,)
    images: np.ndarray  # uint8 (N, 3, H, W)
    # what could not be read, e.g. "serial_00003.tar:sample_7: input.jpg is empty (0 bytes)"
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Truth:
    """Ground truth for the same positions; `frozen_predictions` is -1 where the frozen model did
    not score (it scores a subsample of batches)."""

    start: int
    stop: int
    labels: np.ndarray  # int64 (N,)
    noise_a: str
    severity_a: float
    noise_b: str
    severity_b: float
    frozen_predictions: np.ndarray | None = None  # int64 (N,) or None when not scored
    skipped: list[str] = field(default_factory=list)  # unreadable images, as in Images
    # float32 (N, K): the frozen model's softmax where it scored, for the source-target estimators
    # (label-free; it travels here because only the driver's evaluator reads the frozen model)
    frozen_probabilities: np.ndarray | None = None


@dataclass
class StepSummary:
    """What the adapter returns for one step: the served predictions and cheap statistics."""

    step: int  # adapter steps done after this one
    predictions: np.ndarray  # int64 (N,)
    confidences: np.ndarray  # float32 (N,), max softmax of the served logits
    stats: StepStats  # the adapter's loss, gradient norm, samples used, ...
    marginal_entropy: float
    top_class_share: float
    step_ms: float
    reset: bool  # the adapter's own reset policy fired after this step
    probabilities: np.ndarray | None = None  # float32 (N, K): served softmax, for the window estimators
    # AETTA's dropout statistics of the batch (agreement, marginal entropy / ln K), on its PDD steps
    dropout: tuple[float, float] | None = None
    diverged: bool = False  # a non-finite loss, gradient norm or served logits


@dataclass
class ProbeResult:
    """Flips of one snapshot against the cycle's reference predictions."""

    step: int
    cycle: int
    cycle_step: int
    probe_size: int
    flips: int
    weighted_flips: float
    probe_ms: float
    # the same on the spread reference set (uniform over the cycle so far); None when off
    spread_size: int | None = None
    spread_flips: int | None = None
    spread_weighted_flips: float | None = None


@dataclass(frozen=True)
class StreamDescription:
    """What a stream worker reads: the dashboard header and run.json."""

    name: str
    length: int | None  # None: not known until the stream ends (a generator)
    num_classes: int
    has_labels: bool = True
    # why a run of this stream cannot resume (e.g. a generator cannot be rewound); None: it can
    resume_refusal: str | None = None


@dataclass(frozen=True)
class AdapterDescription:
    """The model the adapter worker serves and how it adapts."""

    base: str                    # what the images are, e.g. "embedded glyphs (not ImageNet)"
    model: str                   # name and short weights id, for people
    device: str
    hyperparameters: dict[str, Any]  # the adapter's resolved scalar options
    model_name: str
    model_sha256: str


@dataclass(frozen=True)
class SidekickDescription:
    """The Duos sidekick (estimation.duo_model)."""

    sidekick: str                # name and short weights id
    num_classes: int


@dataclass(frozen=True)
class WorkersDescription:
    """Everything the driver learns from its workers before the first step."""

    stream: StreamDescription
    adapter: AdapterDescription
    sidekick: SidekickDescription | None = None

    @property
    def reset_every(self) -> int | None:
        """The adapter's own reset period (RDumb's 1,000), which probe cycles follow."""
        return self.adapter.hyperparameters.get("reset_every")

    def provenance(self, config: RunConfig) -> Provenance:
        """What a calibration must have been made with to serve this run."""
        return Provenance(model=self.adapter.model_name, model_sha256=self.adapter.model_sha256,
                          adapter=config.adapter.name, hyperparameters=self.adapter.hyperparameters,
                          probe_size=config.probe.size, cycle=cycle_length(config.probe.cycle, self.reset_every))


def split_batches(batches: list[Batch], start: int, stop: int, batch_size: int) -> list[tuple[Images, Truth]]:
    """Cut what a source yielded for [start, stop) into position-aligned batches.

    Batch k covers [start + k*b, start + (k+1)*b) whatever was skipped inside it; a window of which
    nothing could be read still gets an (empty) entry, so every step maps to fixed positions.
    """
    count = max(1, -(-(stop - start) // batch_size))
    groups: list[list[Batch]] = [[] for _ in range(count)]
    for batch in batches:
        window = (int(batch.indices[0]) - start) // batch_size if len(batch) else count - 1
        groups[min(window, count - 1)].append(batch)
    out = []
    for k, group in enumerate(groups):
        lo, hi = start + k * batch_size, min(start + (k + 1) * batch_size, stop)
        merged = Batch.concat(group) if group else None
        if merged is None or not len(merged):
            empty = np.zeros((0,), np.int64)
            shape = merged.images.shape[1:] if merged is not None else (3, 1, 1)
            skipped = merged.skipped if merged is not None else []  # not `if merged`: an empty Batch is falsy
            out.append((Images(lo, hi, empty, np.zeros((0, *shape), np.uint8), skipped),
                        Truth(lo, hi, empty, "", 0.0, "", 0.0, None, skipped)))
            continue
        out.append((
            Images(lo, hi, merged.indices, merged.images, merged.skipped),
            Truth(lo, hi, merged.labels, str(merged.noise_a[0]), float(merged.severity_a[0]),
                  str(merged.noise_b[0]), float(merged.severity_b[0]), None, merged.skipped),
        ))
    return out
