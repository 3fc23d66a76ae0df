"""Checkpoint files: the sha256 header, the previous checkpoint kept, and the errors when none can be used."""

from __future__ import annotations

import pytest
import torch

from stream_monitor.runtime.checkpoint import (CHECKPOINT, PREVIOUS, CheckpointError, find_checkpoints,
                                               load_checkpoint, save_checkpoint)
from stream_monitor.runtime.loop import LoopState


def save(run_dir, step: int) -> None:
    save_checkpoint(run_dir, LoopState(step=step, position=64 * step), {"w": torch.full((1024,), float(step))}, None)


def flip(path, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - size // 2
    data[start:start + size] = bytes(b ^ 0xFF for b in data[start:start + size])
    path.write_bytes(bytes(data))


def test_a_save_keeps_the_one_before(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save(tmp_path, 10)
    assert not (tmp_path / PREVIOUS).exists()
    save(tmp_path, 20)
    save(tmp_path, 30)
    found = find_checkpoints(tmp_path)
    assert [c.state.step for c in found.valid] == [30, 20] and not found.damaged
    assert [c.path.name for c in found.valid] == [CHECKPOINT, PREVIOUS]
    assert torch.equal(load_checkpoint(tmp_path).adapter["w"], torch.full((1024,), 30.0))


def test_flipped_bytes_are_caught_and_the_previous_is_used(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    flip(tmp_path / CHECKPOINT)
    found = find_checkpoints(tmp_path)
    assert found.damaged == [(tmp_path / CHECKPOINT, "sha256 mismatch: the file is damaged")]
    assert load_checkpoint(tmp_path).state.step == 10


def test_a_crash_between_the_renames_leaves_the_previous(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    (tmp_path / CHECKPOINT).unlink()
    assert load_checkpoint(tmp_path).state.step == 10


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    save(tmp_path, 10)
    flip(tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"No checkpoint of .* can be used \(checkpoint.pt: sha256 mismatch: the "
                       r"file is damaged\) and there is no previous checkpoint to fall back to, so the run cannot "
                       r"resume. Start a new run, or restore checkpoint.pt from a backup"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_without_the_header_names_the_format(tmp_path):
    torch.save({"format": 2}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: no checksum header: damaged, or written by a version "
                       r"of stream-monitor before checkpoint format 3"):
        load_checkpoint(tmp_path)
