"""The source headline plus the nuclear norm's served-minus-frozen gap on the same window.

The anchored nuclear norm estimates the online accuracy as

    online = source headline + (NN(served) - NN(frozen))

Each nuclear norm alone is off by what its meta-set line gets wrong about this stream (-6 to +8
points on the embedded CCC streams); the two read the same images through the same line, so
their difference keeps the adapter's effect and drops most of that shared error, and the source
headline (the frozen model's Sentinel, 2-3.5 points) supplies the level. This project's
combination, not a published estimator; measured on the embedded CCC runs of 300,000 images
(README, "Measured"): online MAE 2.3-3.8 points where the model does not adapt (the served nuclear
norm alone: 5.2-8.6), 5.6 on Tent at the paper's lr (7.6), and no better on a collapsed Tent
(10.0; the nuclear norm reads a collapsed model's predictions as more accurate than they are).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .headline import pick_headline

NAME = "anchored-nuclear-norm"
_GAP = "nuclear-norm"  # the estimator whose served-minus-frozen difference is added


def anchored_estimate(estimates: Iterable[tuple[str, str, float | None, bool | None]]) -> float | None:
    """The anchored online estimate of a window from its (estimator, target, value, extrapolated)
    tuples, or None without a source headline or the nuclear norm on both feeds."""
    estimates = list(estimates)
    found = {(name, target): value for name, target, value, _ in estimates
             if value is not None and name != NAME}
    source = pick_headline("source", estimates)
    served, frozen = found.get((_GAP, "online")), found.get((_GAP, "source"))
    if source is None or served is None or frozen is None:
        return None
    return float(np.clip(source.value + served - frozen, 0.0, 100.0))
