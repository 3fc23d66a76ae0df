"""Merging calibrations made in parallel (on disjoint domains, with the same provenance): the
points together and every fit made again on them, the headline rules included."""

from __future__ import annotations

from dataclasses import replace

from ..metaset import union_windows
from .fit import fit_flips, nuclear_line, sentinel_set
from .format import PROVENANCE_KEYS, Calibration, Provenance
from .fullrange import fit_full_range
from .rule import point_gaps

__all__ = ["merge"]


def merge(calibrations: list[Calibration]) -> Calibration:
    """One calibration from several made on disjoint domains with the same provenance (e.g. in
    parallel processes): the points together, f and the nuclear-norm line fitted again, and where
    the files have a full-range meta-set, its windows together and the headline rules learned again
    on everything (`fullrange.fit_full_range`), so that no rule of one file outlives the merge.

    Raises:
        CalibrationMismatch: the files differ in model, adapter or hyperparameters.
        ValueError: two files disagree on a meta-set window's images, or they are the frozen
            model's files with rules: the rule of adapters without a calibration is measured on
            other adapters' readings, which the file does not keep, so it cannot be learned again.
    """
    merged = _merge_points(calibrations)
    if not any(c.rules or c.meta_windows for c in calibrations):
        return merged
    windows = union_windows(*(c.meta_windows for c in calibrations))
    adapter = merged.adapter
    if not windows or any(adapter not in w["served"] for w in windows):
        raise ValueError("These calibration files are the frozen model's (their meta-set keeps no served readings): "
                         "the rule for adapters without a calibration cannot be learned again from them. Make "
                         "one file with `stream-monitor calibrate --set adapter.name=source` instead of merging.")
    return fit_full_range(merged, windows, adapter, point_gaps(merged.points, adapter)).calibration


def _merge_points(calibrations: list[Calibration]) -> Calibration:
    """The files' points together, with f, the nuclear-norm lines and the Sentinels fitted again;
    the rest (statistics, rules) from the first file."""
    first = calibrations[0]
    provenance = Provenance(**{k: getattr(first, k) for k in PROVENANCE_KEYS})
    for other in calibrations[1:]:
        other.check(provenance)
    points = [p for c in calibrations for p in c.points]
    # agreement columns of two sidekicks don't mix; a file whose windows have no Sentinel features
    # (a statistics-only calibration) adds no window to the Sentinel, so it has no say in its sidekick
    sidekicks = {((c.served_stats or {}).get("duo") or {}).get("model") for c in calibrations
                 if any(p.get("sentinel_features") or p.get("frozen_sentinel_features") for p in c.points)}
    sidekick = sidekicks.pop() if len(sidekicks) == 1 else None
    stats = first.served_stats and {**first.served_stats, "nuclear_fit": nuclear_line(points),
                                     "sentinel": sentinel_set(points, sidekick=sidekick)}
    frozen = first.frozen_stats and {**first.frozen_stats, "nuclear_fit": nuclear_line(points, frozen=True),
                                     "sentinel": sentinel_set(points, frozen=True, sidekick=sidekick)}
    return replace(first, domains=[d for c in calibrations for d in c.domains], points=points,
                   fits=fit_flips(points), spread_fits=fit_flips(points, "spread_weighted_flips"),
                   served_stats=stats, frozen_stats=frozen)
