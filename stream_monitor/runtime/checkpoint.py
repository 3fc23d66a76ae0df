"""Checkpoints of a run directory: driver, adapter and probe state at one step, written atomically.

Saved with `torch.save` (tensors, numbers, strings, lists, dicts only) and read back with
`torch.load(weights_only=True)`, so a checkpoint cannot run code when it is loaded. The previous
checkpoint is replaced only once the new one is complete on disk (temp file + `os.replace`), so a
crash at any moment leaves one consistent checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .loop import LoopState

CHECKPOINT = "checkpoint.pt"
FORMAT = 2  # 2: the estimation pipeline's state, keyed "feed/estimator", with declared state keys


@dataclass
class Checkpoint:
    state: LoopState
    adapter: dict[str, Any]
    probe: dict[str, Any] | None


def save_checkpoint(run_dir: Path, state: LoopState, adapter: dict[str, Any], probe: dict[str, Any] | None) -> Path:
    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_name(f".{CHECKPOINT}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "state": state.to_dict(), "adapter": adapter, "probe": probe}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's checkpoint, or None when it never wrote one (stopped in its first steps)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise ValueError(f"Checkpoint {path} cannot be read ({error}); the run cannot resume from it. "
                         f"Start a new run, or restore the file from a backup.") from error
    if data.get("format") != FORMAT:
        raise ValueError(f"Checkpoint {path} has format {data.get('format')}, this version reads {FORMAT}: it was "
                         f"written by another version of stream-monitor. Resume it with that version, or start a "
                         f"new run.")
    return Checkpoint(LoopState.from_dict(data["state"]), data["adapter"], data["probe"])
