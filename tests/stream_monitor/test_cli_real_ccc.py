"""`stream-monitor run` on CCC-format shards and an image folder, with a torchvision model."""

import re

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.io import encode_jpeg
from typer.testing import CliRunner

from stream_monitor.sources.generate import ShardSample, write_ccc_shards
from stream_monitor.sources.shards import CCCInfo, format_info
from stream_monitor.cli import app
from stream_monitor.metrics.sink import read_table

STREAM = "baseline_40_transition+speed_1000_seed_45"
LOCAL = ["--no-ray", "--no-dashboard", "--out"]  # in-process workers: unit tests never start Ray


def weights(tmp_path):
    path = tmp_path / "rn18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_run_reads_official_format_shards(tmp_path):
    samples = []
    for i in range(12):
        image = torch.full((3, 224, 224), 20 * i, dtype=torch.uint8)
        info = format_info(CCCInfo("n01440764", f"img{i}.JPEG", "fog", 1.25, "snow", 0.5))
        samples.append(ShardSample(bytes(encode_jpeg(image, quality=85).numpy()), i % 3, info))
    samples[5] = ShardSample(b"\xff\xd8 broken", 1, samples[5].info)
    write_ccc_shards(samples, tmp_path / "ccc", STREAM, shard_size=25_000)
    result = CliRunner().invoke(app, [
        "run", "--data", str(tmp_path / "ccc"), "--stream", STREAM, "--model", "resnet18",
        "--weights", str(weights(tmp_path)), "--batch-size", "4", *LOCAL, str(tmp_path / "runs"),
    ])
    assert result.exit_code == 0, result.output
    assert "1 unreadable image(s) skipped" in result.output
    assert re.search(r"skipped\s+│\s+1\s", result.output)
    assert "resnet18" in result.output
    steps = read_table(next((tmp_path / "runs").iterdir()), "steps")
    assert steps.column("images").to_pylist() == [4, 3, 4] and set(steps.column("noise_a").to_pylist()) == {"fog"}


def test_run_on_an_image_folder(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (300, 260), (40 * i, 90, 200)).save(tmp_path / "val" / c / f"{i}.jpg")
    result = CliRunner().invoke(app, [
        "run", "--source", "imagefolder", "--data", str(tmp_path / "val"), "--model", "resnet18",
        "--weights", str(weights(tmp_path)), *LOCAL, str(tmp_path / "runs"),
    ])
    assert result.exit_code == 0, result.output
    assert "imagefolder:val" in result.output and re.search(r"images\s+│\s+6\s", result.output)


@pytest.mark.slow
def test_generate_then_run_round_trip(tmp_path):
    import numpy as np

    from stream_monitor.sources.ccc import NOISE_POOLS
    from stream_monitor.sources.ccc_pickle import save_matrices_npz

    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (96, 80), (60 * i, 30, 150)).save(tmp_path / "val" / c / f"{i}.png")
    grid = np.linspace(80, 5, 21)[:, None] * np.linspace(1, 0.2, 21)[None, :]
    noises = NOISE_POOLS[0]
    save_matrices_npz(tmp_path / "m.npz", {(a, b): grid for a in noises for b in noises if a != b})
    stream = "baseline_0_transition+speed_1000_seed_44"
    result = CliRunner().invoke(app, [
        "generate", "--imagenet-val", str(tmp_path / "val"), "--out", str(tmp_path / "ccc"),
        "--matrix", str(tmp_path / "m.npz"), "--stream", stream, "--max-images", "40",
    ])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ccc" / stream / "serial_00000.tar").exists()
    result = CliRunner().invoke(app, [
        "run", "--data", str(tmp_path / "ccc"), "--stream", stream, "--model", "resnet18",
        "--weights", str(weights(tmp_path)), *LOCAL, str(tmp_path / "runs"),
    ])
    assert result.exit_code == 0, result.output
    assert re.search(r"images\s+│\s+40\s", result.output)


def test_generate_without_matrix_says_what_to_pass(tmp_path):
    result = CliRunner().invoke(app, [
        "generate", "--imagenet-val", str(tmp_path), "--out", str(tmp_path / "o"), "--matrix", str(tmp_path / "x.pickle"),
    ])
    assert result.exit_code == 2 and "ccc_accuracy_matrix.pickle" in result.output
