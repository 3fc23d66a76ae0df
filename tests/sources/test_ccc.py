"""The CCC path search, walk and stream names against independent, literal implementations."""

import random
from functools import lru_cache

import numpy as np
import pytest

from stream_monitor.sources.ccc import (
    CCCSpec, CCCWalk, GRID, NOISE_POOLS, all_stream_names, find_path, target_accuracy,
)


def literal_find_path(matrix, target):
    """A direct recursive transcription of the search described in CCC's generate.py."""
    rows, cols = matrix.shape
    big = 9999999999999

    @lru_cache(maxsize=None)
    def best(i, j):  # -> (cost, path)
        if j >= cols:
            return big, (big,)
        if i == 0:
            return matrix[0][j], ((0, j),)
        down_cost, down_path = best(i - 1, j)
        right_cost, right_path = best(i, j + 1)
        value = matrix[i][j]
        if abs((down_cost + value) / (len(down_path) + 1) - target) < abs(
            (right_cost + value) / (len(right_path) + 1) - target
        ):
            return down_cost + value, ((i, j),) + down_path
        return right_cost + value, ((i, j),) + right_path

    chosen, score = None, float("inf")
    for i in range(1, rows):
        cost, path = best(i, 0)
        if abs(cost / len(path) - target) < score:
            score, chosen = abs(cost / len(path) - target), path
    return list(chosen)


def realistic_matrix(rng, floor_a, floor_b):
    s = np.arange(GRID) / 4
    a = 100 - (100 - floor_a) * (s / 5) ** rng.uniform(0.5, 2)
    b = 100 - (100 - floor_b) * (s / 5) ** rng.uniform(0.5, 2)
    return a[:, None] * b[None, :] / 100 + rng.normal(0, 1.5, (GRID, GRID))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("target", [0.0, 10.0, 28.0, 46.0])
def test_find_path_matches_literal_search(seed, target):
    rng = np.random.default_rng(seed)
    matrix = realistic_matrix(rng, rng.uniform(0, 60), rng.uniform(0, 60))
    assert find_path(matrix, target) == literal_find_path(matrix, target)


def test_path_is_monotone_lattice_walk_from_a_to_b():
    matrix = realistic_matrix(np.random.default_rng(0), 5, 30)
    path = find_path(matrix, 28.0)
    assert path[0][1] == 0 and path[0][0] >= 1 and path[-1][0] == 0
    for (i0, j0), (i1, j1) in zip(path, path[1:]):
        assert (i1, j1) in {(i0 - 1, j0), (i0, j0 + 1)}


def test_path_keeps_running_mean_near_target():
    matrix = realistic_matrix(np.random.default_rng(3), 2, 2)
    for target in (10.0, 28.0, 46.0):
        path = find_path(matrix, target)
        mean = np.mean([matrix[i, j] for i, j in path])
        assert abs(mean - target) < 6


def matrices_for(noises, seed=0):
    rng = np.random.default_rng(seed)
    return {(a, b): realistic_matrix(rng, rng.uniform(0, 40), rng.uniform(0, 40))
            for a in noises for b in noises if a != b}


def test_walk_follows_python_random_like_the_reference():
    spec = CCCSpec(20, 1000, 44)
    noises = NOISE_POOLS[20]
    walk = CCCWalk(spec, matrices_for(noises), num_classes=10)
    rng = random.Random(44)  # generate.py: random.seed(seed), then random.choice
    a = rng.choice(noises)
    b = rng.choice(noises)
    while b == a:
        b = rng.choice(noises)
    k = 0
    for _ in range(5):
        path = find_path(matrices_for(noises)[a, b], walk.target)
        for i, j in path:
            p = walk.point(k)
            assert (p.noise_a, p.severity_a, p.noise_b, p.severity_b) == (a, i / 4, b, j / 4)
            k += 1
        a = b
        while a == b:
            b = rng.choice(noises)


def test_walk_is_random_access_and_deterministic():
    spec = CCCSpec(0, 5000, 43)
    m = matrices_for(NOISE_POOLS[0])
    w1, w2 = CCCWalk(spec, m, 10), CCCWalk(spec, m, 10)
    late = w1.point(300)
    assert [w2.point(k) for k in range(301)][-1] == late
    assert w1.point_of_image(300 * 5000 + 4999) == late
    with pytest.raises(IndexError):
        w1.point(w1.num_points)


def test_lengths_and_shards_match_generate_py():
    assert CCCSpec(20, 1000, 43).length == 7_500_000
    assert CCCSpec(20, 2000, 43).shard_size == 26_000
    assert CCCSpec(20, 2000, 43).length == 289 * 26_000
    assert CCCSpec(20, 5000, 43).length == 7_500_000


def test_targets_relative_to_chance():
    assert target_accuracy(20, 1000) == 20.0  # the reference, ImageNet
    assert target_accuracy(0, 10) == pytest.approx(10.0)
    assert target_accuracy(20, 10) == pytest.approx(28.0)
    assert target_accuracy(40, 10) == pytest.approx(46.0)


def test_stream_names_round_trip_and_errors_list_valid_choices():
    names = all_stream_names()
    assert len(names) == 27 and all(CCCSpec.parse(n).name == n for n in names)
    with pytest.raises(ValueError, match="Did you mean 'baseline_20_transition\\+speed_1000_seed_4"):
        CCCSpec.parse("baseline_20_transition+speed_1000_seed_42")
    with pytest.raises(ValueError, match="seed must be one of 43, 44, 45"):
        CCCSpec(20, 1000, 7)


def test_walk_refuses_incomplete_matrix():
    m = matrices_for(NOISE_POOLS[0])
    del m["contrast", "shot_noise"]
    with pytest.raises(ValueError, match="lacks 1 ordered pairs"):
        CCCWalk(CCCSpec(0, 1000, 43), m, 10)
