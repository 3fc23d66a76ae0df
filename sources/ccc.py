"""The CCC protocol: stream names, the severity path search and the walk over corruption pairs.

Port of oripress/CCC `generate.py` (Press et al., "RDumb: A simple approach that questions our
progress in continual test-time adaptation", NeurIPS 2023). A stream fades one corruption out
while fading the next one in, along a monotone path on the 0.25 severity grid that keeps the
running mean accuracy of the source model near a baseline; then the incoming corruption becomes
the outgoing one and a new partner is drawn at random. Every lattice point holds `speed` images.

What is kept exactly: the noise pools per baseline, the greedy memoised path search
(`find_path`, including its tie-breaking), the start-row choice, the pair walk driven by Python's
`random` seeded with the stream seed, and the length cutoff of whole 25,000-image shards. With the
official accuracy matrix this reproduces the reference's sequence of (noise, severity) points.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_monitor.registry import suggest

from .corruptions.registry import HELD_OUT_CORRUPTIONS as HELD_OUT_NOISES

BASELINES = (0, 20, 40)
SPEEDS = (1000, 2000, 5000)
SEEDS = (43, 44, 45)
DIFFICULTY = {40: "Easy", 20: "Medium", 0: "Hard"}
#: 7.5M images per stream, in whole shards (generate.py's `cutoff` and `IMGS_PER`).
CUTOFF = 7_500_000
IMAGES_PER_SHARD = 25_000
#: The severity grid: 21 levels 0, 0.25, ..., 5.
GRID = 21
GRID_STEP = 0.25

_EASY = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "contrast", "elastic", "pixelate", "jpeg",
)
#: Corruptions per baseline. Brightness never reaches the baselines, so CCC leaves it out.
NOISE_POOLS: dict[int, tuple[str, ...]] = {
    40: _EASY,
    20: tuple(n for n in _EASY if n != "jpeg"),
    0: ("gaussian_noise", "shot_noise", "impulse_noise", "contrast"),
}

#: Stream folder names: `baseline_{b}_transition+speed_{s}_seed_{seed}`.
STREAM_NAME = re.compile(r"^baseline_(\d+)_transition\+speed_(\d+)_seed_(\d+)$")
#: Which corruptions a walk draws from: CCC's pools, or the four CCC holds out (the calibration
#: meta-set's streams: the same protocol, none of the 15 stream corruptions).
POOLS = ("stream", "heldout")
HELD_OUT_SEEDS = range(64)


@dataclass(frozen=True)
class CCCSpec:
    """One CCC stream: `baseline_{b}_transition+speed_{s}_seed_{seed}`, over CCC's corruption pool
    or (pool "heldout", for calibration) over the four held-out corruptions, any seed 0-63."""

    baseline: int = 20
    speed: int = 1000
    seed: int = 43
    pool: str = "stream"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"CCC pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        seeds = SEEDS if self.pool == "stream" else HELD_OUT_SEEDS
        for field, value, valid in (("baseline", self.baseline, BASELINES), ("speed", self.speed, SPEEDS),
                                    ("seed", self.seed, seeds)):
            if value not in valid:
                shown = f"{valid.start}-{valid.stop - 1}" if isinstance(valid, range) else ", ".join(map(str, valid))
                raise ValueError(f"CCC {field} must be one of {shown}, got {value}")

    @property
    def name(self) -> str:
        return f"baseline_{self.baseline}_transition+speed_{self.speed}_seed_{self.seed}"

    @property
    def difficulty(self) -> str:
        return DIFFICULTY[self.baseline]

    @property
    def noises(self) -> tuple[str, ...]:
        return NOISE_POOLS[self.baseline] if self.pool == "stream" else HELD_OUT_NOISES

    @property
    def shard_size(self) -> int:
        return shard_size(self.speed)

    @property
    def length(self) -> int:
        return stream_length(self.speed)

    @classmethod
    def parse(cls, name: str, pool: str = "stream") -> "CCCSpec":
        match = STREAM_NAME.match(name)
        values = tuple(map(int, match.groups())) if match else ()
        if pool == "heldout" and match and values[0] in BASELINES and values[1] in SPEEDS and values[2] in HELD_OUT_SEEDS:
            return cls(*values, pool=pool)
        if not match or values[0] not in BASELINES or values[1] not in SPEEDS or values[2] not in SEEDS:
            raise ValueError(
                f"Unknown CCC stream {name!r}.{suggest(name, all_stream_names())} Stream names look like "
                f"'baseline_20_transition+speed_1000_seed_43' (baseline 0/20/40, speed 1000/2000/5000, "
                + ("seed 0-63; held-out streams are for `stream-monitor calibrate`)." if pool == "heldout" else
                   "seed 43/44/45); `stream-monitor list streams` prints all 27.")
            )
        return cls(*values)


def shard_size(speed: int) -> int:
    """Images per shard: 25,000 rounded up to whole lattice points (26,000 at speed 2000)."""
    return math.ceil(IMAGES_PER_SHARD / speed) * speed


def stream_length(speed: int) -> int:
    """Images in a stream: whole shards until the 7.5M cutoff is reached (2000 -> 289 x 26,000)."""
    size = shard_size(speed)
    return math.ceil(CUTOFF / size) * size


def all_stream_names() -> list[str]:
    return [CCCSpec(b, s, seed).name for b in BASELINES for s in SPEEDS for seed in SEEDS]


def target_accuracy(baseline: int, num_classes: int) -> float:
    """The running-mean accuracy (%) the path search aims at.

    The reference uses the baseline itself for ImageNet (chance 0.1%). With few classes chance is
    far from zero, so the baselines are taken relative to chance: chance + b (1 - chance); for
    10 classes Hard/Medium/Easy aim at 10% / 28% / 46%.
    """
    if num_classes >= 1000:
        return float(baseline)
    chance = 100.0 / num_classes
    return chance + baseline * (1.0 - chance / 100.0)


def find_path(matrix: np.ndarray, target: float) -> list[tuple[int, int]]:
    """Severity path for one ordered pair: grid points from (i, 0) to (0, j), i >= 1.

    `matrix[i, j]` is the accuracy with noise A at severity i/4 followed by noise B at j/4. At
    each point the path steps to (i - 1, j) or (i, j + 1), whichever keeps the mean accuracy of
    the rest of the path closer to `target` (the reference's memoised greedy recursion, ties going
    to (i, j + 1)); the start row with the mean closest to the target wins (first on ties).
    """
    rows, cols = matrix.shape
    cost = np.zeros((rows, cols + 1))
    length = np.zeros((rows, cols + 1), dtype=np.int64)
    step_down = np.zeros((rows, cols), dtype=bool)  # True: next point is (i - 1, j)
    cost[:, cols] = 9999999999999.0  # off the grid: the reference's sentinel, length 1
    length[:, cols] = 1
    cost[0, :cols] = matrix[0]
    length[0, :cols] = 1
    for i in range(1, rows):
        for j in range(cols - 1, -1, -1):
            value = matrix[i, j]
            down = abs((cost[i - 1, j] + value) / (length[i - 1, j] + 1) - target)
            right = abs((cost[i, j + 1] + value) / (length[i, j + 1] + 1) - target)
            if down < right:
                cost[i, j], length[i, j], step_down[i, j] = cost[i - 1, j] + value, length[i - 1, j] + 1, True
            else:
                cost[i, j], length[i, j] = cost[i, j + 1] + value, length[i, j + 1] + 1
    best = min(range(1, rows), key=lambda i: abs(cost[i, 0] / length[i, 0] - target))
    path, i, j = [(best, 0)], best, 0
    while i > 0:
        i, j = (i - 1, j) if step_down[i, j] else (i, j + 1)
        if j >= cols:
            raise ValueError("path search left the grid; is the accuracy matrix finite?")
        path.append((i, j))
    return path


@dataclass(frozen=True)
class Point:
    """One lattice point of a stream: noise A fading out, noise B fading in."""

    noise_a: str
    severity_a: float
    noise_b: str
    severity_b: float


class CCCWalk:
    """The sequence of lattice points of a CCC stream, generated lazily and cached.

    `matrices[(a, b)]` is the 21x21 accuracy matrix (%) of the source model for the ordered pair.
    Point k covers stream images [k * speed, (k + 1) * speed).
    """

    def __init__(self, spec: CCCSpec, matrices: Mapping[tuple[str, str], np.ndarray], num_classes: int) -> None:
        self.spec = spec
        self.target = target_accuracy(spec.baseline, num_classes)
        noises = spec.noises
        missing = [(a, b) for a in noises for b in noises if a != b and (a, b) not in matrices]
        if missing:
            raise ValueError(f"accuracy matrix lacks {len(missing)} ordered pairs of {spec.name}, e.g. {missing[0]}")
        self._paths = {(a, b): find_path(np.asarray(matrices[a, b], dtype=np.float64), self.target)
                       for a in noises for b in noises if a != b}
        self._points: list[Point] = []
        self._pairs = self._walk_pairs(noises, spec.seed)

    @property
    def num_points(self) -> int:
        return self.spec.length // self.spec.speed

    def point(self, k: int) -> Point:
        if not 0 <= k < self.num_points:
            raise IndexError(f"point {k} outside the stream's {self.num_points} points")
        while len(self._points) <= k:
            a, b = next(self._pairs)
            self._points.extend(Point(a, i * GRID_STEP, b, j * GRID_STEP) for i, j in self._paths[a, b])
        return self._points[k]

    def point_of_image(self, index: int) -> Point:
        return self.point(index // self.spec.speed)

    def points(self, start: int = 0, stop: int | None = None) -> Iterator[Point]:
        for k in range(start, self.num_points if stop is None else stop):
            yield self.point(k)

    @staticmethod
    def _walk_pairs(noises: Sequence[str], seed: int) -> Iterator[tuple[str, str]]:
        # Same draws as generate.py, which seeds the global `random` with the stream seed.
        rng = random.Random(seed)
        a = rng.choice(noises)
        b = rng.choice(noises)
        while b == a:
            b = rng.choice(noises)
        while True:
            yield a, b
            a = b
            while a == b:
                b = rng.choice(noises)
