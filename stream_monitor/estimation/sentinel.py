"""An Entropy-Sentinel-style window estimator: statistics of the window's entropy profile, mapped
to accuracy by a regressor fitted on the calibration meta-set.

Entropy Sentinel (Memoli Buffa & Del Corro, arXiv 2601.09001; repo pmemoli/Entropy-Sentinel,
core/computations.py) describes one LLM response by 17 statistics of its per-token entropy
profile and the chosen tokens' log-probabilities, and learns P(correct) from them with a random
forest. Transferred to an image stream (research/estimators.md 2b), a window is the "response"
and each image a "token":
- the profile is each image's entropy H(p) over all K classes (the paper truncates to the top 20
  of a vocabulary; K is small here) and `lp` its chosen class's log-probability (log max p);
- the 17 features keep the paper's order: mean, std, max, q10, q25, q50, q75, q90, skewness,
  kurtosis of the profile; se_sum; nll_avg, nll_max, nll_sum; lntp = sum(-lp log(-lp));
  mtp = max(-lp log(-lp)); ppl = exp(nll_avg). Probe windows differ in size, so the three sums
  are taken per image, which keeps a window of 800 images comparable with one of 8,000;
- the map is a window-level regressor (feature vector -> accuracy of the window), fitted by
  `stream-monitor calibrate` on the meta-set's probe windows: a random forest, as the paper's
  default, with its depth and split grid chosen by cross-validation that holds out whole meta-set
  runs (windows of one run are nested, so a split inside a run would flatter the fit).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .window import NotComputableError, WindowEstimator

FEATURES = ("mean", "std", "max", "q10", "q25", "q50", "q75", "q90", "skewness", "kurtosis", "se_sum",
            "nll_avg", "nll_max", "nll_sum", "lntp", "mtp", "ppl")
#: Entropy Sentinel's random-forest grid (train_stem_entropy_sentinel.py), 100 trees.
GRID = {"max_depth": (3, 5, 10), "min_samples_split": (2, 5, 10)}
MIN_IMAGES = 32  # fewer images than this give quantiles and moments that mean little


def profile(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the entropy (nats) and the chosen class's negative log-probability."""
    probs = np.asarray(probs, dtype=np.float64)
    log_p = np.log(np.clip(probs, 1e-12, None))
    return -(probs * log_p).sum(1), -log_p.max(1)


def window_features(entropy: np.ndarray, nll: np.ndarray) -> np.ndarray:
    """The 17 features (FEATURES' order) of a window's per-image entropies and NLLs."""
    from scipy.stats import kurtosis, skew

    h = np.asarray(entropy, dtype=np.float64)
    nll = np.asarray(nll, dtype=np.float64)
    if len(h) < 2:
        raise ValueError("window_features needs at least 2 images")
    flat = np.ptp(h) == 0  # skewness and kurtosis are undefined for a constant profile: 0 (a normal's)
    q10, q25, q50, q75, q90 = np.quantile(h, (0.1, 0.25, 0.5, 0.75, 0.9))
    nll_log_nll = nll * np.log(np.clip(nll, 1e-12, None))  # -lp log(-lp), 0 at lp = 0
    return np.array([
        h.mean(), h.std(), h.max(), q10, q25, q50, q75, q90,
        0.0 if flat else skew(h), 0.0 if flat else kurtosis(h), h.mean(),
        nll.mean(), nll.max(), nll.mean(), nll_log_nll.mean(), nll_log_nll.max(), np.exp(nll.mean()),
    ])


def fit_sentinel(features: Sequence[Sequence[float]], accuracy: Sequence[float], groups: Sequence[str],
                 seed: int = 0) -> dict[str, Any]:
    """The meta-set's training set and the grid point of least held-out-run MAE, as a calibration
    stores them (the forest is refitted from them on load: a few hundred rows take a fraction of
    a second, and the file stays JSON)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import GridSearchCV, GroupKFold

    x, y = np.asarray(features, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    params = {"max_depth": 5, "min_samples_split": 2}
    folds = min(5, len(set(groups)))
    cv_mae = None
    if folds >= 2 and len(y) >= 2 * folds:
        search = GridSearchCV(RandomForestRegressor(n_estimators=100, random_state=seed),
                              {k: list(v) for k, v in GRID.items()}, scoring="neg_mean_absolute_error",
                              cv=GroupKFold(n_splits=folds))
        search.fit(x, y, groups=list(groups))
        params = {k: int(v) for k, v in search.best_params_.items()}
        cv_mae = float(-search.best_score_)
    return {"features": x.tolist(), "accuracy": y.tolist(), "groups": list(groups), "params": params,
            "cv_mae": cv_mae, "seed": seed}


class SentinelForest:
    """A calibration's forest, refitted from its stored training set (deterministic: fixed seed)."""

    def __init__(self, training: dict[str, Any]) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.forest = RandomForestRegressor(n_estimators=100, random_state=training.get("seed", 0),
                                            **training["params"])
        self.forest.fit(np.asarray(training["features"]), np.asarray(training["accuracy"]))

    def __call__(self, features: Sequence[float]) -> float:
        """Estimated accuracy (%) of one window, clipped to [0, 100]."""
        value = self.forest.predict(np.asarray(features, dtype=np.float64)[None])[0]
        return float(np.clip(value, 0.0, 100.0))


class EntropySentinel(WindowEstimator):
    """Entropy Sentinel (Memoli Buffa & Del Corro, 2026): 17 entropy-profile features, a meta-set forest.

    The features are taken over the whole window (the cycle so far), and recorded with each
    estimate so a later calibration can redo it."""

    name = "sentinel"

    def __init__(self, stats=None, frozen: bool = False) -> None:
        self._forest: SentinelForest | None = None  # fitted on first use, kept across cycles
        super().__init__(stats, frozen)

    def reset(self) -> None:
        self._entropy: list[np.ndarray] = []
        self._nll: list[np.ndarray] = []

    def update(self, probs: np.ndarray) -> None:
        if not len(probs):
            return
        h, nll = profile(probs)
        self._entropy.append(h.astype(np.float32))
        self._nll.append(nll.astype(np.float32))

    def _profile(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._entropy:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        # one array per feed again, so a long cycle keeps a few arrays, not one per step
        self._entropy, self._nll = [np.concatenate(self._entropy)], [np.concatenate(self._nll)]
        return self._entropy[0], self._nll[0]

    def features(self) -> list[float] | None:
        """The window's 17 features (what a run records, so a later calibration can re-estimate)."""
        entropy, nll = self._profile()
        if len(entropy) < MIN_IMAGES:
            return None
        return [float(v) for v in window_features(entropy, nll)]

    def compute(self) -> float:
        self._need("sentinel")
        features = self.features()
        if features is None:
            raise NotComputableError(f"{self.name} needs {MIN_IMAGES} images in the window")
        if self._forest is None:
            self._forest = SentinelForest(self.stats.sentinel)
        return self._forest(features)

    def state_dict(self) -> dict[str, Any]:
        entropy, nll = self._profile()
        return {"entropy": torch.from_numpy(entropy.copy()), "nll": torch.from_numpy(nll.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._entropy, self._nll = [state["entropy"].numpy()], [state["nll"].numpy()]
