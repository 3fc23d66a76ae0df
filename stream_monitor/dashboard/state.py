"""What the dashboard shows, as one immutable value: every `apply_*` returns a new `DashboardState`.

The driver thread folds rows into a new state and swaps a single reference; the `Live` refresh thread
only ever reads whole states, so it never sees one half-updated (style_anchors.md 3.2 and 4.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from stream_monitor.runtime.observer import RunInfo

__all__ = [
    "HEALTH_STATUSES",
    "AccuracyPoint",
    "ActorHealth",
    "ActiveWarning",
    "DashboardState",
    "EventRecord",
    "ProbeSummary",
    "Series",
    "StepStats",
]

HEALTH_STATUSES = ("ok", "slow", "diverged", "dead")


class AccuracyPoint(NamedTuple):
    """One probe report on the chart; accuracies in percent, None where unknown."""

    position: int
    est_source_acc: float | None
    true_source_acc: float | None
    est_online_acc: float | None
    true_online_acc: float | None
    source_interval: tuple[float, float] | None = None  # the headline's 90% interval (the chart's band)
    online_interval: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Series:
    """A bounded, evenly downsampled point series.

    When more than `capacity` points are kept, every other one is dropped and from then on only every
    `stride`-th new point is kept, so the kept points stay evenly spaced over the whole run. The newest
    point is always shown (as `tail`) even when it falls between two kept ones, so the chart never lags.
    """

    capacity: int = 2000
    kept: tuple[Any, ...] = ()
    tail: Any = None
    stride: int = 1
    seen: int = 0

    def __post_init__(self) -> None:
        # An even capacity keeps the halved points on the new stride's lattice.
        if self.capacity < 2 or self.capacity % 2:
            raise ValueError(f"Series capacity must be an even number >= 2, got {self.capacity}")

    def append(self, point: Any) -> Series:
        """A new series with `point` added."""
        if self.seen % self.stride:
            return replace(self, tail=point, seen=self.seen + 1)
        kept, stride = self.kept + (point,), self.stride
        if len(kept) > self.capacity:
            kept, stride = kept[::2], stride * 2
        return replace(self, kept=kept, tail=None, stride=stride, seen=self.seen + 1)

    @property
    def points(self) -> tuple[Any, ...]:
        return self.kept if self.tail is None else self.kept + (self.tail,)

    def __len__(self) -> int:
        return len(self.kept) + (self.tail is not None)


@dataclass(frozen=True, slots=True)
class StepStats:
    """The latest step's cheap adapter statistics."""

    step: int
    position: int
    mean_entropy: float | None = None
    mean_confidence: float | None = None
    top_class_share: float | None = None
    loss: float | None = None
    step_ms: float | None = None
    update_skipped: bool | None = None
    domain: str | None = None  # CCC corruption pair of the batch, when the stream says


@dataclass(frozen=True, slots=True)
class ProbeSummary:
    """The latest probe report, for the readouts beside the chart."""

    step: int
    position: int
    cycle: int
    flips: int | None  # the last counted flips (probe.flips_every), None before the first count
    probe_size: int
    weighted_flips: float | None
    est_source_acc: float | None
    est_online_acc: float | None
    true_source_acc: float | None
    true_online_acc: float | None
    est_source_method: str | None = None
    extrapolated: bool = False
    est_online_method: str | None = None
    source_interval: tuple[float, float] | None = None
    online_interval: tuple[float, float] | None = None
    out_of_support: tuple[str, ...] = ()  # the targets whose window lies outside the calibration's support
    flips_cycle: int | None = None       # the cycle and cycle step of the snapshot that counted `flips`
    flips_cycle_step: int | None = None


@dataclass(frozen=True, slots=True)
class ActiveWarning:
    """A collapse warning that no `clear` event from the same origin has withdrawn yet."""

    origin: str
    message: str  # the evidence, as the detector wrote it
    step: int
    wall_time: float
    value: float | None = None
    detectors: str | None = None  # the fused warning's: the detectors firing, comma-separated


@dataclass(frozen=True, slots=True)
class EventRecord:
    step: int
    wall_time: float
    kind: str
    origin: str
    message: str
    value: float | None = None


@dataclass(frozen=True, slots=True)
class ActorHealth:
    name: str
    status: str  # one of HEALTH_STATUSES
    detail: str = ""


def _num(value: Any) -> float | None:
    """A finite float, or None for null and NaN (Arrow nulls arrive as None, missing estimates as NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _domain(row: dict[str, Any]) -> str | None:
    parts = []
    for noise, severity in (("noise_a", "severity_a"), ("noise_b", "severity_b")):
        if row.get(noise):
            sev = _num(row.get(severity))
            parts.append(row[noise] if sev is None else f"{row[noise]} {sev:.3g}")
    return " + ".join(parts) or None


@dataclass(frozen=True, slots=True)
class DashboardState:
    """Everything the panels read. Build a fresh one with `DashboardState()` and fold rows in.

    Args:
        max_points (int): chart points kept per series before even downsampling. Defaults to 2000.
        max_events (int): events kept for the log. Defaults to 200.
        rolling_images (int): images behind the rolling ground-truth accuracy of step rows. Defaults to 5000.
        throughput_tau (float): seconds over which the img/s average forgets. Defaults to 10.
    """

    max_points: int = 2000
    max_events: int = 200
    rolling_images: int = 5000
    throughput_tau: float = 10.0

    info: RunInfo | None = None
    started_wall: float | None = None  # unix time of on_start, when the observer knew it

    # progress and throughput
    position: int | None = None        # one past the last stream position served
    steps: int = 0
    images: int = 0                    # images served (without skipped ones)
    skipped: int = 0
    first_wall: float | None = None
    first_advance: int = 0             # positions of the first step, which has no start time to time it from
    last_wall: float | None = None
    rate: float | None = None          # stream positions per second, time-weighted EMA
    last_step: StepStats | None = None

    # ground truth from step rows: (images, correct, frozen_seen, frozen_correct) per recent labelled step
    recent_truth: tuple[tuple[int, int, int, int], ...] = ()
    labelled_images: int = 0
    correct_total: int = 0
    source_seen_total: int = 0
    source_correct_total: int = 0
    online_series: Series = field(default_factory=Series)  # (position, rolling true online acc %)
    risk_series: Series = field(default_factory=Series)  # (position, risk test's lower bound, alarm level), rates

    # probe reports
    accuracy: Series = field(default_factory=Series)       # AccuracyPoint per probe row
    last_probe: ProbeSummary | None = None
    probe_count: int = 0
    # est source, true source, est online, true online: running sums and counts for the summary's means
    acc_sums: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    acc_counts: tuple[int, int, int, int] = (0, 0, 0, 0)

    # events
    warnings: tuple[ActiveWarning, ...] = ()
    events: tuple[EventRecord, ...] = ()
    event_counts: tuple[tuple[str, int], ...] = ()
    step_resets: int = 0

    health: tuple[ActorHealth, ...] = ()

    def __post_init__(self) -> None:
        for name in ("online_series", "accuracy", "risk_series"):
            series = getattr(self, name)
            if series.capacity != self.max_points and not len(series):
                object.__setattr__(self, name, Series(capacity=self.max_points))

    # -- transitions -------------------------------------------------------------------------------------------

    def apply_start(self, info: RunInfo, wall_time: float | None = None) -> DashboardState:
        """A fresh state for the run `info` describes; actor health reported before the start is kept."""
        return DashboardState(max_points=self.max_points, max_events=self.max_events,
                              rolling_images=self.rolling_images, throughput_tau=self.throughput_tau,
                              info=info, started_wall=wall_time, position=info.start, health=self.health)

    def apply_step(self, row: dict[str, Any]) -> DashboardState:
        """Fold in one `steps` row."""
        stop, wall = int(row["stop"]), float(row["wall_time"])
        start = int(row.get("start", stop))
        served, skipped = int(row.get("images") or 0), int(row.get("skipped") or 0)
        changes: dict[str, Any] = {
            "position": stop if self.position is None else max(self.position, stop),
            "steps": self.steps + 1,
            "images": self.images + served,
            "skipped": self.skipped + skipped,
            "first_wall": wall if self.first_wall is None else self.first_wall,
            "first_advance": stop - start if self.first_wall is None else self.first_advance,
            "last_wall": wall,
            "rate": self._next_rate(stop - start, wall),
            "step_resets": self.step_resets + bool(row.get("reset")),
            "last_step": StepStats(
                step=int(row["step"]), position=stop, mean_entropy=_num(row.get("mean_entropy")),
                mean_confidence=_num(row.get("mean_confidence")), top_class_share=_num(row.get("top_class_share")),
                loss=_num(row.get("loss")), step_ms=_num(row.get("step_ms")),
                update_skipped=row.get("update_skipped"), domain=_domain(row)),
        }
        if row.get("risk_lower") is not None and row.get("risk_upper") is not None:
            changes["risk_series"] = self.risk_series.append((stop, float(row["risk_lower"]), float(row["risk_upper"])))
        correct = row.get("correct")
        if correct is not None and served > 0:
            seen = int(row.get("frozen_seen") or 0)
            frozen_correct = int(row.get("frozen_correct") or 0) if seen else 0
            recent = self.recent_truth + ((served, int(correct), seen, frozen_correct),)
            total = sum(entry[0] for entry in recent)
            while len(recent) > 1 and total - recent[0][0] >= self.rolling_images:
                total -= recent[0][0]
                recent = recent[1:]
            changes.update(
                recent_truth=recent, labelled_images=self.labelled_images + served,
                correct_total=self.correct_total + int(correct), source_seen_total=self.source_seen_total + seen,
                source_correct_total=self.source_correct_total + frozen_correct)
            online = 100.0 * sum(entry[1] for entry in recent) / total
            changes["online_series"] = self.online_series.append((stop, online))
        return replace(self, **changes)

    def apply_probe(self, row: dict[str, Any]) -> DashboardState:
        """Fold in one `probes` row."""
        intervals = [_interval(row, target) for target in ("source", "online")]
        point = AccuracyPoint(int(row["position"]), _num(row.get("est_source_acc")), _num(row.get("true_source_acc")),
                              _num(row.get("est_online_acc")), _num(row.get("true_online_acc")), *intervals)
        values = point[1:5]
        sums = tuple(s + (v or 0.0) for s, v in zip(self.acc_sums, values))
        counts = tuple(c + (v is not None) for c, v in zip(self.acc_counts, values))
        summary = ProbeSummary(
            step=int(row["step"]), position=point.position, cycle=int(row.get("cycle") or 0),
            **self._flips(row),
            est_source_acc=point.est_source_acc, est_online_acc=point.est_online_acc,
            true_source_acc=point.true_source_acc, true_online_acc=point.true_online_acc,
            est_source_method=row.get("est_source_method"), extrapolated=bool(row.get("est_extrapolated")),
            est_online_method=row.get("est_online_method"), source_interval=intervals[0],
            online_interval=intervals[1],
            out_of_support=tuple(t for t in ("source", "online") if row.get(f"est_{t}_out_of_support")))
        return replace(self, accuracy=self.accuracy.append(point), last_probe=summary,
                       probe_count=self.probe_count + 1, acc_sums=sums, acc_counts=counts)

    def _flips(self, row: dict[str, Any]) -> dict[str, Any]:
        """ProbeSummary's flips fields: this row's, or the last counted ones where this snapshot
        counted none (probe.flips_every)."""
        if row.get("flips") is not None:
            return {"flips": int(row["flips"]), "probe_size": int(row.get("probe_size") or 0),
                    "weighted_flips": _num(row.get("weighted_flips")), "flips_cycle": int(row.get("cycle") or 0),
                    "flips_cycle_step": int(row["cycle_step"]) if row.get("cycle_step") is not None else None}
        last = self.last_probe
        if last is None:
            return {"flips": None, "probe_size": 0, "weighted_flips": None}
        return {"flips": last.flips, "probe_size": last.probe_size, "weighted_flips": last.weighted_flips,
                "flips_cycle": last.flips_cycle, "flips_cycle_step": last.flips_cycle_step}

    def apply_event(self, row: dict[str, Any]) -> DashboardState:
        """Fold in one `events` row: log it, count it, and raise or clear collapse warnings."""
        record = EventRecord(step=int(row.get("step") or 0), wall_time=float(row.get("wall_time") or 0.0),
                             kind=str(row["kind"]), origin=str(row.get("origin") or ""),
                             message=str(row.get("message") or ""), value=_num(row.get("value")))
        counts = dict(self.event_counts)
        counts[record.kind] = counts.get(record.kind, 0) + 1
        warnings = self.warnings
        if record.kind in ("warning", "clear"):
            # A detector that warns again updates its evidence rather than stacking a second line.
            warnings = tuple(w for w in warnings if w.origin != record.origin)
            if record.kind == "warning":
                warnings += (ActiveWarning(record.origin, record.message, record.step, record.wall_time, record.value,
                                           row.get("detectors")),)
        return replace(self, events=(self.events + (record,))[-self.max_events:],
                       event_counts=tuple(counts.items()), warnings=warnings)

    def apply_health(self, name: str, status: str, detail: str = "") -> DashboardState:
        """Set an actor's health (HEALTH_STATUSES); actors keep the order they first reported in."""
        if status not in HEALTH_STATUSES:
            raise ValueError(f"Unknown health status {status!r}; valid: {', '.join(HEALTH_STATUSES)}")
        entry = ActorHealth(name, status, detail)
        if any(h.name == name for h in self.health):
            health = tuple(entry if h.name == name else h for h in self.health)
        else:
            health = self.health + (entry,)
        return replace(self, health=health)

    def _next_rate(self, advanced: int, wall: float) -> float | None:
        if self.last_wall is None:
            return None
        dt = wall - self.last_wall
        if self.rate is None:
            return advanced / dt if dt > 0 else None
        # Time-weighted EMA: results that ray.wait hands over together (dt ~ 0) weigh next to nothing
        # instead of contributing an unbounded advanced / dt; the limit of the update is advanced / tau.
        if dt <= 0:
            return self.rate + advanced / self.throughput_tau
        decay = math.exp(-dt / self.throughput_tau)
        return self.rate * decay + (1.0 - decay) * advanced / dt

    # -- derived values ----------------------------------------------------------------------------------------

    @property
    def done(self) -> int:
        """Stream positions covered so far (served and skipped)."""
        if self.info is None or self.position is None:
            return 0
        return max(0, self.position - self.info.start)

    @property
    def total(self) -> int | None:
        if self.info is None or self.info.stop <= self.info.start:
            return None
        return self.info.stop - self.info.start

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)

    @property
    def eta_seconds(self) -> float | None:
        if not self.total or not self.rate:
            return None
        return max(0, self.total - self.done) / self.rate

    @property
    def elapsed_seconds(self) -> float | None:
        origin = self.started_wall if self.started_wall is not None else self.first_wall
        if origin is None or self.last_wall is None:
            return None
        return max(0.0, self.last_wall - origin)

    @property
    def mean_rate(self) -> float | None:
        """Positions per second between the first and the last step result (the first batch has no start time)."""
        if self.first_wall is None or self.last_wall is None or self.last_wall <= self.first_wall:
            return None
        return (self.done - self.first_advance) / (self.last_wall - self.first_wall)

    @property
    def rolling_online_acc(self) -> float | None:
        """Served predictions' accuracy (%) over the last `rolling_images` labelled images; None without labels."""
        images = sum(entry[0] for entry in self.recent_truth)
        return 100.0 * sum(entry[1] for entry in self.recent_truth) / images if images else None

    @property
    def rolling_source_acc(self) -> float | None:
        seen = sum(entry[2] for entry in self.recent_truth)
        return 100.0 * sum(entry[3] for entry in self.recent_truth) / seen if seen else None

    @property
    def run_online_acc(self) -> float | None:
        return 100.0 * self.correct_total / self.labelled_images if self.labelled_images else None

    @property
    def run_source_acc(self) -> float | None:
        return 100.0 * self.source_correct_total / self.source_seen_total if self.source_seen_total else None

    def mean_accuracy(self, index: int) -> float | None:
        """Mean over probe reports of AccuracyPoint field `index` (1..4)."""
        count = self.acc_counts[index - 1]
        return self.acc_sums[index - 1] / count if count else None

    def count(self, kind: str) -> int:
        """Events of `kind` seen so far (not only the ones still in the log)."""
        return dict(self.event_counts).get(kind, 0)

    @property
    def resets(self) -> int:
        # The loop may record a reset both as a step flag and as an event; counting either, not both.
        return max(self.count("reset"), self.step_resets)


def _interval(row: dict[str, Any], target: str) -> tuple[float, float] | None:
    low, high = _num(row.get(f"est_{target}_lo")), _num(row.get(f"est_{target}_hi"))
    return None if low is None or high is None else (low, high)
