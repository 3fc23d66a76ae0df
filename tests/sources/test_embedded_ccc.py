"""The embedded CCC stream: indexed slices, CCC info, labels, crop option."""

import numpy as np
import pytest
import torch

from stream_monitor.sources.ccc import NOISE_POOLS, CCCSpec
from stream_monitor.sources.embedded_ccc import UNIT, EmbeddedCCCSource
from stream_monitor.sources.glyphs import STREAM, GlyphDomain


def flat_matrices(noises, value=30.0):
    grid = np.full((21, 21), value)
    grid[0] = grid[:, 0] = 90.0
    return {(a, b): grid for a in noises for b in noises if a != b}


@pytest.fixture(scope="module")
def hard_stream():
    # CCC-Hard draws from gaussian/shot/impulse noise and contrast: cheap to render.
    return EmbeddedCCCSource(CCCSpec(0, 1000, 43), flat_matrices(NOISE_POOLS[0]))


def test_two_halves_equal_the_whole(hard_stream):
    start, stop, cut = 930, 1130, 1001  # crosses a lattice point and several render units
    whole = hard_stream.render(start, stop)
    halves = [hard_stream.render(start, cut), EmbeddedCCCSource(
        hard_stream.spec, flat_matrices(NOISE_POOLS[0])).render(cut, stop)]
    for field in ("indices", "images", "labels", "noise_a", "severity_a", "noise_b", "severity_b"):
        assert np.array_equal(np.concatenate([getattr(h, field) for h in halves]), getattr(whole, field)), field


def test_read_yields_batches_that_concatenate_to_the_slice(hard_stream):
    batches = list(hard_stream.read(100, 300, batch_size=64))
    assert [len(b) for b in batches] == [64, 64, 64, 8]
    merged = np.concatenate([b.images for b in batches])
    assert np.array_equal(merged, hard_stream.render(100, 300).images)


def test_every_image_carries_ccc_info_and_its_label(hard_stream):
    batch = hard_stream.render(0, 2 * UNIT)
    point = hard_stream.walk.point(0)
    assert set(batch.noise_a) == {point.noise_a} and set(batch.noise_b) == {point.noise_b}
    assert np.all(batch.severity_a == point.severity_a) and np.all(batch.severity_b == point.severity_b)
    domain = GlyphDomain(0, 32)
    offset = STREAM.start + 43 * (1 << 36)
    _, labels = domain.render_range(offset, offset + 2 * UNIT)
    assert np.array_equal(batch.labels, labels.numpy())
    assert batch.images.dtype == np.uint8 and batch.images.shape == (2 * UNIT, 3, 32, 32)


def test_crop_changes_images_but_not_labels():
    spec, m = CCCSpec(0, 1000, 44), flat_matrices(NOISE_POOLS[0])
    cropped = EmbeddedCCCSource(spec, m, crop=True).render(0, 64)
    plain = EmbeddedCCCSource(spec, m, crop=False).render(0, 64)
    assert np.array_equal(cropped.labels, plain.labels)
    assert not np.array_equal(cropped.images, plain.images)


def test_length_cap_and_bad_slices():
    source = EmbeddedCCCSource(CCCSpec(0, 1000, 43), flat_matrices(NOISE_POOLS[0]), length=500)
    assert source.length == 500
    assert sum(len(b) for b in source.read(400, 10_000)) == 100
    with pytest.raises(ValueError, match="invalid slice"):
        list(source.read(300, 200))


def test_streams_of_different_seeds_differ():
    m = flat_matrices(NOISE_POOLS[0])
    a = EmbeddedCCCSource(CCCSpec(0, 1000, 43), m).render(0, 32)
    b = EmbeddedCCCSource(CCCSpec(0, 1000, 45), m).render(0, 32)
    assert not np.array_equal(a.labels, b.labels) or not np.array_equal(a.images, b.images)


def test_a_held_out_stream_walks_only_the_held_out_corruptions_on_images_of_its_own():
    from stream_monitor.sources.ccc import HELD_OUT_NOISES
    from stream_monitor.sources.corruptions import STREAM_CORRUPTIONS
    from stream_monitor.sources.glyphs import CALIBRATION_STREAMS

    spec = CCCSpec.parse("baseline_20_transition+speed_1000_seed_7", pool="heldout")
    source = EmbeddedCCCSource(spec, flat_matrices(HELD_OUT_NOISES))
    assert source.name == "embedded-heldout/baseline_20_transition+speed_1000_seed_7"
    seen = {p.noise_a for p in source.walk.points(0, 40)} | {p.noise_b for p in source.walk.points(0, 40)}
    assert seen <= set(HELD_OUT_NOISES) and not seen & set(STREAM_CORRUPTIONS)
    assert CALIBRATION_STREAMS.start <= source._offset < source._offset + source.length <= CALIBRATION_STREAMS.stop
    stream = EmbeddedCCCSource(CCCSpec(20, 1000, 43), flat_matrices(NOISE_POOLS[20]))
    assert source._offset + source.length <= stream._offset  # never an image of a test stream


def test_held_out_seeds_and_pools_are_checked():
    with pytest.raises(ValueError, match="seed 0-63"):
        CCCSpec.parse("baseline_20_transition+speed_1000_seed_99", pool="heldout")
    with pytest.raises(ValueError, match="seed 43/44/45"):
        CCCSpec.parse("baseline_20_transition+speed_1000_seed_7")  # a held-out seed is no test stream
    with pytest.raises(ValueError, match="pool must be one of stream, heldout"):
        CCCSpec(20, 1000, 43, pool="train")
