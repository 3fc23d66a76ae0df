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
  `stream-monitor calibrate` on the meta-set's probe windows. The paper's default is a random
  forest; its depth and split grid are chosen by cross-validation that holds out whole meta-set
  runs (windows of one run are nested, so a split inside a run would flatter the fit). The same
  held-out-run cross-validation then picks the forest, a ridge line on the standardised features,
  or their mean (REGRESSORS): a forest cannot reach past the accuracies it was trained on, a line
  can but is noisier; the calibration keeps each one's held-out-run error (`cv_maes`).

Beyond the paper, two groups of window features follow the 17 (MARGINAL_FEATURES, DUO_FEATURES).
The entropy profile cannot tell a model that is confident and right from one that a destroying
corruption leaves confident and wrong; on the embedded CCC streams at baseline 0 the frozen model
is at chance with a mean confidence of ~65%, and its predictions pile onto one class. So:
- the predicted-class marginal q of the window: its top share, its entropy (/ log K), and its
  overlap with the uniform label marginal, sum_k min(q_k, 1/K) = 1 - TV(q, uniform), which bounds
  the accuracy from above when the labels are balanced (as CCC's and the glyphs' are; COT in
  window.py makes the same assumption);
- with an Asymmetric Duos sidekick (estimation.duo_model), the share of the window where its class
  agrees with the feed's: GDE's agreement (Jiang et al., ICLR 2022), an accuracy signal that two
  differently built models share only where the input is still readable.
A feature vector is always a prefix of ALL_FEATURES, and the regressor is fitted on the columns its
training set and the window have in common: a window without a sidekick (or with another one) is
scored on the first 20, and an ablation can cut a training set to the paper's 17 (`leading`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .base import ESTIMATORS, NotComputableError
from .readings import Feed, Reading
from .window import WindowEstimator

FEATURES = ("mean", "std", "max", "q10", "q25", "q50", "q75", "q90", "skewness", "kurtosis", "se_sum",
            "nll_avg", "nll_max", "nll_sum", "lntp", "mtp", "ppl")
MARGINAL_FEATURES = ("top_share", "class_entropy", "prior_overlap")
DUO_FEATURES = ("duo_agreement",)
ALL_FEATURES = FEATURES + MARGINAL_FEATURES + DUO_FEATURES
#: Entropy Sentinel's random-forest grid (train_stem_entropy_sentinel.py), 100 trees.
GRID = {"max_depth": (3, 5, 10), "min_samples_split": (2, 5, 10)}
#: What a calibration chooses from by held-out-run cross-validation: the forest, a ridge line on
#: the standardised features (its penalty chosen by RidgeCV from RIDGE_ALPHAS), or their mean.
REGRESSORS = ("forest", "ridge", "blend")
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))
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


def marginal_features(counts: np.ndarray) -> list[float]:
    """MARGINAL_FEATURES of a window's predicted-class counts."""
    q = np.asarray(counts, dtype=np.float64) / max(1, int(np.sum(counts)))
    k = len(q)
    nonzero = q[q > 0]
    return [float(q.max()), float(-(nonzero * np.log(nonzero)).sum() / np.log(k)), float(np.minimum(q, 1.0 / k).sum())]


def _forest(params: dict[str, int], seed: int):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=100, random_state=seed, **params)


def _ridge():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))


def fit_sentinel(features: Sequence[Sequence[float]], accuracy: Sequence[float], groups: Sequence[str],
                 seed: int = 0, sidekick: str | None = None,
                 grid: dict[str, Sequence[int]] = GRID) -> dict[str, Any]:
    """The meta-set's training set, the forest's grid point and the regressor (REGRESSORS) of least
    held-out-run MAE, as a calibration stores them (the regressor is refitted from them on load:
    a few hundred rows take a fraction of a second, and the file stays JSON). Windows with fewer
    features (e.g. merged from an older calibration) cut every window to the shared prefix;
    `sidekick` names the Duos sidekick the agreement column came from. With fewer than two
    meta-set runs there is nothing to hold out: the forest at a middle grid point. `grid`: the
    forest's search space, GRID unless a caller (a test) can do with fewer fits."""
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_predict

    width = min(len(f) for f in features)
    x = np.asarray([list(f)[:width] for f in features], dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    params = {"max_depth": 5, "min_samples_split": 2}
    folds = min(5, len(set(groups)))
    regressor, cv_mae, cv_maes = "forest", None, None
    if folds >= 2 and len(y) >= 2 * folds:
        search = GridSearchCV(_forest({}, seed), {k: list(v) for k, v in grid.items()},
                              scoring="neg_mean_absolute_error", cv=GroupKFold(n_splits=folds))
        search.fit(x, y, groups=list(groups))
        params = {k: int(v) for k, v in search.best_params_.items()}
        held_out = {name: cross_val_predict(make, x, y, groups=list(groups), cv=GroupKFold(n_splits=folds))
                    for name, make in (("forest", _forest(params, seed)), ("ridge", _ridge()))}
        held_out["blend"] = (held_out["forest"] + held_out["ridge"]) / 2
        cv_maes = {name: float(np.abs(np.clip(held_out[name], y.min(), 100) - y).mean()) for name in REGRESSORS}
        regressor = min(REGRESSORS, key=cv_maes.get)
        cv_mae = cv_maes[regressor]
    return {"features": x.tolist(), "accuracy": y.tolist(), "groups": list(groups), "params": params,
            "regressor": regressor, "cv_mae": cv_mae, "cv_maes": cv_maes, "seed": seed,
            "names": list(ALL_FEATURES[:width]),
            "sidekick": sidekick if width > len(FEATURES + MARGINAL_FEATURES) else None}


def leading(training: dict[str, Any], width: int) -> dict[str, Any]:
    """A training set cut to its first `width` features: what the regressor makes of fewer (ablations)."""
    width = min(width, len(training["features"][0]))
    return {**training, "features": [list(f)[:width] for f in training["features"]],
            "names": list(ALL_FEATURES[:width]),
            "sidekick": training.get("sidekick") if width > len(FEATURES + MARGINAL_FEATURES) else None}


class SentinelRegressor:
    """A calibration's regressor (forest, ridge line or their mean: `regressor`), refitted from its
    stored training set (deterministic: fixed seed) on the feature columns it shares with the
    window it scores."""

    def __init__(self, training: dict[str, Any]) -> None:
        self.training = training
        self.kind = training.get("regressor")  # None: a training set of another version
        if self.kind not in REGRESSORS:
            raise ValueError(f"Unknown Sentinel regressor {self.kind!r} in the calibration; valid: "
                             f"{', '.join(REGRESSORS)}. Make the calibration again with this version.")
        self.width = len(training["features"][0])
        self._fitted: dict[int, list[Any]] = {}
        self._models(self.width)

    def _models(self, width: int) -> list[Any]:
        if width not in self._fitted:
            x = np.asarray(self.training["features"])[:, :width]
            y = np.asarray(self.training["accuracy"])
            models = [_forest(self.training["params"], self.training["seed"])] if self.kind != "ridge" else []
            models += [_ridge()] if self.kind != "forest" else []
            self._fitted[width] = [model.fit(x, y) for model in models]
        return self._fitted[width]

    def columns(self, features: Sequence[float], sidekick: str | None = None) -> int:
        """How many leading features the window and the training set share; the agreement column
        only where both come from the same sidekick."""
        width = min(len(features), self.width)
        if width > len(FEATURES + MARGINAL_FEATURES) and self.training.get("sidekick") != sidekick:
            width = len(FEATURES + MARGINAL_FEATURES)
        return width

    def __call__(self, features: Sequence[float], sidekick: str | None = None) -> float:
        """Estimated accuracy (%) of one window, clipped to [floor, 100]; `sidekick`: the run's Duos
        sidekick (estimation.duo_model), whose agreement is the window's last feature if any.

        The floor is the least accurate meta-set window's accuracy (near chance on the embedded
        meta-set): below it the ridge line extrapolates where no window shows how accuracy goes on,
        and read a CCC-Hard window at chance (10.8%) as 0%.

        The monotonicity guard: a window more confident than every training window (a lower mean
        entropy and a lower mean NLL of the chosen class than any) reads at least as accurate as
        the most confident training window; a line would otherwise carry a trend learned on
        mid-range windows past the edge and read a clean window as less accurate than all of
        them (issue 25: 10.2% on a window the frozen model gets 98% right). Its mirror, the
        ceiling: a window less confident than every training window reads at most as accurate as
        the least confident training window (a frozen model's near-uniform outputs on CCC-Hard's
        destroyed images, entropy at log K, read 100% without it)."""
        width = self.columns(features, sidekick)
        window = np.asarray(features[:width], dtype=np.float64)[None]
        value = np.mean([model.predict(window)[0] for model in self._models(width)])
        value = min(max(value, self.guard(features)), self.ceiling(features))
        return float(np.clip(value, self.floor, 100.0))

    def guard(self, features: Sequence[float]) -> float:
        """The least the guard lets a window read (0 unless it is more confident than every training window)."""
        x, mean, nll = self._confidence_columns()
        if features[mean] < x[:, mean].min() and features[nll] < x[:, nll].min():
            return float(self.training["accuracy"][int(np.argmin(x[:, mean]))])
        return 0.0

    def ceiling(self, features: Sequence[float]) -> float:
        """The most the ceiling lets a window read (100 unless it is less confident than every training window)."""
        x, mean, nll = self._confidence_columns()
        if features[mean] > x[:, mean].max() and features[nll] > x[:, nll].max():
            return float(self.training["accuracy"][int(np.argmax(x[:, mean]))])
        return 100.0

    def _confidence_columns(self) -> tuple[np.ndarray, int, int]:
        """The training features and the columns of the mean entropy and the mean NLL."""
        x = np.asarray(self.training["features"], dtype=np.float64)
        return x, FEATURES.index("mean"), FEATURES.index("nll_avg")

    @property
    def floor(self) -> float:
        return float(np.clip(min(self.training["accuracy"]), 0.0, 100.0))


@ESTIMATORS.register("sentinel", description=(
    "Entropy Sentinel (Memoli Buffa & Del Corro, 2026): entropy-profile and class-marginal features of the window "
    "through a meta-set regressor"))
class EntropySentinel(WindowEstimator):
    """Entropy Sentinel (Memoli Buffa & Del Corro, 2026): 17 entropy-profile features, a meta-set
    regressor; with the window's class marginal and, with a sidekick, the Duos agreement (see above).

    The features are taken over the whole window (the cycle so far), and recorded with each
    reading so a later calibration can redo it (`reread`). `sidekick` is the run's Duos sidekick,
    whose agreement the pipeline feeds through `update_sidekick`."""

    name = "sentinel"
    state_keys = ("entropy", "nll", "counts", "agreed", "paired")

    def __init__(self, stats=None, feed: Feed = Feed.SERVED, sidekick: str | None = None) -> None:
        self.sidekick = sidekick
        self._regressor: SentinelRegressor | None = None  # fitted on first use, kept across cycles
        super().__init__(stats, feed)

    @classmethod
    def create(cls, stats, feed: Feed, *, num_classes: int, sidekick: str | None = None) -> "EntropySentinel":
        return cls(stats, feed, sidekick)

    def reset(self) -> None:
        self._entropy: list[np.ndarray] = []
        self._nll: list[np.ndarray] = []
        self._counts = np.zeros(0, np.int64)
        self._agreed = self._paired = 0

    def update(self, probs: np.ndarray) -> None:
        if not len(probs):
            return
        h, nll = profile(probs)
        self._entropy.append(h.astype(np.float32))
        self._nll.append(nll.astype(np.float32))
        counts = np.bincount(np.asarray(probs).argmax(1), minlength=np.shape(probs)[1])
        self._counts = counts if not len(self._counts) else self._counts + counts

    def update_sidekick(self, probs: np.ndarray, sidekick_log_probs: np.ndarray) -> None:
        """The feed's softmax and the sidekick's log-softmax of the same images (the agreement)."""
        self._agreed += int((np.asarray(probs).argmax(1) == np.asarray(sidekick_log_probs).argmax(1)).sum())
        self._paired += len(probs)

    def _profile(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._entropy:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        # one array per feed again, so a long cycle keeps a few arrays, not one per step
        self._entropy, self._nll = [np.concatenate(self._entropy)], [np.concatenate(self._nll)]
        return self._entropy[0], self._nll[0]

    def features(self) -> list[float] | None:
        """The window's features, a prefix of ALL_FEATURES (what a run records, so a later
        calibration can re-estimate); None with fewer than MIN_IMAGES images."""
        entropy, nll = self._profile()
        if len(entropy) < MIN_IMAGES:
            return None
        out = [float(v) for v in window_features(entropy, nll)] + marginal_features(self._counts)
        return out + [self._agreed / self._paired] if self._paired else out

    def compute(self) -> float:
        self._need("sentinel")
        features = self.features()
        if features is None:
            raise NotComputableError(f"{self.name} needs {MIN_IMAGES} images in the window")
        if self._regressor is None:
            self._regressor = SentinelRegressor(self.stats.sentinel)
        return self._regressor(features, self.sidekick)

    def reading(self) -> Reading:
        features = self.features()
        return Reading(self.name, self.feed, self.target, self._value(),
                       features=None if features is None else tuple(features))

    def reread(self, reading: Reading) -> Reading:
        """The recorded window features through this feed's regressor (no value without one)."""
        if reading.features is None or not self.stats.sentinel:
            return reading.with_value(None)
        if self._regressor is None:
            self._regressor = SentinelRegressor(self.stats.sentinel)
        return reading.with_value(self._regressor(reading.features, self.sidekick))

    def state_dict(self) -> dict[str, Any]:
        entropy, nll = self._profile()
        return {"entropy": torch.from_numpy(entropy.copy()), "nll": torch.from_numpy(nll.copy()),
                "counts": torch.from_numpy(self._counts.copy()), "agreed": self._agreed, "paired": self._paired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self._entropy, self._nll = [state["entropy"].numpy()], [state["nll"].numpy()]
        self._counts = state["counts"].numpy()
        self._agreed, self._paired = int(state["agreed"]), int(state["paired"])
