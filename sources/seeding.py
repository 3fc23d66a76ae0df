"""Deterministic seeds for blocks of a stream, so image i depends only on (spec, i)."""

from __future__ import annotations

import numpy as np


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers, hashed with numpy's SeedSequence."""
    words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in values]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)
