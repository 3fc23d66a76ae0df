"""Adding the full-range meta-set to a calibration (calibration.fullrange), on synthetic windows."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.calibration.format import Calibration
from stream_monitor.calibration.fullrange import fit_full_range
from stream_monitor.calibration.rule import point_gaps
from stream_monitor.estimation.headline import HeadlineRule
from stream_monitor.estimation.pipeline import ANCHORED
from stream_monitor.estimation.readings import Feed, Target
from stream_monitor.estimation.sentinel import marginal_features, profile, window_features

FAMILIES = ("affine", "clean", "heldout", "invert")


@pytest.fixture(autouse=True)
def one_forest(monkeypatch):
    """The Sentinel's grid search cut to one point (sentinel.fit_sentinel's `grid`): these tests
    check the plumbing, not the search."""
    import functools

    from stream_monitor.calibration import fit
    from stream_monitor.estimation.sentinel import fit_sentinel

    monkeypatch.setattr(fit, "fit_sentinel", functools.partial(fit_sentinel, grid={"max_depth": (5,),
                                                                                  "min_samples_split": (2,)}))


def features(accuracy: float, size: int = 128, k: int = 10) -> list[float]:
    """Sentinel features of a window whose images put about `accuracy` % on their class."""
    spread = np.clip(accuracy / 100 + np.linspace(-0.05, 0.05, size), 1.0 / k, 0.999)
    probs = np.repeat(((1 - spread) / (k - 1))[:, None], k, 1)
    classes = np.arange(size) % k
    probs[np.arange(size), classes] = spread
    entropy, nll = profile(probs)
    return [float(v) for v in window_features(entropy, nll)] + marginal_features(np.bincount(classes, minlength=k))


def readings(rng: np.random.Generator, truth: float, score: float) -> dict:
    """One feed's recorded readings: the Sentinel's features, the nuclear norm's score, and an
    average confidence that over-reads by about 8 points."""
    return {"sentinel": {"value": None, "score": None, "features": features(truth)},
            "nuclear-norm": {"value": None, "score": score, "features": None},
            "average-confidence": {"value": float(np.clip(truth + rng.normal(8, 3), 0, 100)), "score": None,
                                   "features": None}}


def metaset(rng: np.random.Generator, adapters=("x",), windows: int = 6) -> list[dict]:
    """Meta-set windows: the online minus source accuracy is 50 x the served-minus-frozen score gap."""
    out = []
    for family in FAMILIES:
        for k in range(windows):
            source = float(rng.uniform(15, 95))
            frozen_score = source / 100 * 0.8 + float(rng.normal(0, 0.01))
            served = {}
            for name in adapters:
                gap = float(rng.uniform(0.0, 0.3))
                online = float(np.clip(source + 50 * gap + rng.normal(0, 1), 0, 100))
                served[name] = {"true_online_acc": online, "readings": readings(rng, online, frozen_score + gap)}
            out.append({"family": family, "domain": f"{family}:{k % 3 + 1}", "window": k // 3, "images": 128,
                        "true_source_acc": source, "frozen": readings(rng, source, frozen_score), "served": served})
    return out


def calibration(adapter: str = "x") -> Calibration:
    stats = {"temperature": 1.0, "accuracy": 95.0, "mean_confidence": 90.0, "atc_mc_threshold": 0.5,
             "atc_ne_threshold": -0.5, "nuclear_fit": None, "sentinel": None, "duo": None, "images": 64,
             "flag_precision": None, "anchor_fit": None}
    return Calibration(model="m", model_sha256="ab" * 32, adapter=adapter, hyperparameters={"lr": 0.01},
                       probe_size=64, probe_every=4, cycle=12, domains=["clean"], served_stats=dict(stats),
                       frozen_stats=dict(stats))


def long_streams(rng: np.random.Generator, n: int = 20) -> list[dict]:
    """Probe windows of an adapter's held-out streams (scores x100, as a calibration's points keep them)."""
    out = []
    for k in range(n):
        source, frozen, gap = float(rng.uniform(20, 80)), float(rng.uniform(30, 70)), float(rng.uniform(0, 20))
        out.append({"domain": f"heldout-ccc/s#{k}", "true_source_acc": source, "frozen_nuclear_score": frozen,
                    "nuclear_norm_score": frozen + gap, "true_online_acc": source + 50 * gap / 100,
                    "frozen_sentinel_features": features(source)})
    return out


def test_an_adapters_file_gets_both_rules_the_anchor_line_and_its_meta_set(tmp_path):
    rng = np.random.default_rng(0)
    windows = metaset(rng, adapters=("x", "y"))
    fitted = fit_full_range(calibration(), windows, "x", point_gaps(long_streams(rng), "x"))
    cal = fitted.calibration
    rules = Calibration.load(cal.save(tmp_path / "c.json")).headline_rules()
    assert set(rules) == {Target.SOURCE, Target.ONLINE}
    assert rules[Target.SOURCE].inside and rules[Target.ONLINE].inside  # 24 held-out windows: enough to rank
    assert rules[Target.ONLINE].feed != Feed.FROZEN
    # the Sentinel reads these windows' features exactly; average confidence over-reads by 8
    assert rules[Target.SOURCE].inside[0].estimator in ("sentinel", "nuclear-norm")
    assert rules[Target.SOURCE].outside[0].estimator == "average-confidence"
    slope, intercept = cal.frozen_stats["anchor_fit"]
    assert slope == pytest.approx(50.0, abs=3.0) and intercept == pytest.approx(0.0, abs=1.5)
    assert cal.served_stats["sentinel"] is not None and cal.served_stats["nuclear_fit"] is not None
    assert len(cal.meta_windows) == len(windows) and all(set(w["served"]) == {"x"} for w in cal.meta_windows)
    assert sum(p["domain"].startswith("metaset/") for p in cal.points) == len(windows)
    assert {(r["target"], r["family"]) for r in fitted.report} == {(t, f) for t in ("source", "online") for f in FAMILIES}
    # fitting again replaces the meta-set's points instead of adding them twice
    again = fit_full_range(cal, windows, "x").calibration
    assert len(again.points) == len(cal.points)


def test_the_frozen_file_gets_the_rule_of_adapters_without_a_calibration():
    rng = np.random.default_rng(1)
    windows = metaset(rng, adapters=("x",))
    fitted = fit_full_range(calibration("source"), windows, None, point_gaps(long_streams(rng), "x"))
    online = HeadlineRule.from_dict(fitted.calibration.rules["online"])
    assert online.feed == Feed.FROZEN and [c.estimator for c in online.inside] == [ANCHORED]
    assert fitted.calibration.frozen_stats["anchor_fit"] is not None
    assert all(w["served"] == {} for w in fitted.calibration.meta_windows)
    assert any(r["family"] == "adapter x (long streams)" for r in fitted.report)


def test_a_meta_set_without_the_files_adapter_or_without_windows_is_refused():
    windows = metaset(np.random.default_rng(2), adapters=("x",), windows=2)
    with pytest.raises(ValueError, match=r"no served feed of 'tent' in every window \(it has x\)"):
        fit_full_range(calibration(), windows, "tent")
    with pytest.raises(ValueError, match="has no window: build it first"):
        fit_full_range(calibration(), [], "x")


def rounded(value):
    """`value` with every float rounded to 6 decimals, for comparing fits made in another order."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def test_a_merge_learns_the_rules_again_on_every_files_meta_set_windows():
    from dataclasses import replace

    from stream_monitor.calibration import merge

    rng = np.random.default_rng(3)
    windows, streams = metaset(rng, adapters=("x",)), long_streams(rng)
    halves = windows[::2], windows[1::2]
    files = [fit_full_range(replace(calibration(), points=part), half, "x", point_gaps(part, "x")).calibration
             for part, half in zip((streams[:10], streams[10:]), halves)]
    merged = merge(files)
    whole = fit_full_range(replace(calibration(), points=streams), windows, "x", point_gaps(streams, "x")).calibration
    assert len(merged.meta_windows) == len(windows)
    # learned again on every window (equal to float rounding: the points come in another order)
    assert rounded(merged.rules) == rounded(whole.rules) and rounded(merged.rules) != rounded(files[0].rules)
    assert merged.frozen_stats["anchor_fit"] == pytest.approx(whole.frozen_stats["anchor_fit"])
    # a window both files have is read once
    assert len(merge([files[0], files[0]]).meta_windows) == len(halves[0])


def test_the_frozen_models_files_with_rules_are_not_merged():
    from stream_monitor.calibration import merge

    rng = np.random.default_rng(4)
    frozen = fit_full_range(calibration("source"), metaset(rng), None).calibration
    with pytest.raises(ValueError, match="cannot be learned again"):
        merge([frozen, frozen])


def test_a_meta_set_domain_without_a_readable_image_is_logged_not_a_crash(tmp_path):
    from stream_monitor.estimation.window import FeedStats
    from stream_monitor.metaset import MetaSetBuild, MetaSetReaders, build
    from stream_monitor.models import load_model

    class Unreadable:
        """A domain whose every image failed to decode: each slice reads as nothing."""

        def read(self, start, stop, batch_size):
            return iter(())

    logged = []
    readers = MetaSetReaders(load_model("embedded", None, "cpu"), adapter=lambda name: None,
                             domain=lambda domain, images: Unreadable())
    spec = MetaSetBuild(("clean",), {}, FeedStats(), windows=2, window_images=64)
    assert build(spec, None, tmp_path / "metaset.jsonl", logged.append, readers) == []
    assert len(logged) == 1 and "clean: no new window" in logged[0]
