import torch
import pytest

from stream_monitor.sources.glyphs import BLOCK, CALIBRATION, STREAM, TRAIN, VAL, GlyphDomain, glyph_masks


def test_image_is_a_pure_function_of_seed_and_index():
    d = GlyphDomain(seed=3)
    whole, labels = d.render_range(BLOCK - 10, BLOCK + 30)
    head, lh = GlyphDomain(seed=3).render_range(BLOCK - 10, BLOCK + 5)
    tail, lt = d.render_range(BLOCK + 5, BLOCK + 30)
    assert torch.equal(torch.cat([head, tail]), whole)
    assert torch.equal(torch.cat([lh, lt]), labels)
    other, _ = GlyphDomain(seed=4).render_range(BLOCK - 10, BLOCK + 30)
    assert not torch.equal(other, whole)


def test_output_format_and_size():
    x, y = GlyphDomain(image_size=48).render_range(5, 21)
    assert x.shape == (16, 3, 48, 48) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 10
    empty, _ = GlyphDomain().render_range(7, 7)
    assert empty.shape == (0, 3, 32, 32)


def test_classes_are_balanced_and_images_vary():
    x, y = GlyphDomain().render_range(0, 2000)
    counts = torch.bincount(y, minlength=10)
    assert counts.min() > 150
    # Real intra-class variation: two images of the same class differ substantially.
    same = x[y == 3].float()
    assert (same[0] - same[1]).abs().mean() > 20


def test_index_ranges_are_disjoint():
    ranges = sorted([TRAIN, VAL, CALIBRATION, STREAM], key=lambda r: r.start)
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop <= b.start


def test_masks_come_from_a_scalable_font():
    masks = glyph_masks()
    assert masks.shape[:2] == (10, 4)
    # Thicker strokes cover more pixels.
    assert (masks[:, 1:].sum((2, 3)) > masks[:, :-1].sum((2, 3))).all()


def test_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 16"):
        GlyphDomain(image_size=8)
