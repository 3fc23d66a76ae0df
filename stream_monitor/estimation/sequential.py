"""Time-uniform bounds for a sequential risk test (Podkopaev & Ramdas, ICLR 2022; Schirmer et al.,
NeurIPS 2025): an upper bound on the source error, lower confidence sequences on a running error.

The alarm of such a test is `lower(t) > source_upper + tolerance`; with the source bound at level
delta_S and a confidence sequence at level delta_T, it fires on a stream whose running error stays
within the tolerance with probability at most delta_S + delta_T, however long it is watched.

- `clopper_pearson_upper`: the exact one-sided upper bound on a Bernoulli error from k errors in n.
- `PredictablePlugInEB`: the predictable plug-in empirical-Bernstein lower CS (Waudby-Smith &
  Ramdas, JRSS-B 2024, Thm 2), covering the lambda-weighted mean of the conditional means.
- `ConjugateMixtureEB`: the conjugate-mixture empirical-Bernstein lower CS (Howard et al., Ann.
  Stat. 2021) with the polynomial stitching boundary, covering the unweighted running mean of the
  conditional means: the quantity that stays defined when the model changes at every step, as
  long as the prediction for observation i is fixed before it arrives (TTA's predict-then-update).
- `Restarted`: a fresh confidence sequence every `every` observations, the j-th at level
  delta 6 / (pi^2 j^2), so a collapse after a long healthy stretch is caught without waiting for
  the whole history's mean to move, and the union bound keeps the no-false-alarm guarantee.

Written by hand (research/risk_monitoring.md 2.3: confseq, by the methods' authors, has no wheels
for Python 3.11 and breaks on NumPy 2; `expectation` is GPL with a no-AI-training clause). Every
bound is incremental: O(1) per observation, state in a few floats.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections import deque
from typing import Iterable

from scipy.special import zeta
from scipy.stats import beta

__all__ = ["ConjugateMixtureEB", "LowerConfidenceSequence", "PredictablePlugInEB", "Restarted",
           "clopper_pearson_lower", "clopper_pearson_upper", "poly_stitching_bound"]


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """The exact upper confidence bound at level `delta` on a Bernoulli rate from `errors` in `n`."""
    if not 0 <= errors <= n or n < 1:
        raise ValueError(f"need 0 <= errors <= n and n >= 1, got errors={errors}, n={n}")
    return 1.0 if errors == n else float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def clopper_pearson_lower(successes: int, n: int, delta: float) -> float:
    """The exact lower confidence bound at level `delta` on a Bernoulli rate from `successes` in `n`."""
    return 1.0 - clopper_pearson_upper(n - successes, n, delta)


def poly_stitching_bound(v: float, alpha: float, m: float = 100.0, c: float = 1.0, s: float = 1.4,
                         eta: float = 2.0) -> float:
    """Howard et al.'s polynomial stitching boundary at intrinsic time `v` (confseq's
    `PolyStitchingBound`): uniform over v >= m, tight from v = m on."""
    v = max(v, m)
    ell = s * math.log(math.log(eta * v / m)) + _stitching_constant(s, eta) + math.log(1.0 / alpha)
    k1 = (eta ** 0.25 + eta ** -0.25) / math.sqrt(2.0)
    k2 = (math.sqrt(eta) + 1.0) / 2.0
    return math.sqrt(k1 * k1 * v * ell + (k2 * c * ell) ** 2) + k2 * c * ell


@functools.lru_cache(maxsize=8)
def _stitching_constant(s: float, eta: float) -> float:
    """log(zeta(s) / log(eta)^s): the part of the boundary that does not move with time."""
    return math.log(float(zeta(s)) / math.log(eta) ** s)


class LowerConfidenceSequence(ABC):
    """A lower bound on a running mean of the conditional means of observations in [0, 1], valid
    at every time at once with probability at least 1 - `alpha`.

    `running_intersection` keeps the largest bound so far, which is valid only when the conditional
    mean does not change; a monitored model changes at every step, so it is off by default."""

    def __init__(self, alpha: float, running_intersection: bool = False) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self.running_intersection = running_intersection
        self.t = 0
        self.lower = 0.0

    def update(self, values: Iterable[float]) -> float:
        """Observations in order (each in [0, 1]); returns the lower bound after the last."""
        for x in values:
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"observations must lie in [0, 1], got {x}")
            self.t += 1
            bound = max(0.0, self._observe(float(x)))
            self.lower = max(self.lower, bound) if self.running_intersection else bound
        return self.lower

    @abstractmethod
    def _observe(self, x: float) -> float:
        """Take observation t (already counted); the bound at t."""

    def state_dict(self) -> dict[str, float]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, float]) -> None:
        missing = set(vars(self)) - set(state)  # configuration and running sums alike: one small record
        if missing:
            raise KeyError(f"the confidence sequence's state lacks {', '.join(sorted(missing))}")
        vars(self).update({k: state[k] for k in vars(self)})


class PredictablePlugInEB(LowerConfidenceSequence):
    """PrPl-EB (Waudby-Smith & Ramdas, JRSS-B 2024, Thm 2), one-sided, with the paper's regularised
    centring: mu_0 = 1/2, sigma^2_0 = 1/4, lambda_t = min(sqrt(2 log(1/a) / (sigma^2_{t-1} t log(1+t))), 1/2)."""

    def __init__(self, alpha: float, running_intersection: bool = False) -> None:
        super().__init__(alpha, running_intersection)
        self.sum_x = 0.0
        self.sum_sq = 0.0  # sum of (x_i - mu_i)^2, mu_i after x_i
        self.mean = 0.5    # mu_{t-1}
        self.var = 0.25    # sigma^2_{t-1}
        self.sum_lambda = 0.0
        self.sum_lambda_x = 0.0
        self.sum_penalty = 0.0  # sum of v_i psi_E(lambda_i)

    def _observe(self, x: float) -> float:
        t, log_a = self.t, math.log(1.0 / self.alpha)
        lam = min(math.sqrt(2.0 * log_a / (self.var * t * math.log(1.0 + t))), 0.5)
        v = 4.0 * (x - self.mean) ** 2
        self.sum_lambda += lam
        self.sum_lambda_x += lam * x
        self.sum_penalty += v * (-math.log(1.0 - lam) - lam) / 4.0
        self.sum_x += x
        self.mean = (0.5 + self.sum_x) / (t + 1)
        self.sum_sq += (x - self.mean) ** 2
        self.var = (0.25 + self.sum_sq) / (t + 1)
        return (self.sum_lambda_x - log_a - self.sum_penalty) / self.sum_lambda


class ConjugateMixtureEB(LowerConfidenceSequence):
    """CM-EB (Howard et al., Ann. Stat. 2021) with the polynomial stitching boundary:
    lower(t) = S_t / t - B(V_t) / t, V_t = sum (x_i - xhat_{i-1})^2, xhat_0 = 1/2, scale c = 1.

    `m`: the intrinsic time (sum of squared deviations) from which the bound is tight."""

    def __init__(self, alpha: float, m: float = 100.0, running_intersection: bool = False) -> None:
        super().__init__(alpha, running_intersection)
        self.m = m
        self.sum_x = 0.0
        self.variance = 0.0  # V_t

    def _observe(self, x: float) -> float:
        previous = self.sum_x / (self.t - 1) if self.t > 1 else 0.5
        self.variance += (x - previous) ** 2
        self.sum_x += x
        return (self.sum_x - poly_stitching_bound(self.variance, self.alpha, self.m)) / self.t


class Restarted:
    """A confidence sequence started afresh every `every` observations; the j-th (from 1) at level
    `alpha` 6 / (pi^2 j^2), so all of them hold at once with probability at least 1 - `alpha`.

    `lower` is the largest lower bound of the `keep` most recent ones: a running mean over a long
    healthy past moves slowly, one started near a collapse does not. Dropping older sequences only
    costs power, never the guarantee."""

    def __init__(self, alpha: float, every: int = 512, keep: int = 8, m: float = 100.0) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"every and keep must be at least 1, got every={every}, keep={keep}")
        self.alpha, self.every, self.keep, self.m = alpha, every, keep, m
        self.t = 0
        self.started = 0
        self.active: deque[ConjugateMixtureEB] = deque()

    def update(self, values: Iterable[float]) -> float:
        for x in values:
            if self.t % self.every == 0:
                self.started += 1
                self.active.append(ConjugateMixtureEB(self.alpha * 6.0 / (math.pi ** 2 * self.started ** 2), self.m))
                if len(self.active) > self.keep:
                    self.active.popleft()
            self.t += 1
            for sequence in self.active:
                sequence.update((x,))
        return self.lower

    @property
    def lower(self) -> float:
        return max((s.lower for s in self.active), default=0.0)

    def state_dict(self) -> dict:
        """Plain numbers and lists (a weights-only checkpoint loads them)."""
        return {"t": self.t, "started": self.started, "active": [s.state_dict() for s in self.active]}

    def load_state_dict(self, state: dict) -> None:
        self.t, self.started = int(state["t"]), int(state["started"])
        self.active = deque()
        for saved in state["active"]:
            sequence = ConjugateMixtureEB(saved["alpha"], saved["m"])
            sequence.load_state_dict(saved)
            self.active.append(sequence)
