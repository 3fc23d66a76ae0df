"""What a run's estimation takes from calibration files, resolved once per run.

`calibration.resolve.resolve_context` builds it from the config and the workers' description (a
live run) or from a run directory (`stream-monitor eval`), with one precedence; the pipeline and
the headline rule read nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .flips import FlipsCalibration
from .headline import HeadlineRule
from .readings import Feed, Target
from .window import FeedStats, stats_from_dict

__all__ = ["EstimationContext"]


@dataclass(frozen=True)
class EstimationContext:
    """Both feeds' calibrated statistics, Entropy Enigma's f per snapshot step, and where each came from.

    Args:
        served: the served feed's statistics as its estimators read them: the served adapter's
            calibration, with the frozen model's nuclear-norm line where that has none
            (`window.with_frozen_line`).
        frozen: the frozen model's statistics.
        flips: cycle step -> f of the weighted flips on the cycle's first images.
        spread_flips: cycle step -> f of the weighted flips on the spread reference set.
        adapter_calibrated: the served feed's line or regressor was fitted on the served adapter
            itself (not borrowed from the frozen model), which picks the online headline order.
        origins: part ("served", "frozen", "flips") -> where it came from, for people.
        rules: target -> the headline rule learned on the meta-set (`headline.HeadlineRule`): the
            source target's from the frozen feed's calibration, the online target's from the
            served adapter's, else the frozen file's rule for adapters it was not calibrated on;
            a target without one takes the fixed order and has no interval.
        served_is_frozen: the served model is the frozen model (the `source` adapter): the online
            headline is the source headline, interval and support flag included.
    """

    served: FeedStats | None = None
    frozen: FeedStats | None = None
    flips: Mapping[int, FlipsCalibration] = field(default_factory=dict)
    spread_flips: Mapping[int, FlipsCalibration] = field(default_factory=dict)
    adapter_calibrated: bool = False
    origins: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[Target, HeadlineRule] = field(default_factory=dict)
    served_is_frozen: bool = False

    def stats(self, feed: Feed) -> FeedStats | None:
        return self.served if feed == Feed.SERVED else self.frozen

    @property
    def anchor_line(self) -> tuple[float, float] | None:
        """(slope, intercept) that turn the feeds' nuclear-norm score gap into the accuracy gap
        (`pipeline.derive`): the frozen file's `anchor_fit`, else (an older file) the slope of the
        frozen model's nuclear-norm line with no intercept."""
        if self.frozen is None:
            return None
        if self.frozen.anchor_fit is not None:
            return self.frozen.anchor_fit
        return (self.frozen.nuclear_fit[0], 0.0) if self.frozen.nuclear_fit else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping: a run directory keeps the context it ran with (`from_dict`)."""
        def fits(table: Mapping[int, FlipsCalibration]) -> dict[str, Any]:
            return {str(step): asdict(f) for step, f in table.items()}

        return {"served": self.served and asdict(self.served), "frozen": self.frozen and asdict(self.frozen),
                "flips": fits(self.flips), "spread_flips": fits(self.spread_flips),
                "adapter_calibrated": self.adapter_calibrated, "origins": dict(self.origins),
                "rules": {str(target): rule.to_dict() for target, rule in self.rules.items()},
                "served_is_frozen": self.served_is_frozen}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EstimationContext":
        def fits(table: dict[str, Any]) -> dict[int, FlipsCalibration]:
            return {int(step): FlipsCalibration(**{**f, "coefficients": tuple(f["coefficients"]),
                                                   "fitted_range": tuple(f["fitted_range"])})
                    for step, f in table.items()}

        return cls(served=stats_from_dict(data["served"]), frozen=stats_from_dict(data["frozen"]),
                   flips=fits(data["flips"]), spread_flips=fits(data["spread_flips"]),
                   adapter_calibrated=bool(data["adapter_calibrated"]), origins=dict(data["origins"]),
                   rules={Target(t): HeadlineRule.from_dict(r) for t, r in (data.get("rules") or {}).items()},
                   served_is_frozen=bool(data.get("served_is_frozen", False)))

    def describe(self) -> str:
        """One line for people: where each part came from."""
        return "; ".join(f"{part}: {origin}" for part, origin in self.origins.items()) or "no calibration"
