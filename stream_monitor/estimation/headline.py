"""The headline estimate of each target: what the dashboard, the probe rows and the
`online-below-source` detector show, chosen from every estimator a window computed.

The choice is a fixed preference, most accurate first, as measured on the embedded CCC streams
(README, "Measured"; `stream-monitor eval`), and the first estimator with a value on the window
wins: an estimator is left out where its calibration is missing or it is still warming up.
- source accuracy: the frozen model's Entropy-Sentinel (MAE 2.4-3.4 points), its nuclear norm
  (5-9), then the flips (spread set, then reference set: 6-15); the frozen model's raw softmax
  baselines (AC, ATC, COT: 14-47 points off) are never a headline.
- online accuracy: the anchored nuclear norm (`estimation.anchored`: the source headline plus the
  nuclear norm's served-minus-frozen gap; 2.3-3.3 points without adaptation, 5.3-8.8 on Tent and
  rdumb b20, 10-13 on rdumb b40/b0 where rdumb's own line does better), the served nuclear norm
  (5-12, with the adapter's own meta-set line or the source model's), the Duos agreement, AETTA,
  the served Sentinel (not measured yet), and average confidence last, the only one that is
  always there (18-79 points off: confident and wrong is what a collapsing model is).

Beside them, a probe row keeps the paired source estimate: the frozen feed's value of the estimator
that headlines the online target. Online minus paired source is a difference of two readings of one
estimator, so the bias they share cancels: on the embedded CCC streams it was within 1.3 points of
the true gap when the model did not adapt, where the two headlines differed by more than 5 points
on 6-23 of 46 windows (`online-below-source` compares the paired estimates where they exist).
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

#: target -> estimator names, most accurate first.
HEADLINE_ORDER: dict[str, tuple[str, ...]] = {
    "source": ("sentinel", "nuclear-norm", "spread-flips", "weighted-flips"),
    "online": ("anchored-nuclear-norm", "nuclear-norm", "duo-agreement", "aetta", "sentinel", "average-confidence"),
}


class Headline(NamedTuple):
    estimator: str
    value: float
    extrapolated: bool | None = None


def pick_headline(target: str, estimates: Iterable[tuple[str, str, float | None, bool | None]]) -> Headline | None:
    """The headline of `target` among (estimator, target, value, extrapolated) tuples, or None
    when no estimator of the order has a value."""
    found = {name: (value, extrapolated) for name, est_target, value, extrapolated in estimates
             if est_target == target and value is not None}
    for name in HEADLINE_ORDER[target]:
        if name in found:
            return Headline(name, *found[name])
    return None


def headline_columns(estimates: Iterable[tuple[str, str, float | None, bool | None]]) -> dict[str, Any]:
    """A probe row's headline columns (schema.PROBE_SCHEMA) from (estimator, target, value,
    extrapolated) tuples of its window."""
    estimates = list(estimates)
    source, online = pick_headline("source", estimates), pick_headline("online", estimates)
    paired = None if online is None else next(
        (value for name, target, value, _ in estimates if name == online.estimator and target == "source"
         and value is not None), None)
    columns: dict[str, Any] = dict.fromkeys(("est_source_acc", "est_source_method", "est_extrapolated",
                                             "est_online_acc", "est_online_method"))
    if source is not None:
        columns.update(est_source_acc=source.value, est_source_method=source.estimator,
                       est_extrapolated=source.extrapolated)
    if online is not None:
        columns.update(est_online_acc=online.value, est_online_method=online.estimator)
    columns["est_source_paired"] = paired
    return columns
