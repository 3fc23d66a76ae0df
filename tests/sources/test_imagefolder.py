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
