"""The tuned embedded constants: one table per corruption, stronger than CIFAR-10-C's."""

import numpy as np
import pytest
import torch

from stream_monitor.sources.corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS, get_corruption
from stream_monitor.sources.corruptions.embedded_profile import EMBEDDED
from stream_monitor.sources.glyphs import GlyphDomain


def test_every_corruption_reads_its_table_from_the_profile():
    assert set(EMBEDDED) == set(CORRUPTIONS.names())
    for name in CORRUPTIONS:
        levels = get_corruption(name).levels
        assert levels["embedded"] is EMBEDDED[name]
        assert levels["embedded"].shape == levels["cifar"].shape


@pytest.fixture(scope="module")
def glyphs():
    x, _ = GlyphDomain().render_range(0, 16)
    return x.float() / 255


# Brightness is tuned stronger too, but is compared in its own test below (HSV clipping).
@pytest.mark.parametrize("name", [n for n in STREAM_CORRUPTIONS if n != "brightness"] + ["speckle_noise", "gaussian_blur"])
def test_severity_five_changes_images_more_than_cifar(name, glyphs):
    c = get_corruption(name)

    def change(profile):
        out = c(glyphs, 5.0, torch.Generator().manual_seed(0), profile)
        return float((out - glyphs).abs().mean())

    assert change("embedded") > change("cifar")


def test_brightness_is_stronger(glyphs):
    c = get_corruption("brightness")
    out = {p: c(glyphs, 5.0, torch.Generator().manual_seed(0), p) for p in ("embedded", "cifar")}
    assert float(out["embedded"].mean()) > float(out["cifar"].mean())


def test_held_out_lists_are_disjoint_from_the_stream():
    assert not set(HELD_OUT_CORRUPTIONS) & set(STREAM_CORRUPTIONS)
    assert len(STREAM_CORRUPTIONS) == 15 and len(HELD_OUT_CORRUPTIONS) == 4
