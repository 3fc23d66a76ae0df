"""Local CCC generation (image folder -> shards -> CCCShardSource) and the accuracy-matrix pickle."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from stream_monitor.sources.base import Batch
from stream_monitor.sources.ccc import Point
from stream_monitor.sources.ccc_pickle import load_ccc_pickle, load_matrices_npz, save_matrices_npz
from stream_monitor.sources.generate import ShardSample, generate_ccc_from_imagefolder, write_ccc_shards
from stream_monitor.sources.shards import CCCShardSource, count_shard_samples, parse_info

SPEED = 4
SHARD = 8
SIZE = 32
NOISES = ("gaussian_noise", "impulse_noise")


@dataclass(frozen=True)
class FakeSpec:
    speed: int = SPEED
    seed: int = 43
    length: int = 24  # 6 lattice points, 3 shards

    @property
    def name(self) -> str:
        return f"baseline_20_transition+speed_{self.speed}_seed_{self.seed}"


class FakeWalk:
    """Point k fades noise A from severity (5 - k) out and noise B in; point 0 is clean of B."""

    def point(self, k: int) -> Point:
        return Point(NOISES[k % 2], max(0.0, 2.0 - 0.75 * k), NOISES[(k + 1) % 2], 0.5 * k)


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet") / "val"
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n02", "n01", "n03")):
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / wnid / f"ILSVRC2012_val_{c}{i}.JPEG", format="JPEG")
    return root


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def generated(val_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ccc")
    report = generate_ccc_from_imagefolder(val_dir, out, FakeSpec(), FakeWalk(), profile="imagenet",
                                           image_size=SIZE, shard_size=SHARD, chunk_size=3)
    return out, report


def test_layout_labels_and_info(generated, val_dir):
    out, report = generated
    spec = FakeSpec()
    folder = out / spec.name
    assert report.written == [0, 1, 2] and report.kept == []
    assert sorted(p.name for p in folder.iterdir()) == ["serial_00000.tar", "serial_00001.tar", "serial_00002.tar"]
    assert all(count_shard_samples(folder / f"serial_{s:05d}.tar") == SHARD for s in range(3))

    src = CCCShardSource(out, spec.name, image_size=SIZE, shard_size=SHARD)
    assert src.length == 24
    whole = Batch.concat(list(src.read(0, 24, batch_size=5)))
    assert whole.indices.tolist() == list(range(24)) and not whole.skipped
    assert whole.images.shape == (24, 3, SIZE, SIZE)
    walk = FakeWalk()
    for pos in range(24):
        point = walk.point(pos // SPEED)
        assert (whole.noise_a[pos], whole.noise_b[pos]) == (point.noise_a, point.noise_b)
        assert whole.severity_a[pos] == pytest.approx(point.severity_a)
        assert whole.severity_b[pos] == pytest.approx(point.severity_b)
    # labels are sorted-folder indices of the source file named in info
    classes = sorted(p.name for p in val_dir.iterdir())
    import webdataset

    for sample in webdataset.WebDataset(str(folder / "serial_00001.tar"), shardshuffle=False):
        info = parse_info(sample["info"])
        assert int(sample["output.cls"]) == classes.index(info.dir)
        assert (val_dir / info.dir / info.name).is_file()
        assert sample["__key__"].startswith("sample_")
    # a lattice point draws distinct files (9 files, speed 4)
    names = [parse_info(s["info"]).name for s in webdataset.WebDataset(str(folder / "serial_00000.tar"), shardshuffle=False)]
    assert len(set(names[:SPEED])) == SPEED


def test_regeneration_is_bit_exact_and_resumable(generated, val_dir, tmp_path):
    out, _ = generated
    spec = FakeSpec()
    first = _digest(out / spec.name)
    # a fresh run elsewhere, in two parallel-style halves, gives identical bytes
    again = tmp_path / "again"
    generate_ccc_from_imagefolder(val_dir, again, spec, FakeWalk(), image_size=SIZE, shard_size=SHARD,
                                  chunk_size=3, shards=[2])
    generate_ccc_from_imagefolder(val_dir, again, spec, FakeWalk(), image_size=SIZE, shard_size=SHARD,
                                  chunk_size=3, shards=[0, 1])
    assert _digest(again / spec.name) == first
    # resume: a damaged shard is rewritten, complete ones are kept
    damaged = again / spec.name / "serial_00001.tar"
    damaged.write_bytes(damaged.read_bytes()[:3000])
    report = generate_ccc_from_imagefolder(val_dir, again, spec, FakeWalk(), image_size=SIZE,
                                           shard_size=SHARD, chunk_size=3)
    assert report.kept == [0, 2] and report.written == [1]
    assert _digest(again / spec.name) == first


def test_max_images_writes_a_partial_last_shard(val_dir, tmp_path):
    spec = FakeSpec()
    report = generate_ccc_from_imagefolder(val_dir, tmp_path, spec, FakeWalk(), image_size=SIZE,
                                           shard_size=SHARD, chunk_size=3, max_images=10)
    assert report.written == [0, 1] and report.length == 10
    assert count_shard_samples(tmp_path / spec.name / "serial_00001.tar") == 2
    src = CCCShardSource(tmp_path, spec.name, image_size=SIZE)  # shard size read off serial_00000
    assert src.length == 10 and src.shard_size == SHARD
    assert Batch.concat(list(src.read(0, 10))).indices.tolist() == list(range(10))


def test_write_ccc_shards_layout(tmp_path):
    samples = [ShardSample(b"\xff\xd8jpeg%d" % i, i, f"info{i}") for i in range(5)]
    paths = write_ccc_shards(samples, tmp_path, "s", shard_size=2)
    assert [p.name for p in paths] == ["serial_00000.tar", "serial_00001.tar", "serial_00002.tar"]
    import tarfile

    with tarfile.open(paths[1]) as tar:
        names = tar.getnames()
        assert names == ["sample_0.info", "sample_0.input.jpg", "sample_0.output.cls",
                         "sample_1.info", "sample_1.input.jpg", "sample_1.output.cls"]
        assert tar.extractfile("sample_1.output.cls").read() == b"3"
        assert tar.extractfile("sample_0.info").read() == b"info2"


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generate_ccc_from_imagefolder(tmp_path / "nope", tmp_path, FakeSpec(), FakeWalk())


# ------------------------------------------------------------------------- accuracy matrices


def _matrices():
    rng = np.random.default_rng(1)
    return {("gaussian_noise", "shot_noise"): rng.random((21, 21)) * 70,
            ("shot_noise", "gaussian_noise"): rng.random((21, 21)) * 70}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_ccc_pickle_round_trip(tmp_path, protocol):
    matrices = _matrices()
    path = tmp_path / "ccc_accuracy_matrix.pickle"
    with path.open("wb") as f:
        pickle.dump({f"n1_{a}_n2_{b}": m for (a, b), m in matrices.items()}, f, protocol=protocol)
    loaded = load_ccc_pickle(path)
    assert loaded.keys() == matrices.keys()
    for key in matrices:
        np.testing.assert_array_equal(loaded[key], matrices[key])
    npz = save_matrices_npz(tmp_path / "matrices.npz", loaded)
    back = load_matrices_npz(npz)
    assert back.keys() == matrices.keys()
    for key in matrices:
        np.testing.assert_array_equal(back[key], matrices[key])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"n1_a_n2_b": _Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global (posix|os|nt).system"):
        load_ccc_pickle(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_ccc_pickle(pickle.dumps({"n1_a_n2_b": Batch}))


def test_pickle_with_wrong_content_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected a \\(21, 21\\) numeric matrix"):
        load_ccc_pickle(pickle.dumps({"n1_a_n2_b": np.zeros((3, 3))}))
    with pytest.raises(ValueError, match="unexpected key"):
        load_ccc_pickle(pickle.dumps({"a_b": np.zeros((21, 21))}))
