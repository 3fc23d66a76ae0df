"""The headline estimate of each target: what the dashboard, the probe rows and the
`online-below-source` detector show, chosen from every estimator a window computed.

The choice is a fixed preference, most accurate first, as measured on the embedded CCC streams
(README, "Measured"; `stream-monitor eval`), and the first estimator with a value on the window
wins: an estimator is left out where its calibration is missing or it is still warming up.
- source accuracy: the frozen model's Entropy-Sentinel (MAE 2.4-3.4 points), its nuclear norm
  (5-9), then the flips (spread set, then reference set: 6-15); the frozen model's raw softmax
  baselines (AC, ATC, COT: 14-47 points off) are never a headline.
- online accuracy: the anchored nuclear norm (`estimation.anchored`: the source headline plus the
  nuclear norm's served-minus-frozen gap; 2.3-3.3 points without adaptation, 5.5-14.2 on Tent
  where the served nuclear norm on the source model's line was 7.6-20.5), the served nuclear norm,
  the Duos agreement, AETTA, the served Sentinel, and average confidence last, the only one that is
  always there (18-79 points off: confident and wrong is what a collapsing model is).
- online accuracy where the served feed was calibrated on the adapter itself (its calibration
  file has a nuclear-norm line fitted on the adapted model's meta-set windows; ADAPTER_CALIBRATED):
  the served estimators first, since their lines know what adaptation does to the outputs and the
  anchored gap, read through the frozen model's line, does not (rdumb lifted the online accuracy
  to 55-71% on a CCC-Easy cycle where the frozen model had 17-30%; the anchored estimate read 19-40%).
  On rdumb with its shipped calibration (13 fixed domains and 12 held-out streams) the served
  Sentinel was 4.5/5.0/2.5 points off at CCC-Easy/Medium/Hard, the served nuclear norm 7.5/7.6/11.2,
  the anchored estimate 10.1/5.3/13.0.

Beside them, a probe row keeps the paired source estimate: the frozen feed's value of the estimator
that headlines the online target, where both readings go through one calibration (not so for the
served nuclear norm or Sentinel with an adapter calibration: the adapter's line against the frozen
model's). Online minus paired source is a difference of two readings of one estimator, so the bias
they share cancels: on the embedded CCC streams it was within 1.3 points of the true gap when the
model did not adapt, where the two headlines differed by more than 5 points on 6-23 of 46 windows.
The row's estimated gap (online minus source, what `online-below-source` reads) is the anchored
estimate's where there is one (the two feeds' nuclear norms through one line), else the paired
difference, else the headlines' difference. Two lines do not cancel: rdumb's own line against the
frozen model's fired 5 false alarms on CCC-Hard, where rdumb did not collapse; the anchored gap none.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

#: target -> estimator names, most accurate first.
HEADLINE_ORDER: dict[str, tuple[str, ...]] = {
    "source": ("sentinel", "nuclear-norm", "spread-flips", "weighted-flips"),
    "online": ("anchored-nuclear-norm", "nuclear-norm", "duo-agreement", "aetta", "sentinel", "average-confidence"),
}
#: The anchored estimate (estimation.anchored), named here because its gap feeds the detector.
ANCHORED = "anchored-nuclear-norm"
#: Served estimators whose reading goes through the served feed's own calibration.
SERVED_CALIBRATED = ("nuclear-norm", "sentinel")
#: The online order when the served feed's estimators were calibrated on the adapter itself.
ADAPTER_CALIBRATED: tuple[str, ...] = ("sentinel", "nuclear-norm", "anchored-nuclear-norm", "duo-agreement", "aetta",
                                       "average-confidence")


def headline_order(target: str, adapter_calibrated: bool = False) -> tuple[str, ...]:
    """`target`'s estimator names, most accurate first; `adapter_calibrated`: the served feed's
    lines and regressor come from a calibration of the served adapter (not the source model's)."""
    return ADAPTER_CALIBRATED if adapter_calibrated and target == "online" else HEADLINE_ORDER[target]


class Headline(NamedTuple):
    estimator: str
    value: float
    extrapolated: bool | None = None


def pick_headline(target: str, estimates: Iterable[tuple[str, str, float | None, bool | None]],
                  adapter_calibrated: bool = False) -> Headline | None:
    """The headline of `target` among (estimator, target, value, extrapolated) tuples, or None
    when no estimator of the order (`headline_order`) has a value."""
    found = {name: (value, extrapolated) for name, est_target, value, extrapolated in estimates
             if est_target == target and value is not None}
    for name in headline_order(target, adapter_calibrated):
        if name in found:
            return Headline(name, *found[name])
    return None


def headline_columns(estimates: Iterable[tuple[str, str, float | None, bool | None]],
                     adapter_calibrated: bool = False) -> dict[str, Any]:
    """A probe row's headline columns (schema.PROBE_SCHEMA) from (estimator, target, value,
    extrapolated) tuples of its window."""
    estimates = list(estimates)
    source, online = pick_headline("source", estimates), pick_headline("online", estimates, adapter_calibrated)
    one_calibration = online is not None and not (adapter_calibrated and online.estimator in SERVED_CALIBRATED)
    paired = _value(estimates, online.estimator, "source") if one_calibration else None
    columns: dict[str, Any] = dict.fromkeys(("est_source_acc", "est_source_method", "est_extrapolated",
                                             "est_online_acc", "est_online_method", "est_online_gap"))
    if source is not None:
        columns.update(est_source_acc=source.value, est_source_method=source.estimator,
                       est_extrapolated=source.extrapolated)
    if online is not None:
        columns.update(est_online_acc=online.value, est_online_method=online.estimator)
    columns["est_source_paired"] = paired
    anchored = _value(estimates, ANCHORED, "online")
    if anchored is not None and source is not None:
        columns["est_online_gap"] = anchored - source.value
    elif online is not None and (paired is not None or source is not None):
        columns["est_online_gap"] = online.value - (paired if paired is not None else source.value)
    return columns


def _value(estimates: list[tuple[str, str, float | None, bool | None]], name: str, target: str) -> float | None:
    return next((value for n, t, value, _ in estimates if n == name and t == target and value is not None), None)
