"""The source headline plus the nuclear norm's served-minus-frozen gap on the same window.

The anchored nuclear norm estimates the online accuracy as

    online = source headline + slope * (NN(served) - NN(frozen))

with the raw nuclear-norm scores of both feeds and the slope of the frozen model's meta-set line
(Deng et al., ICML 2023). Each nuclear norm through its line is off by what that line gets wrong
about this stream (-6 to +8 points on the embedded CCC streams); through one line, the two
readings share that error, so their difference keeps the adapter's effect and drops most of it,
and the source headline (the frozen model's Sentinel, 2-3.5 points) supplies the level. One line
for both feeds matters: with rdumb's own line on the served feed the difference was 9.9 points
off on CCC-Medium, with the frozen model's 5.3. This project's combination, not a published
estimator; measured on the embedded CCC runs of 300,000 images (README, "Measured").
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .headline import ANCHORED as NAME, pick_headline

#: the raw nuclear-norm score (x100) of the served and of the frozen feed (window.NuclearNormScore)
SCORE, SERVED, FROZEN = "nuclear-norm-score", "score", "source-score"


def anchored_estimate(estimates: Iterable[tuple[str, str, float | None, bool | None]],
                      slope: float | None) -> float | None:
    """The anchored online estimate of a window from its (estimator, target, value, extrapolated)
    tuples, with `slope` of the frozen model's nuclear-norm line (accuracy % per unit score); None
    without a slope, a source headline or both feeds' scores."""
    estimates = list(estimates)
    scores = {target: value for name, target, value, _ in estimates if name == SCORE and value is not None}
    source = pick_headline("source", estimates)
    if slope is None or source is None or SERVED not in scores or FROZEN not in scores:
        return None
    return float(np.clip(source.value + slope * (scores[SERVED] - scores[FROZEN]) / 100.0, 0.0, 100.0))
