"""ImageFolderSource on tiny folders of PIL-written PNG/JPEG files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from stream_monitor.sources.base import Batch, StreamSource
from stream_monitor.sources.imagefolder import ImageFolderSource

CLASSES = ("zebra", "ant", "moth")  # sorted: ant, moth, zebra


def _make(tmp_path, per_class=3, corrupt=None):
    root = tmp_path / "val"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (40 * c + 10 * i, 200 - 30 * i, 90 + 50 * c)
            size = (48 + 8 * i, 40)  # landscape images of varying width
            ext = "png" if i % 2 else "jpg"
            Image.new("RGB", size, colour).save(root / name / f"img{i}.{ext}", quality=95)
    (root / "README.txt").write_text("not an image, not a class")
    (root / "ant" / "notes.txt").write_text("ignored: not an image extension")
    if corrupt:
        (root / corrupt).write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    return root


def test_classes_labels_and_sorted_order(tmp_path):
    src = ImageFolderSource(_make(tmp_path), image_size=32, resize=36)
    assert isinstance(src, StreamSource)
    assert src.classes == ["ant", "moth", "zebra"] and src.num_classes == 3 and src.length == 9
    whole = Batch.concat(list(src.read(0, src.length, batch_size=4)))
    assert whole.indices.tolist() == list(range(9))
    assert whole.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert whole.images.dtype == np.uint8 and whole.images.shape == (9, 3, 32, 32)
    assert set(whole.noise_a) == {""} and not whole.severity_a.any() and not whole.severity_b.any()
    # ant/img0 (c = 1) is (40, 200, 140): resize + centre crop keeps a flat image flat
    assert np.abs(whole.images[0].reshape(3, -1).mean(1) - [40, 200, 140]).max() < 3


def test_halves_equal_whole_and_shuffle_is_seeded(tmp_path):
    root = _make(tmp_path)
    src = ImageFolderSource(root, image_size=32, resize=32, shuffle_seed=7)
    whole = Batch.concat(list(src.read(0, 9, batch_size=3)))
    halves = Batch.concat(list(src.read(0, 4, batch_size=3)) + list(src.read(4, 9, batch_size=3)))
    np.testing.assert_array_equal(whole.images, halves.images)
    np.testing.assert_array_equal(whole.labels, halves.labels)
    again = ImageFolderSource(root, image_size=32, resize=32, shuffle_seed=7)
    assert [p for p, _ in again.samples] == [p for p, _ in src.samples]
    plain = ImageFolderSource(root, image_size=32, resize=32)
    assert [p for p, _ in plain.samples] != [p for p, _ in src.samples]
    assert sorted(src.samples) == sorted(plain.samples)


def test_corrupt_file_is_skipped_counted_and_logged(tmp_path, caplog):
    root = _make(tmp_path, corrupt="moth/broken.jpg")
    src = ImageFolderSource(root, image_size=32, resize=36)
    assert src.length == 10
    bad = [i for i, (p, _) in enumerate(src.samples) if p.endswith("broken.jpg")][0]
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.imagefolder"):
        whole = Batch.concat(list(src.read(0, src.length, batch_size=4)))
    assert whole.indices.tolist() == [i for i in range(10) if i != bad]
    assert whole.labels.tolist() == [src.samples[i][1] for i in whole.indices]
    assert len(whole.skipped) == 1 and "broken.jpg" in whole.skipped[0]
    assert "broken.jpg" in caplog.text


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*<root>/<class>/<image>"):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolderSource(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderSource(tmp_path / "empty")


def test_a_folder_stream_is_shuffled_seeded_and_as_long_as_the_run_asks(tmp_path):
    """Sorted, a window of 100 would hold one digit; shuffled, every window holds the folder's
    balance, over as many reshuffled passes as the run's images need, and the same seed reads the
    same positions in any slicing (what a resume reads)."""
    from stream_monitor.sources.factory import open_source
    from stream_monitor.models import load_model
    from tests.conftest import write_glyph_folder

    root = write_glyph_folder(tmp_path / "glyphs", images=200)
    model = load_model("embedded")
    source = open_source("imagefolder", data=root, model=model, seed=3, images=1000)
    assert source.length == 1000 and source.passes == 5
    labels = np.concatenate([b.labels for b in source.read(0, 1000, 100)])
    folder = np.bincount(labels[:200], minlength=10) / 200
    for lo in range(0, 1000, 200):
        window = np.bincount(labels[lo:lo + 200], minlength=10) / 200
        np.testing.assert_allclose(window, folder)  # each pass is the whole folder
        assert len(set(labels[lo:lo + 50].tolist())) >= 6  # and its first quarter already mixes the classes
    passes = [tuple(source.sample(i)[0] for i in range(p * 200, (p + 1) * 200)) for p in range(5)]
    assert len(set(passes)) == 5  # each pass reshuffled
    again = open_source("imagefolder", data=root, model=model, seed=3, images=600)
    np.testing.assert_array_equal(Batch.concat(list(again.read(370, 430, 64))).images,
                                  Batch.concat(list(source.read(370, 430, 64))).images)
    other = open_source("imagefolder", data=root, model=model, seed=4, images=200)
    assert [other.sample(i) for i in range(200)] != [source.sample(i) for i in range(200)]
