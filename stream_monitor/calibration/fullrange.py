"""Add the full-range meta-set to a calibration (issue 25; docs/headline-rule.md sections 2-4b).

Refits the file's Sentinel and nuclear-norm lines on its own points (held-out streams or fixed
domains) plus the meta-set's windows, fits the anchored estimate's gap line (`rule.anchor_line`)
and learns the headline rules with leave-one-family-out cross-validation (`rule.held_out_readings`,
`rule.fit_rule`):

- always the source rule (the frozen feed);
- with `adapter` (the file's own, an adapter that adapts): that adapter's online rule, read on its
  served feed in the meta-set;
- without (the frozen model's file): the online rule of adapters without a calibration of their
  own (`rule.fit_unseen_adapter_rule`), measured on every adapter the meta-set's windows hold.

`stream-monitor calibrate` and `benchmarks/refit_calibration.py` both call `fit_full_range`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..estimation.readings import Target
from ..estimation.support import Support
from .fit import nuclear_line, sentinel_set
from .format import FORMAT, Calibration
from .rule import (Gap, adapter_report, anchor_line, family_report, fit_rule, fit_unseen_adapter_rule,
                   held_out_readings, unseen_adapter_readings, window_gaps, window_points)

__all__ = ["FullRangeFit", "fit_full_range"]


@dataclass(frozen=True)
class FullRangeFit:
    """A calibration with the full-range meta-set, and per family (and held-out adapter) and target
    the held-out headline error, worst error, interval coverage and out-of-support share
    (`rule.family_report`, `rule.adapter_report` rows)."""

    calibration: Calibration
    report: list[dict[str, Any]]


def fit_full_range(calibration: Calibration | dict[str, Any], windows: Sequence[dict[str, Any]],
                   adapter: str | None, gaps: Sequence[Gap] = ()) -> FullRangeFit:
    """The calibration refitted on its points plus the meta-set's `windows`, with its rules.

    Args:
        calibration: the file to extend (a `Calibration`, or its JSON mapping); its earlier meta-set
            points (domains `metaset/...`) are replaced by `windows`'.
        windows: the meta-set's windows (`metaset.read_windows`); each served feed named by adapter.
        adapter: the served feed whose online rule the file gets (the file's own adapter); None: the
            frozen model's file, whose online rule is for adapters without a calibration.
        gaps: the anchor line's data besides the meta-set's windows (`rule.point_gaps` of long
            held-out streams).

    Raises:
        ValueError: no window, or `adapter` is not one of the windows' served feeds, or the file
            has no frozen-model statistics (a calibration from before format 2).
    """
    old = asdict(calibration) if isinstance(calibration, Calibration) else dict(calibration)
    if not windows:
        raise ValueError("The meta-set has no window: build it first (stream-monitor calibrate, or "
                         "benchmarks/build_metaset.py).")
    if not old.get("frozen_stats"):
        raise ValueError("The calibration has no frozen-model statistics, which the source rule is read with; "
                         "make it again with `stream-monitor calibrate`.")
    if adapter is not None and any(adapter not in w["served"] for w in windows):
        held = sorted({a for w in windows for a in w["served"]})
        raise ValueError(f"The meta-set has no served feed of {adapter!r} in every window (it has "
                         f"{', '.join(held) or 'none'}); build it with that adapter, or fit the frozen file (no adapter).")
    points = [p for p in old["points"] if not str(p.get("domain", "")).startswith("metaset/")]
    everything = points + window_points(windows, adapter)
    data = {**old, "format": FORMAT, "points": everything}
    data.setdefault("spread_fits", {})
    frozen = {**data["frozen_stats"], "nuclear_fit": nuclear_line(everything, frozen=True),
              "sentinel": sentinel_set(everything, frozen=True),
              "anchor_fit": anchor_line([*window_gaps(windows), *gaps])}
    served = data.get("served_stats")
    if adapter is not None and served is not None:
        served = {**served, "nuclear_fit": nuclear_line(everything), "sentinel": sentinel_set(everything)}
    data["frozen_stats"], data["served_stats"] = frozen, served
    report, rules = [], {}
    held_source = held_out_readings(windows, points, Target.SOURCE, frozen["sentinel"])
    support = _support(frozen["sentinel"])
    rules["source"] = fit_rule(held_source, Target.SOURCE, support).to_dict()
    report += family_report(held_source, Target.SOURCE, support)
    if adapter is None:
        held_unseen = unseen_adapter_readings(windows, held_source, gaps, support)
        if held_unseen:
            rules["online"] = fit_unseen_adapter_rule(held_unseen, support).to_dict()
            report += adapter_report(held_unseen, support)
    elif served is not None:
        held_online = held_out_readings(windows, points, Target.ONLINE, served["sentinel"], adapter, held_source, gaps)
        support = _support(served["sentinel"])
        rules["online"] = fit_rule(held_online, Target.ONLINE, support).to_dict()
        report += family_report(held_online, Target.ONLINE, support)
    data["meta_windows"] = [{**w, "served": {a: s for a, s in w["served"].items() if a == adapter}} for w in windows]
    data["rules"] = rules
    data["fits"] = {int(k): v for k, v in data["fits"].items()}
    data["spread_fits"] = {int(k): v for k, v in data["spread_fits"].items()}
    return FullRangeFit(Calibration(**data), report)


def _support(sentinel: dict[str, Any] | None) -> Support | None:
    """The support of a Sentinel training set (none: too few windows to fit one)."""
    return Support.of(sentinel["features"]) if sentinel else None
