"""The meta-set's shift families (sources.shifts)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.sources.shifts import ShiftedGlyphSource, parse_shift
from stream_monitor.metaset import DEFAULT_DOMAINS, VALIDATION_DOMAINS, family_of


def test_every_default_domain_parses_and_names_its_family():
    families = {family_of(d) for d in DEFAULT_DOMAINS}
    assert families == {"clean", "heldout", "compose", "mix", "affine", "invert", "occlude"}
    assert {family_of(d) for d in VALIDATION_DOMAINS} == {"jigsaw", "stripes", "channel"}  # never in a fit
    assert parse_shift("clean/whole").crop is False and parse_shift("clean").crop is True


@pytest.mark.parametrize("text, message", [
    ("blur:3", "family must be one of"),
    ("heldout:gaussian_noise:3", "not a held-out corruption"),  # a stream corruption never enters the meta-set
    ("affine:7", r"strength must be in \(0, 5\]"),
    ("mix:0.5:speckle_noise:x", "is not a number"),
])
def test_bad_domains_are_refused_with_the_valid_forms(text, message):
    with pytest.raises(ValueError, match=message):
        parse_shift(text)


def test_jigsaw_permutes_tiles_and_keeps_every_pixel():
    import torch

    x = torch.rand(3, 3, 32, 32)
    out = parse_shift("jigsaw:5").apply(x, torch.Generator().manual_seed(0), "embedded")
    tiles = lambda t: t.reshape(3, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(3, 16, -1)  # noqa: E731
    for before, after in zip(tiles(x), tiles(out)):
        assert sorted(map(tuple, after.tolist())) == sorted(map(tuple, before.tolist()))  # the same tiles
    assert not torch.equal(out, x)
    mild = parse_shift("jigsaw:1").apply(x, torch.Generator().manual_seed(0), "embedded")
    moved = lambda y: (tiles(y) != tiles(x)).any(-1).sum().item()  # noqa: E731
    assert 0 < moved(mild) < moved(out)


def test_stripes_add_a_grating_that_grows_with_strength_and_channel_swaps_colours():
    import torch

    x = torch.full((2, 3, 32, 32), 0.5)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    weak, strong = (parse_shift(f"stripes:{s}").apply(x, g(), "embedded") - x for s in (1, 5))
    assert torch.allclose(weak[:, 0], weak[:, 1]) and weak.abs().max() <= 0.06 + 1e-6  # grey, amplitude 0.06 S
    assert strong.abs().max() > 4 * weak.abs().max() - 1e-6
    colour = torch.rand(4, 3, 8, 8)
    swapped = parse_shift("channel:5").apply(colour, g(), "embedded")
    for before, after in zip(colour, swapped):
        assert any(torch.equal(after, before[list(order)]) for order in
                   ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)))


def test_images_are_a_pure_function_of_domain_and_position():
    a = ShiftedGlyphSource("occlude:3", 256).render(64, 96)
    b = ShiftedGlyphSource("occlude:3", 256).render(0, 128)
    np.testing.assert_array_equal(a.images, b.images[64:96])
    assert a.images.dtype == np.uint8 and a.images.shape == (32, 3, 32, 32)
    clean = ShiftedGlyphSource("clean", 256).render(64, 96)
    assert not np.array_equal(a.images, clean.images)  # the same glyph offsets differ by domain


@pytest.mark.parametrize("domain, digest", [  # sha256 prefixes of images + labels before ShiftedSource existed
    ("clean/whole", "4ddef738ce531e60"), ("mix:0.5:speckle_noise:5/whole", "5763801c30ccfacf"),
    ("occlude:3", "9f38f3c9e9bf79a6"), ("compose:spatter:3+gaussian_blur:2", "e0812fba7a502b67"),
    ("affine:3", "109dc1f51c74e86b"),
    # the validation families, as benchmarks/results/metaset_embedded_validation.jsonl was built
    ("jigsaw:3/whole", "a97f64e67b008cdd"), ("stripes:2", "bddbd44356c7bf9b"), ("channel:3", "af89aa0dbf4f390d"),
])
def test_the_embedded_meta_set_renders_the_same_images_as_before(domain, digest):
    import hashlib

    batch = ShiftedGlyphSource(domain, 512).render(64, 160)
    assert hashlib.sha256(batch.images.tobytes() + batch.labels.tobytes()).hexdigest()[:16] == digest


def folder_source(tmp_path, images: int = 24):
    from stream_monitor.sources.imagefolder import ImageFolderSource
    from tests.conftest import write_glyph_folder

    return ImageFolderSource(write_glyph_folder(tmp_path / "val", images=images), image_size=32, resize=32,
                             shuffle_seed=0)


@pytest.mark.parametrize("domain", ["clean/whole", "occlude:3", "mix:0.5:speckle_noise:5/whole", "invert:5/whole"])
def test_a_shift_of_any_source_keeps_its_labels_and_is_a_pure_function_of_domain_and_position(tmp_path, domain):
    from stream_monitor.sources.shifts import ShiftedSource

    base = folder_source(tmp_path)
    source = ShiftedSource(base, domain, 20, profile="embedded", offset=2)
    whole = list(source.read(0, 20, batch_size=8))
    again = list(ShiftedSource(base, domain, 20, profile="embedded", offset=2).read(5, 13, batch_size=3))
    images = np.concatenate([b.images for b in whole])
    assert images.dtype == np.uint8 and images.shape == (20, 3, 32, 32)
    assert np.concatenate([b.indices for b in whole]).tolist() == list(range(20))
    np.testing.assert_array_equal(np.concatenate([b.images for b in again]), images[5:13])
    labels = np.concatenate([b.labels for b in base.read(2, 22, 20)])
    np.testing.assert_array_equal(np.concatenate([b.labels for b in whole]), labels)  # the base's truth
    assert set(np.concatenate([b.noise_a for b in whole])) == {parse_shift(domain).family}
    original = np.concatenate([b.images for b in base.read(2, 22, 20)])
    if domain == "invert:5/whole":  # a photographic negative, up to the JPEG round trip
        assert np.abs(images.astype(int) - (255 - original.astype(int))).mean() < 10
    elif domain != "clean/whole":
        assert not np.array_equal(images, original)


def test_a_shifted_source_refuses_a_domain_its_base_cannot_fill(tmp_path):
    from stream_monitor.sources.shifts import ShiftedSource

    with pytest.raises(ValueError, match="has 24 images; the domain 'clean' needs positions 10 to 40"):
        ShiftedSource(folder_source(tmp_path), "clean", 30, offset=10)
    with pytest.raises(ValueError, match="family must be one of"):
        ShiftedSource(folder_source(tmp_path), "blur:3", 10)
