"""The calibration meta-set's domains: held-out corruptions only, deterministic, sliceable."""

import numpy as np
import pytest

from sources.factory import open_source
from sources.heldout import HeldOutDomainSource, parse_domain


def test_domains_are_clean_or_a_held_out_corruption():
    assert parse_domain("clean") == ("", 0.0)
    assert parse_domain("spatter:2.5") == ("spatter", 2.5)
    with pytest.raises(ValueError, match="the stream's 15 are never used to fit"):
        parse_domain("fog:3")  # a stream corruption
    with pytest.raises(ValueError, match=r"severity must be in \(0, 5\]"):
        parse_domain("saturate:7")


def test_a_slice_equals_the_same_rows_of_the_whole():
    source = HeldOutDomainSource("gaussian_blur:3", length=256)
    whole = next(source.read(0, 200, 200))
    part = next(source.read(70, 130, 60))
    assert np.array_equal(part.images, whole.images[70:130]) and np.array_equal(part.labels, whole.labels[70:130])
    assert set(part.noise_a) == {"gaussian_blur"} and set(part.severity_a) == {3.0}


def test_domains_differ_in_images_and_severity_hurts():
    clean = next(HeldOutDomainSource("clean", 64).read(0, 64))
    noisy = next(HeldOutDomainSource("speckle_noise:5", 64).read(0, 64))
    assert not np.array_equal(clean.labels, noisy.labels)  # each domain reads its own part of the range
    assert noisy.images.astype(float).std() != clean.images.astype(float).std()


def test_the_factory_opens_a_domain_for_the_embedded_model_only():
    assert open_source("heldout", "clean").name == "heldout/clean"
