"""Fault injection on the data path: hostile shard members and image files are skipped, counted
and named, and every other sample keeps its official stream position."""

from __future__ import annotations

import io
import logging
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg

import stream_monitor.sources.shards as shards
from stream_monitor.sources.base import Batch
from stream_monitor.sources.imagefolder import ImageFolderSource
from stream_monitor.sources.shards import CCCShardSource, count_shard_positions, count_shard_samples
from stream_monitor.runtime.messages import split_batches

STREAM = "baseline_20_transition+speed_1000_seed_43"
SIZE = 32
PER_SHARD = 8
SHARDS = 3
LENGTH = SHARDS * PER_SHARD


def _image(pos: int) -> torch.Tensor:
    colour = torch.tensor([(pos * 37) % 256, (pos * 91) % 256, (pos * 53) % 256], dtype=torch.uint8)
    return colour[:, None, None].expand(3, SIZE, SIZE).contiguous()


def _jpeg(pos: int) -> bytes:
    return bytes(encode_jpeg(_image(pos), quality=95).numpy())


def _claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A small JPEG whose SOF header claims another size (a decompression bomb's header)."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9:]


def _members(pos: int) -> dict[str, bytes]:
    return {"info": b"++dir++n0++name++x.JPEG++n1++snow++s1++1.0++n2++fog++s2++2.0",
            "input.jpg": _jpeg(pos), "output.cls": str(pos % 10).encode()}


def _write(tmp_path, edit=None):
    """Shards of flat images; `edit(pos, members)` changes one sample's members (names are
    ``<key>.<ext>``) and may add foreign ones, returned as {member name: bytes}."""
    folder = tmp_path / STREAM
    folder.mkdir(parents=True)
    for s in range(SHARDS):
        with tarfile.open(folder / f"serial_{s:05d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                pos = s * PER_SHARD + i
                files = {f"sample_{i}.{ext}": data for ext, data in _members(pos).items()}
                if edit is not None:
                    files = edit(pos, files)
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return tmp_path


def _edit_one(target: int, change):
    return lambda pos, files: change(files) if pos == target else files


def _read(root, **kw) -> tuple[CCCShardSource, Batch]:
    src = CCCShardSource(root, STREAM, image_size=SIZE, **{"shard_size": PER_SHARD, **kw})
    return src, Batch.concat(list(src.read(0, src.length, batch_size=5)))


def _assert_official_positions(whole: Batch, missing: set[int]) -> None:
    """Every position but `missing` is served, with its own image and label: nothing shifted."""
    assert whole.indices.tolist() == [p for p in range(LENGTH) if p not in missing]
    assert whole.labels.tolist() == [p % 10 for p in whole.indices]
    for row, pos in enumerate(whole.indices):
        assert np.abs(whole.images[row].astype(int) - _image(int(pos)).numpy().astype(int)).max() <= 3


def _with(ext: str, data: bytes):
    def change(files):
        key = next(iter(files)).split(".")[0]
        return {**files, f"{key}.{ext}": data}
    return change


# ------------------------------------------------------------------------------- shard members


def test_zero_byte_jpeg_is_skipped_not_fatal(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        _, whole = _read(_write(tmp_path, _edit_one(10, _with("input.jpg", b""))))
    assert whole.skipped == ["serial_00001.tar:sample_2: input.jpg is empty (0 bytes)"]
    assert "serial_00001.tar:sample_2 skipped: input.jpg is empty" in caplog.text
    _assert_official_positions(whole, {10})


@pytest.mark.parametrize("cut, reason", [
    (0.5, r"corrupt JPEG \(.+\)"),  # header intact, scan data cut: the decoder refuses it
    (40, r"corrupt JPEG \(cannot read the image header \(.+\)\)"),  # cut inside the header
])
def test_truncated_jpeg_is_skipped(tmp_path, cut, reason):
    jpeg = _jpeg(10)
    end = int(len(jpeg) * cut) if isinstance(cut, float) else cut
    _, whole = _read(_write(tmp_path, _edit_one(10, _with("input.jpg", jpeg[:end]))))
    assert len(whole.skipped) == 1
    assert re.fullmatch(rf"serial_00001\.tar:sample_2: {reason}", whole.skipped[0])
    _assert_official_positions(whole, {10})


def test_a_non_jpeg_input_is_skipped(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(png, format="PNG")
    _, whole = _read(_write(tmp_path, _edit_one(3, _with("input.jpg", png.getvalue()))))
    assert whole.skipped == ["serial_00000.tar:sample_3: input.jpg is not a JPEG (its header reads PNG)"]
    _assert_official_positions(whole, {3})


@pytest.mark.parametrize("index", [5, PER_SHARD - 1])
def test_missing_label_keeps_the_shard_size_and_every_position(tmp_path, index):
    """Counting only complete samples made serial_00000 one short: every later position shifted."""
    drop = lambda files: {n: d for n, d in files.items() if not n.endswith(".output.cls")}  # noqa: E731
    root = _write(tmp_path, _edit_one(index, drop))
    shard = root / STREAM / "serial_00000.tar"
    assert count_shard_samples(shard) == PER_SHARD - 1  # generation still rewrites such a shard
    assert count_shard_positions(shard) == PER_SHARD
    src = CCCShardSource(root, STREAM, image_size=SIZE)  # shard size read off serial_00000
    assert src.shard_size == PER_SHARD and src.length == LENGTH
    whole = Batch.concat(list(src.read(0, src.length, batch_size=5)))
    assert whole.skipped == [f"serial_00000.tar:sample_{index}: sample has no output.cls member"]
    _assert_official_positions(whole, {index})


@pytest.mark.parametrize("cls, reason", [
    (b"5000", "output.cls 5000 is outside the class range [0, 1000)"),
    (b"1000", "output.cls 1000 is outside the class range [0, 1000)"),
    (b"-1", "output.cls -1 is outside the class range [0, 1000)"),
    (b"", "output.cls is not an integer class index: b''"),
    (b"7 cats", "output.cls is not an integer class index: b'7 cats'"),
])
def test_invalid_label_is_skipped_never_served(tmp_path, cls, reason):
    _, whole = _read(_write(tmp_path, _edit_one(17, _with("output.cls", cls))))
    assert whole.skipped == [f"serial_00002.tar:sample_1: {reason}"]
    _assert_official_positions(whole, {17})


def test_label_range_follows_num_classes(tmp_path):
    _, whole = _read(_write(tmp_path), num_classes=8)
    assert whole.indices.tolist() == [p for p in range(LENGTH) if p % 10 < 8]
    assert whole.skipped[0] == "serial_00001.tar:sample_0: output.cls 8 is outside the class range [0, 8)"
    assert len(whole.skipped) == sum(p % 10 >= 8 for p in range(LENGTH))


@pytest.mark.parametrize("alias", ["../../sample_3", "/sample_3", "other/sample_3", "sample_03"])
def test_a_foreign_member_name_never_stands_in_for_a_position(tmp_path, caplog, alias):
    """The real sample 3 is gone; a member merely ending in sample_3 must not take its place."""
    def replace(files):
        return {name.replace("sample_3", alias): _jpeg(99) if name.endswith("jpg") else data
                for name, data in files.items()}
    root = _write(tmp_path, _edit_one(3, replace))
    assert count_shard_positions(root / STREAM / "serial_00000.tar") == PER_SHARD
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        _, whole = _read(root)
    assert whole.skipped == ["serial_00000.tar:sample_3: not in the shard"]
    assert f"CCC shard serial_00000.tar: ignoring sample {alias!r} (keys are sample_0..sample_7)" in caplog.text
    _assert_official_positions(whole, {3})


def test_an_alias_before_the_real_sample_is_ignored(tmp_path):
    def prepend(files):
        return {"../../sample_3.input.jpg": _jpeg(99), "../../sample_3.output.cls": b"9", **files}
    _, whole = _read(_write(tmp_path, _edit_one(3, prepend)))
    assert whole.skipped == []
    _assert_official_positions(whole, set())


def test_an_index_past_the_shard_neither_aliases_nor_ends_it(tmp_path, caplog):
    def extra(files):
        return {**files, **{f"sample_{PER_SHARD + 3}.{ext}": d for ext, d in _members(99).items()}}
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        _, whole = _read(_write(tmp_path, _edit_one(2, extra)))
    assert whole.skipped == []
    assert "ignoring sample 'sample_11' (keys are sample_0..sample_7)" in caplog.text
    _assert_official_positions(whole, set())


def test_a_duplicate_key_is_logged_and_the_first_kept(tmp_path, caplog):
    def duplicate(files):  # sample_4 again after sample_5, with another image
        return {**files, **{f"sample_4.{ext}": d for ext, d in _members(99).items()}}
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        _, whole = _read(_write(tmp_path, _edit_one(5, duplicate)))
    assert whole.skipped == []
    assert "CCC shard serial_00000.tar: ignoring 'sample_4', a duplicate or out-of-order key" in caplog.text
    _assert_official_positions(whole, set())


def test_oversize_header_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = _claiming(_jpeg(10), 8000, 8000)
    decoded: list[int] = []
    real = shards.decode_jpeg

    def spy(data, **kw):
        decoded.extend(len(d) for d in (data if isinstance(data, list) else [data]))
        return real(data, **kw)

    monkeypatch.setattr(shards, "decode_jpeg", spy)
    _, whole = _read(_write(tmp_path, _edit_one(10, _with("input.jpg", bomb))))
    assert whole.skipped == ["serial_00001.tar:sample_2: image is (3, 8000, 8000), expected (3, 32, 32) "
                             "(pass image_size= to read other sizes)"]
    assert decoded and len(decoded) == LENGTH - 1  # every other image, never the bomb
    _assert_official_positions(whole, {10})


def test_all_faults_at_once_keep_the_run_loop_positions(tmp_path):
    """What the stream worker hands the run loop: fixed windows, each fault counted in its own."""
    faults = {
        2: _with("input.jpg", b""),
        9: _with("output.cls", b"5000"),
        13: lambda files: {n: d for n, d in files.items() if not n.endswith(".output.cls")},
        21: _with("input.jpg", _claiming(_jpeg(21), 8000, 8000)),
    }
    root = _write(tmp_path, lambda pos, files: faults[pos](files) if pos in faults else files)
    src = CCCShardSource(root, STREAM, image_size=SIZE, shard_size=PER_SHARD)
    steps = split_batches(list(src.read(0, LENGTH, batch_size=4)), 0, LENGTH, 4)
    assert [(images.start, images.stop) for images, _ in steps] == [(k, k + 4) for k in range(0, LENGTH, 4)]
    for images, truth in steps:
        bad = sorted(p for p in faults if images.start <= p < images.stop)
        assert images.indices.tolist() == [p for p in range(images.start, images.stop) if p not in bad]
        assert truth.labels.tolist() == [p % 10 for p in images.indices]
        assert len(images) + len(truth.skipped) == images.stop - images.start
        assert [s.split(":")[1] for s in truth.skipped] == [f"sample_{p % PER_SHARD}" for p in bad]


# ------------------------------------------------------------------------------- image folders


def _folder(tmp_path, extra: dict[str, bytes]):
    root = tmp_path / "val"
    for c, name in enumerate(("ant", "moth")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 40), (60 * c + 20 * i, 90, 30)).save(root / name / f"img{i}.png")
    for rel, data in extra.items():
        (root / rel).write_bytes(data)
    return root


def test_image_folder_refuses_a_huge_header_before_decoding(tmp_path):
    root = _folder(tmp_path, {"moth/bomb.jpg": _claiming(_jpeg(1), 8000, 8000)})
    src = ImageFolderSource(root, image_size=32, resize=36)
    bad = [i for i, (p, _) in enumerate(src.samples) if p.endswith("bomb.jpg")]
    whole = Batch.concat(list(src.read(0, src.length, batch_size=3)))
    assert whole.skipped == [f"{root / 'moth' / 'bomb.jpg'}: image is 8000x8000 (64,000,000 pixels), over the "
                             "limit of 50,000,000 (max_pixels=); refused before decoding"]
    assert whole.indices.tolist() == [i for i in range(src.length) if i not in bad]


def test_image_folder_pixel_limit_is_configurable(tmp_path):
    root = _folder(tmp_path, {})
    src = ImageFolderSource(root, image_size=32, resize=36, max_pixels=1000)
    whole = Batch.concat(list(src.read(0, src.length, batch_size=3)))
    assert len(whole) == 0 and len(whole.skipped) == src.length
    assert whole.skipped[0] == (f"{root / 'ant' / 'img0.png'}: image is 48x40 (1,920 pixels), over the limit "
                                "of 1,000 (max_pixels=); refused before decoding")
    limitless = ImageFolderSource(root, image_size=32, resize=36, max_pixels=None)
    assert len(Batch.concat(list(limitless.read(0, limitless.length)))) == limitless.length


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0"])
def test_image_folder_empty_or_headless_file_is_skipped(tmp_path, data):
    root = _folder(tmp_path, {"ant/empty.jpg": data})
    src = ImageFolderSource(root, image_size=32, resize=36)
    whole = Batch.concat(list(src.read(0, src.length, batch_size=2)))
    assert len(whole.skipped) == 1 and len(whole) == src.length - 1
    assert re.fullmatch(re.escape(f"{root / 'ant' / 'empty.jpg'}: unreadable image (cannot read the image header (")
                        + r".+\)\)", whole.skipped[0])
