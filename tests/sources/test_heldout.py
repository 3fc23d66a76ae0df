"""The calibration meta-set's domains: held-out corruptions only, deterministic, sliceable."""

import numpy as np
import pytest

from stream_monitor.sources.factory import open_source
from stream_monitor.sources.heldout import HeldOutDomainSource, parse_domain


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


def test_an_image_folder_domain_is_sliceable_reshuffled_and_corrupted(tmp_path):
    from stream_monitor.sources.base import Batch
    from stream_monitor.sources.heldout import FOLDER_DOMAINS, HeldOutFolderSource
    from tests.conftest import write_glyph_folder

    root = write_glyph_folder(tmp_path / "val", images=30)
    source = HeldOutFolderSource(root, "speckle_noise:4", length=70, image_size=32, resize=32, profile="embedded")
    assert source.num_classes == 10 and source.length == 70 and source.folder.passes == 3
    whole = Batch.concat(list(source.read(0, 70, 16)))
    part = Batch.concat(list(source.read(25, 47, 8)))
    assert np.array_equal(part.images, whole.images[25:47]) and np.array_equal(part.labels, whole.labels[25:47])
    assert set(part.noise_a) == {"speckle_noise"} and set(part.severity_a) == {4.0}
    # each pass holds every image once, later passes in a fresh order
    firsts = [sorted(map(str, whole.labels[k:k + 30])) for k in (0, 30)]
    assert firsts[0] == firsts[1] and not np.array_equal(whole.labels[:30], whole.labels[30:60])
    clean = Batch.concat(list(HeldOutFolderSource(root, "clean", 30, 32, 32, "embedded").read(0, 30)))
    assert np.abs(clean.images.astype(float) - whole.images[:30].astype(float)).mean() > 5  # the noise is there
    assert len(FOLDER_DOMAINS) == 21 and "clean" in FOLDER_DOMAINS and "spatter:5" in FOLDER_DOMAINS
    with pytest.raises(ValueError, match="never used to fit"):
        HeldOutFolderSource(root, "fog:3", 10)


def test_the_factory_opens_a_folder_domain_for_any_model(tmp_path):
    from tests.conftest import write_glyph_folder

    root = write_glyph_folder(tmp_path / "val", images=12)
    assert open_source("heldout", "saturate:2", data=root).name == "heldout/val/saturate:2"
