"""Fitting the MaNo and CBPE baselines' maps (`estimation.baseline_maps.BaselineMaps`) on labelled
windows of held-out domains: MaNo's accuracy line per normalisation (Xie et al., NeurIPS 2024) and
CBPE's isotonic max-softmax map, kept only where it lowers held-out ECE (NannyML's CBPE).

`benchmarks/fit_baseline_maps.py` runs it and writes the shipped file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..estimation.baseline_maps import BaselineMaps
from ..estimation.mano import SOFTMAX, TAYLOR, mano_score


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE (%) over equal-mass bins of the confidence (NannyML's binning)."""
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for part in np.array_split(order, bins):
        if len(part):
            total += len(part) * abs(float(correct[part].mean()) - float(confidence[part].mean()))
    return 100.0 * total / len(confidence)


def needs_isotonic(confidence: np.ndarray, correct: np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean held-out ECE raw, the same calibrated): NannyML's check, on stratified shuffle splits."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    raw, calibrated = [], []
    for train, test in StratifiedShuffleSplit(splits, random_state=seed).split(confidence, correct):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence[train], correct[train])
        raw.append(expected_calibration_error(confidence[test], correct[test]))
        calibrated.append(expected_calibration_error(iso.predict(confidence[test]), correct[test]))
    return float(np.mean(raw)), float(np.mean(calibrated))


def fit_baseline_maps(windows: list[tuple[np.ndarray, np.ndarray]], provenance: dict[str, Any]) -> BaselineMaps:
    """The maps from labelled windows [(softmax (N, K), labels (N,)), ...], one per domain."""
    from sklearn.isotonic import IsotonicRegression

    accuracy = np.array([100.0 * float((p.argmax(1) == y).mean()) for p, y in windows])
    lines = {}
    for branch in (SOFTMAX, TAYLOR):
        scores = np.array([mano_score(p, branch) for p, _ in windows])
        slope, intercept = np.polyfit(scores, accuracy, 1)
        lines[branch] = (float(slope), float(intercept))
    confidence = np.concatenate([p.max(1) for p, _ in windows]).astype(np.float64)
    correct = np.concatenate([(p.argmax(1) == y) for p, y in windows]).astype(np.float64)
    ece_raw, ece_calibrated = needs_isotonic(confidence, correct)
    isotonic = None
    if ece_calibrated < ece_raw:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, correct)
        isotonic = (tuple(float(v) for v in iso.X_thresholds_), tuple(float(v) for v in iso.y_thresholds_))
    return BaselineMaps(lines, isotonic, ece_raw, ece_calibrated, provenance)
