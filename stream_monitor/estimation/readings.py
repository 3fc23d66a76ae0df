"""The vocabulary of estimation: which outputs a reading comes from, what it estimates, the reading.

- A **feed** is the stream of softmax outputs an estimator reads: `served`, the predictions the
  adapting model served, or `frozen`, the outputs of the frozen copy of the model the adapter
  started from, on the batches the evaluator scores.
- A **target** is the quantity estimated: `online`, the accuracy of the served predictions on the
  probe window, or `source`, the frozen model's accuracy on the same window (DESIGN.md 6).
- A **reading** is one estimator's output on one window. Softmax estimators read a feed and
  estimate that feed's accuracy (`TARGET_OF`); Entropy Enigma's flips read the probe's snapshots of
  the served model and estimate the source accuracy; the anchored estimate reads both feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Iterable, Sequence

__all__ = ["Feed", "Target", "TARGET_OF", "Reading", "find", "value_of"]


class Feed(StrEnum):
    SERVED = "served"
    FROZEN = "frozen"


class Target(StrEnum):
    ONLINE = "online"
    SOURCE = "source"


#: A softmax estimator on a feed estimates the accuracy of the model behind that feed.
TARGET_OF = {Feed.SERVED: Target.ONLINE, Feed.FROZEN: Target.SOURCE}


@dataclass(frozen=True)
class Reading:
    """One estimator's output on one probe window.

    Args:
        estimator: the registered name (`stream-monitor list estimators`).
        feed: the outputs it read.
        target: the accuracy it estimates.
        value: the estimate (%), None where it is not computable (no calibration, warming up).
        score: the raw statistic behind the value where a calibration maps one to accuracy (the
            nuclear norm's normalised score in [0, 1]), so a later calibration can map it again.
        extrapolated: the window lies outside the range the estimator was fitted on (None: unknown).
        features: the window features a regressor read (the Sentinel's), for the same reason.
        interval: a (low, high) interval of the estimate, where the estimator gives one.
    """

    estimator: str
    feed: Feed
    target: Target
    value: float | None
    score: float | None = None
    extrapolated: bool | None = None
    features: tuple[float, ...] | None = None
    interval: tuple[float, float] | None = None

    def with_value(self, value: float | None, extrapolated: bool | None = None) -> "Reading":
        return replace(self, value=value, extrapolated=extrapolated)


def find(readings: Iterable[Reading], estimator: str, feed: Feed) -> Reading | None:
    """The reading of `estimator` on `feed`, or None."""
    return next((r for r in readings if r.estimator == estimator and r.feed == feed), None)


def value_of(readings: Sequence[Reading], estimator: str, feed: Feed) -> float | None:
    """The value of `estimator` on `feed`, or None where it has none."""
    reading = find(readings, estimator, feed)
    return None if reading is None else reading.value
