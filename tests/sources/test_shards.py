"""CCCShardSource on tiny shards written here with webdataset.TarWriter (no network)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import webdataset
from torchvision.io import encode_jpeg

from stream_monitor.sources.base import Batch, StreamSource
from stream_monitor.sources.shards import (
    OFFICIAL_CCC_URL,
    CCCInfo,
    CCCShardSource,
    ccc_shard_size,
    ccc_stream_length,
    ccc_stream_names,
    count_shard_samples,
    format_info,
    parse_info,
)

STREAM = "baseline_20_transition+speed_1000_seed_43"
SIZE = 32  # image side in these tests
PER_SHARD = 8
SHARDS = 3
NOISES = ("gaussian_noise", "contrast", "snow")


def _image(pos: int) -> torch.Tensor:
    """A distinct flat-colour image per position (survives JPEG well)."""
    colour = torch.tensor([(pos * 37) % 256, (pos * 91) % 256, (pos * 53) % 256], dtype=torch.uint8)
    return colour[:, None, None].expand(3, SIZE, SIZE).contiguous()


def _info(pos: int) -> str:
    return format_info(CCCInfo(f"n{pos:08d}", f"ILSVRC2012_val_{pos:08d}.JPEG", NOISES[pos % 3],
                               pos / 4, NOISES[(pos + 1) % 3], 5 - pos / 8))


def _write(tmp_path, corrupt=(), stream=STREAM, shards=SHARDS):
    folder = tmp_path / stream
    folder.mkdir(parents=True)
    for s in range(shards):
        with webdataset.TarWriter(str(folder / f"serial_{s:05d}.tar"), encoder=False) as sink:
            for i in range(PER_SHARD):
                pos = s * PER_SHARD + i
                jpeg = bytes(encode_jpeg(_image(pos), quality=95).numpy())
                if pos in corrupt:
                    jpeg = b"\xff\xd8\xff\xe0 this is not a jpeg" * 4
                sink.write({"__key__": f"sample_{i}", "info": _info(pos).encode(),
                            "input.jpg": jpeg, "output.cls": str(pos % 10).encode()})
    return tmp_path


def _source(root, **kw) -> CCCShardSource:
    return CCCShardSource(root, STREAM, image_size=SIZE, shard_size=PER_SHARD, **kw)


def test_protocol_length_and_official_layout(tmp_path):
    src = _source(_write(tmp_path))
    assert isinstance(src, StreamSource)
    assert src.length == SHARDS * PER_SHARD and src.num_classes == 1000
    assert len(ccc_stream_names()) == 27
    assert ccc_shard_size(2000) == 26_000 and ccc_shard_size(1000) == ccc_shard_size(5000) == 25_000
    assert ccc_stream_length(1000) == ccc_stream_length(5000) == 7_500_000
    assert ccc_stream_length(2000) == 289 * 26_000


def test_url_source_needs_no_network():
    src = CCCShardSource(OFFICIAL_CCC_URL, "baseline_0_transition+speed_2000_seed_45")
    assert src.length == 289 * 26_000 and src.shard_size == 26_000
    assert src.shard_url(3) == f"{OFFICIAL_CCC_URL}/baseline_0_transition+speed_2000_seed_45/serial_00003.tar"


def test_slice_across_shard_boundary(tmp_path):
    src = _source(_write(tmp_path))
    batches = list(src.read(5, 19, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 4, 2]
    whole = Batch.concat(batches)
    assert whole.indices.tolist() == list(range(5, 19))
    assert whole.labels.tolist() == [p % 10 for p in range(5, 19)]
    assert whole.images.dtype == np.uint8 and whole.images.shape == (14, 3, SIZE, SIZE)
    for row, pos in enumerate(whole.indices):  # the right image, up to JPEG error
        expected = _image(int(pos)).numpy().astype(int)
        assert np.abs(whole.images[row].astype(int) - expected).max() <= 3
    assert whole.skipped == []


def test_two_halves_equal_the_whole(tmp_path):
    src = _source(_write(tmp_path))
    whole = Batch.concat(list(src.read(0, src.length, batch_size=5)))
    halves = Batch.concat(list(src.read(0, 11, batch_size=5)) + list(src.read(11, src.length, batch_size=5)))
    for name in ("indices", "images", "labels", "noise_a", "severity_a", "noise_b", "severity_b"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(halves, name))


def test_info_is_parsed(tmp_path):
    src = _source(_write(tmp_path))
    batch = next(src.read(9, 12, batch_size=8))
    assert batch.noise_a.tolist() == [NOISES[p % 3] for p in (9, 10, 11)]
    assert batch.noise_b.tolist() == [NOISES[(p + 1) % 3] for p in (9, 10, 11)]
    np.testing.assert_allclose(batch.severity_a, [p / 4 for p in (9, 10, 11)])
    np.testing.assert_allclose(batch.severity_b, [5 - p / 8 for p in (9, 10, 11)])
    text = "++dir++n01440764++name++ILSVRC2012_val_00000293.JPEG++n1++gaussian_noise++s1++1.25++n2++contrast++s2++0.0"
    info = parse_info(text)
    assert (info.dir, info.noise_a, info.severity_a, info.noise_b, info.severity_b) == (
        "n01440764", "gaussian_noise", 1.25, "contrast", 0.0)
    assert format_info(info) == text
    with pytest.raises(ValueError, match="malformed CCC info"):
        parse_info("++dir++x++n1++a")


def test_corrupt_jpeg_is_skipped_counted_and_aligned(tmp_path, caplog):
    src = _source(_write(tmp_path, corrupt={10}))
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        batches = list(src.read(8, 16, batch_size=4))
    whole = Batch.concat(batches)
    assert whole.indices.tolist() == [8, 9, 11, 12, 13, 14, 15]
    assert whole.labels.tolist() == [p % 10 for p in whole.indices]
    assert whole.noise_a.tolist() == [NOISES[p % 3] for p in whole.indices]
    assert len(whole.skipped) == 1 and whole.skipped[0].startswith("serial_00001.tar:sample_2: corrupt JPEG")
    assert batches[0].skipped == whole.skipped  # reported with the batch that held it
    assert "serial_00001.tar:sample_2" in caplog.text
    for row, pos in enumerate(whole.indices):
        assert np.abs(whole.images[row].astype(int) - _image(int(pos)).numpy().astype(int)).max() <= 3


def test_truncated_shard_is_reported_and_the_stream_continues(tmp_path, caplog):
    root = _write(tmp_path)
    shard = tmp_path / STREAM / "serial_00001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 700])  # cut inside a member
    src = _source(root)
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        whole = Batch.concat(list(src.read(0, src.length, batch_size=6)))
    got = whole.indices.tolist()
    assert got[:8] == list(range(8)) and got[-8:] == list(range(16, 24))  # shard 2 still read
    lost = sorted(set(range(24)) - set(got))
    assert lost and lost[-1] == 15 and len(whole.skipped) == len(lost)
    assert all(s.startswith("serial_00001.tar:sample_") for s in whole.skipped)
    assert whole.labels.tolist() == [p % 10 for p in got]
    warning = [r.getMessage() for r in caplog.records if "is truncated" in r.getMessage()]
    assert len(warning) == 1 and "serial_00001.tar" in warning[0] and "continuing with the next shard" in warning[0]
    assert "last key read sample_" in warning[0] and "stream position" in warning[0]


def test_truncation_at_a_header_boundary_is_detected(tmp_path, caplog):
    """tarfile ends silently when cut between members; the position count catches it."""
    root = _write(tmp_path)
    shard = tmp_path / STREAM / "serial_00000.tar"
    shard.write_bytes(shard.read_bytes()[: 512 * 3 * 3 + 512])  # whole members of few samples
    assert count_shard_samples(shard) < PER_SHARD
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        whole = Batch.concat(list(_source(root).read(0, 12, batch_size=4)))
    assert whole.indices.tolist()[-4:] == [8, 9, 10, 11]
    assert len(whole) + len(whole.skipped) == 12
    assert "serial_00000.tar is truncated" in caplog.text


def test_missing_location_and_stream_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*stream-monitor generate --imagenet-val.*--data https://"):
        CCCShardSource(tmp_path / "nowhere", STREAM)
    _write(tmp_path)
    other = "baseline_40_transition+speed_5000_seed_45"
    with pytest.raises(FileNotFoundError) as err:
        CCCShardSource(tmp_path, other)
    message = str(err.value)
    assert f"No folder {other!r}" in message and STREAM in message and f"--data {OFFICIAL_CCC_URL}" in message
    with pytest.raises(FileNotFoundError, match="no serial_00000.tar"):
        (tmp_path / other).mkdir()
        CCCShardSource(tmp_path, other)


def test_unknown_stream_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        CCCShardSource(OFFICIAL_CCC_URL, "baseline_20_transition_speed_1000_seed_43")
    message = str(err.value)
    assert "Did you mean 'baseline_20_transition+speed_1000_seed_43'" in message
    assert all(name in message for name in ccc_stream_names())
    with pytest.raises(ValueError, match="Unknown CCC stream"):
        CCCShardSource(OFFICIAL_CCC_URL, "baseline_30_transition+speed_1000_seed_43")


def test_reference_float_baseline_folder_is_found(tmp_path):
    _write(tmp_path, stream="baseline_20.0_transition+speed_1000_seed_43")
    assert _source(tmp_path).length == SHARDS * PER_SHARD


def test_wrong_image_size_is_skipped_not_fatal(tmp_path):
    src = CCCShardSource(_write(tmp_path), STREAM, image_size=64, shard_size=PER_SHARD)
    batches = list(src.read(0, 4, batch_size=4))
    assert len(batches) == 1 and len(batches[0]) == 0 and len(batches[0].skipped) == 4
    assert "expected (3, 64, 64)" in batches[0].skipped[0]


def test_bad_slice_is_an_error(tmp_path):
    src = _source(_write(tmp_path))
    with pytest.raises(ValueError, match="outside the stream"):
        list(src.read(0, src.length + 1))


def test_a_shard_that_breaks_off_is_reopened_before_giving_up(tmp_path, caplog):
    """Remote shards get `retries` re-opens (the official server resets connections, CCC #9)."""
    root = _write(tmp_path)
    shard = tmp_path / STREAM / "serial_00000.tar"
    shard.write_bytes(shard.read_bytes()[:6000])
    src = _source(root)
    src.retries = 1  # local sources default to 0; exercise the remote path on a file
    with caplog.at_level(logging.WARNING, logger="stream_monitor.sources.shards"):
        whole = Batch.concat(list(src.read(0, 10, batch_size=10)))
    assert "re-opening (attempt 1 of 1)" in caplog.text and "serial_00000.tar is truncated" in caplog.text
    assert len(whole) + len(whole.skipped) == 10 and whole.indices.tolist()[-2:] == [8, 9]
