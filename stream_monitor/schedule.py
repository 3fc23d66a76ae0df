"""The probe schedule: how long a cycle is, at which adapter steps the window's estimates are read
(snapshot steps) and at which of them the probe counts flips.

Entropy Enigma (Press et al., ICML 2024) takes the reference predictions at the start of a cycle
and counts flips about 1,000 adapter steps later (990 in its `main.py`). A cycle follows the
adapter's own reset period where it has one (RDumb's 1,000), so a reference is always taken
from weights that have just been reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig

__all__ = ["DEFAULT_CYCLE", "ProbeSchedule", "counts_flips", "cycle_length", "is_probe_step", "last_probe_step"]

DEFAULT_CYCLE = 1000  # Entropy Enigma: reference at the start, flips after ~1,000 steps (990 in its code)


def cycle_length(probe_cycle: int | None, reset_every: int | None) -> int:
    """Steps per probe cycle: `probe.cycle` when set, else the adapter's reset period, else DEFAULT_CYCLE."""
    return probe_cycle or reset_every or DEFAULT_CYCLE


def is_probe_step(cycle_step: int, cycle: int, every: int) -> bool:
    """Snapshots every `every` steps of a cycle, and at Entropy Enigma's 990 of 1,000 (cycle - 10,
    for cycles of 100 steps or more), never at the cycle start."""
    return 0 < cycle_step < cycle and (cycle_step % every == 0 or (cycle >= 100 and cycle_step == cycle - 10))


def last_probe_step(cycle: int, every: int) -> int:
    """The cycle's last snapshot step (the paper's 990 of 1,000); 0 when no step of the cycle snapshots."""
    return max((k for k in range(1, cycle) if is_probe_step(k, cycle, every)), default=0)


def counts_flips(cycle_step: int, cycle: int, every: int, flips_every: int | None) -> bool:
    """A snapshot at `cycle_step` counts flips: the cycle's last one always (the paper's 990 of
    1,000, where its f is defined), the others every `flips_every` steps if set."""
    if not is_probe_step(cycle_step, cycle, every):
        return False
    return cycle_step == last_probe_step(cycle, every) or bool(flips_every) and cycle_step % flips_every == 0


@dataclass(frozen=True)
class ProbeSchedule:
    """When a run snapshots and starts cycles: pure functions of the adapter step count, so a
    resumed run follows the schedule an uninterrupted one does."""

    cycle: int
    every: int
    enabled: bool = True
    flips_every: int | None = None  # probe.flips_every: None counts flips at the cycle's last snapshot only

    @classmethod
    def of(cls, config: RunConfig, reset_every: int | None) -> "ProbeSchedule":
        """The schedule of a run's config and its adapter's own reset period."""
        probe = config.probe
        return cls(cycle_length(probe.cycle, reset_every or config.adapter.reset_every), probe.every, probe.enabled,
                   probe.flips_every)

    def probe_due(self, step: int) -> bool:
        """A snapshot after adapter step `step` (`is_probe_step` within its cycle)."""
        return self.enabled and is_probe_step(step % self.cycle, self.cycle, self.every)

    def flips_due(self, step: int) -> bool:
        """The snapshot after adapter step `step` counts flips (`counts_flips`); the others give the
        window estimates only, without the probe's forwards."""
        return self.enabled and counts_flips(step % self.cycle, self.cycle, self.every, self.flips_every)

    def cycle_due(self, step: int) -> bool:
        """A new cycle (and reference set) starts after adapter step `step`."""
        return self.enabled and step % self.cycle == 0
