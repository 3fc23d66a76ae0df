"""The meta-set's shift families (sources.shifts)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.sources.shifts import ShiftedGlyphSource, parse_shift
from stream_monitor.metaset import DEFAULT_DOMAINS, family_of


def test_every_default_domain_parses_and_names_its_family():
    families = {family_of(d) for d in DEFAULT_DOMAINS}
    assert families == {"clean", "heldout", "compose", "mix", "affine", "invert", "occlude"}
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


def test_images_are_a_pure_function_of_domain_and_position():
    a = ShiftedGlyphSource("occlude:3", 256).render(64, 96)
    b = ShiftedGlyphSource("occlude:3", 256).render(0, 128)
    np.testing.assert_array_equal(a.images, b.images[64:96])
    assert a.images.dtype == np.uint8 and a.images.shape == (32, 3, 32, 32)
    clean = ShiftedGlyphSource("clean", 256).render(64, 96)
    assert not np.array_equal(a.images, clean.images)  # the same glyph offsets differ by domain
