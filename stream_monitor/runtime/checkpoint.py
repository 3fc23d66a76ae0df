"""Checkpoints of a run directory: driver, adapter and probe state at one step, written atomically.

Saved with `torch.save` (tensors, numbers, strings, lists, dicts only) and read back with
`torch.load(weights_only=True)`, so a checkpoint cannot run code when it is loaded. The file is
a header line with the sha256 of the torch payload, then the payload: flipped bytes on a disk
would otherwise load silently as wrong weights or probe values.

A new checkpoint is complete on disk (temp file + fsync) before it replaces the last one, and the
last one is kept as `checkpoint.previous.pt`, so neither a crash nor one damaged file ends a run:
resume falls back to the previous checkpoint (`find_checkpoints`).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .loop import LoopState

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.previous.pt"
FORMAT = 3  # 3: a sha256 header before the torch payload; 2: the estimation pipeline's state
_MAGIC = b"stream-monitor checkpoint sha256="


class CheckpointError(ValueError):
    """No checkpoint of the run can be used; the message names each file, what is wrong and what to do."""


@dataclass
class Checkpoint:
    state: LoopState
    adapter: dict[str, Any]
    probe: dict[str, Any] | None
    path: Path | None = None


@dataclass
class Checkpoints:
    """What a run directory holds: its readable checkpoints, newest first, and the damaged files."""

    valid: list[Checkpoint] = field(default_factory=list)
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it cannot be used)


def save_checkpoint(run_dir: Path, state: LoopState, adapter: dict[str, Any], probe: dict[str, Any] | None) -> Path:
    run_dir = Path(run_dir)
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "state": state.to_dict(), "adapter": adapter, "probe": probe}, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(f".{CHECKPOINT}.tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    # A crash between the two renames leaves only the previous checkpoint, which resume reads.
    if path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint file, its checksum verified; ValueError saying why it cannot be used."""
    data = Path(path).read_bytes()
    header, newline, payload = data.partition(b"\n")
    if not header.startswith(_MAGIC) or not newline:
        raise ValueError("no checksum header: damaged, or written by a version of stream-monitor before "
                         f"checkpoint format {FORMAT}")
    expected = header[len(_MAGIC):].decode("ascii", errors="replace")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise ValueError("sha256 mismatch: the file is damaged")
    try:
        content = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for payloads it cannot read
        raise ValueError(f"torch cannot read it ({error})") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else None
        raise ValueError(f"format {found}, this version reads {FORMAT}: written by another version of "
                         f"stream-monitor")
    return Checkpoint(LoopState.from_dict(content["state"]), content["adapter"], content["probe"], Path(path))


def find_checkpoints(run_dir: Path) -> Checkpoints:
    """The latest and the previous checkpoint, each read and verified; nothing is moved or deleted."""
    found = Checkpoints()
    for name in (CHECKPOINT, PREVIOUS):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            found.valid.append(read_checkpoint(path))
        except (OSError, ValueError) as error:
            found.damaged.append((path, str(error)))
    return found


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest usable checkpoint, or None when the run never wrote one (stopped in its first steps).

    Raises CheckpointError when there are checkpoint files and none of them can be used.
    """
    found = find_checkpoints(run_dir)
    if found.valid:
        return found.valid[0]
    if found.damaged:
        raise CheckpointError(unusable_message(run_dir, found.damaged))
    return None


def unusable_message(run_dir: Path, damaged: list[tuple[Path, str]]) -> str:
    problems = "; ".join(f"{path.name}: {why}" for path, why in damaged)
    fallback = "" if len(damaged) > 1 else " and there is no previous checkpoint to fall back to"
    return (f"No checkpoint of {run_dir} can be used ({problems}){fallback}, so the run cannot resume. Start a new "
            f"run, or restore {CHECKPOINT} from a backup (a checkpoint written by another version resumes "
            f"with that version).")
