"""Worker pieces without a run: batch splitting, probe flips, the flips calibration, collapse detectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sources.base import Batch
from stream_monitor.config import load_config
from stream_monitor.estimation.base import NotComputableError
from stream_monitor.estimation.detectors import (DEFAULT_DETECTORS, DETECTORS, EntropyCollapse, EstimateBelowSource,
                                                 FlipRateRise, MarginalEntropyCollapse, PredictionConcentration,
                                                 build_detectors, transitions)
from stream_monitor.estimation.flips import PAPER_RESNET50, SHIPPED, FlipsCalibration
from stream_monitor.runtime.messages import Images, split_batches
from stream_monitor.estimation.flips import percentile_ranks
from stream_monitor.runtime.workers import ProbeWorker


def batch(positions, skipped=(), size: int = 2) -> Batch:
    idx = np.asarray(list(positions), np.int64)
    n = len(idx)
    pixels = np.zeros((n, 3, size, size), np.uint8)
    pixels[:] = (idx % 256)[:, None, None, None]
    return Batch(indices=idx, images=pixels, labels=idx % 7, noise_a=np.full(n, "fog"),
                 severity_a=np.full(n, 1.5, np.float32), noise_b=np.full(n, "snow"),
                 severity_b=np.zeros(n, np.float32), skipped=list(skipped))


# ---- split_batches -------------------------------------------------------------------------------
def test_split_batches_keeps_positions_labels_and_info_aligned():
    # [100, 110) in windows of 4: 102 unreadable, window [104, 108) all unreadable (the source carries
    # its entries to the next batch), the last window short
    batches = [batch([100, 101, 103], ["p102"]), batch([108, 109], ["p104", "p105", "p106", "p107"])]
    out = split_batches(batches, 100, 110, 4)
    assert [(i.start, i.stop) for i, _ in out] == [(100, 104), (104, 108), (108, 110)]
    assert [(t.start, t.stop) for _, t in out] == [(100, 104), (104, 108), (108, 110)]
    (im0, t0), (im1, t1), (im2, t2) = out
    assert im0.indices.tolist() == [100, 101, 103] and t0.labels.tolist() == [2, 3, 5]
    assert im0.images[:, 0, 0, 0].tolist() == [100, 101, 103]
    assert (t0.noise_a, t0.severity_a, t0.noise_b, t0.severity_b) == ("fog", 1.5, "snow", 0.0)
    assert im0.skipped == t0.skipped == ["p102"]
    assert len(im1) == 0 and len(t1.labels) == 0 and im1.images.shape[0] == 0 and im1.images.dtype == np.uint8
    assert im2.indices.tolist() == [108, 109] and t2.labels.tolist() == [3, 4]
    assert [s for _, t in out for s in t.skipped] == ["p102", "p104", "p105", "p106", "p107"]  # none lost
    assert not hasattr(im0, "labels")


def test_split_batches_puts_a_trailing_empty_batch_in_the_last_window():
    # the source reports a last window of which nothing was readable as a final empty batch
    out = split_batches([batch([0, 1]), batch([], ["p2", "p3"])], 0, 4, 2)
    assert [(i.start, i.stop, len(i)) for i, _ in out] == [(0, 2, 2), (2, 4, 0)]
    assert out[1][0].skipped == out[1][1].skipped == ["p2", "p3"]
    assert out[1][1].source_predictions is None


def test_split_batches_of_nothing_readable_gives_empty_windows():
    out = split_batches([], 10, 15, 2)
    assert [(i.start, i.stop, len(i), len(t.labels)) for i, t in out] == [(10, 12, 0, 0), (12, 14, 0, 0),
                                                                          (14, 15, 0, 0)]


def test_split_batches_matches_one_read_per_window():
    batches = [batch(range(k, min(k + 3, 8))) for k in range(0, 8, 3)]
    out = split_batches(batches, 0, 8, 3)
    assert [i.indices.tolist() for i, _ in out] == [[0, 1, 2], [3, 4, 5], [6, 7]]


# ---- ProbeWorker ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe_config():
    return load_config(None, ["probe.size=8", "probe.chunk=4", "runtime.device=cpu"])


def images(start: int, stop: int, readable=None, seed: int = 0) -> Images:
    idx = np.arange(start, stop) if readable is None else np.asarray(readable, np.int64)
    pixels = np.random.default_rng(seed + start).integers(0, 256, (len(idx), 3, 32, 32), dtype=np.uint8)
    return Images(start, stop, idx, pixels)


def test_percentile_ranks_are_pandas_average_pct_ranks():
    values = np.array([0.9, 0.5, 0.5, 0.7, 0.1, 0.3, 0.9, 0.8])
    # ranks 7.5, 3.5, 3.5, 5, 1, 2, 7.5, 6 (ties averaged), over 8
    assert percentile_ranks(values).tolist() == [x / 8 for x in (7.5, 3.5, 3.5, 5, 1, 2, 7.5, 6)]
    ranks = percentile_ranks(np.array([np.nan, 0.2, 0.4]))  # pandas keeps NaN, ranks the rest among themselves
    assert math.isnan(ranks[0]) and ranks[1:].tolist() == [0.5, 1.0]


def test_probe_weighted_flips_by_hand(probe_config, monkeypatch):
    probe = ProbeWorker(probe_config)
    reference = (np.array([0, 1, 2, 3, 4, 5, 6, 7]), np.array([0.9, 0.5, 0.5, 0.7, 0.1, 0.3, 0.9, 0.8]))
    later = np.array([0, 9, 2, 3, 9, 5, 9, 7])  # positions 1, 4 and 6 flipped
    answers = iter([reference, (later, np.zeros(8))])
    monkeypatch.setattr(probe, "_predict", lambda snapshot, images: next(answers))
    probe.start_cycle({}, cycle=3, step=300)
    assert probe.evaluate({}, 305) is None  # no reference yet
    assert probe.add_reference(images(0, 5)) == 5 and not probe.ready
    assert probe.add_reference(images(5, 10)) == 8 and probe.ready  # capped at probe.size
    result = probe.evaluate({}, 350)
    assert (result.step, result.cycle, result.cycle_step, result.probe_size, result.flips) == (350, 3, 50, 8, 3)
    assert result.weighted_flips == pytest.approx((3.5 + 1 + 7.5) / 8)


def test_spread_reference_is_a_uniform_sample_of_the_cycle_whatever_the_batching(probe_config):
    from stream_monitor.estimation.flips import position_hash

    def coded(lo, hi):  # each image's pixels name its position, however the stream is cut
        idx = np.arange(lo, hi)
        return Images(lo, hi, idx, np.broadcast_to((idx % 251).astype(np.uint8)[:, None, None, None], (hi - lo, 3, 4, 4)))

    by_8, by_20 = ProbeWorker(probe_config), ProbeWorker(probe_config)
    for probe, size in ((by_8, 8), (by_20, 20)):
        probe.start_cycle({}, cycle=2, step=0)
        for lo in range(0, 200, size):
            probe.observe(coded(lo, min(lo + size, 200)))
    expected = np.sort(np.argsort(position_hash(np.arange(200), 2))[:8])  # bottom-8 of the cycle's hash
    assert np.array_equal(np.sort(np.argsort(by_8.spread_keys)), np.arange(8))
    assert np.array_equal(np.sort(position_hash(expected, 2)), np.sort(by_8.spread_keys))
    assert np.array_equal(by_8.spread_keys, by_20.spread_keys) and np.array_equal(by_8.spread_images, by_20.spread_images)
    assert np.array_equal(np.sort(by_8.spread_images[:, 0, 0, 0]), expected % 251)  # the images of those positions
    assert expected.max() > 100  # drawn from the whole cycle, not its first images
    other = ProbeWorker(probe_config)
    other.start_cycle({}, cycle=3, step=0)
    other.observe(images(0, 200))
    assert not np.array_equal(np.sort(other.spread_keys), np.sort(by_8.spread_keys))  # a new sample per cycle


def test_spread_flips_compare_the_cycle_start_snapshot_with_the_new_one(probe_config, monkeypatch):
    probe = ProbeWorker(probe_config)
    start, later = {"w": np.zeros(1)}, {"w": np.ones(1)}
    conf = np.array([0.9, 0.5, 0.5, 0.7, 0.1, 0.3, 0.9, 0.8])

    def predict(snapshot, images):
        if snapshot is start:
            return np.zeros(len(images), np.int64), conf[:len(images)]
        return np.array([0, 9, 0, 0, 9, 0, 9, 0])[:len(images)], np.zeros(len(images))

    monkeypatch.setattr(probe, "_predict", predict)
    probe.start_cycle(start, cycle=0, step=0)
    probe.observe(images(0, 50))
    probe.add_reference(images(0, 8))
    result = probe.evaluate(later, 20)
    assert (result.spread_size, result.spread_flips) == (8, 3)
    assert result.spread_weighted_flips == pytest.approx((3.5 + 1 + 7.5) / 8)
    state = probe.state_dict()
    again = ProbeWorker(probe_config)
    again.load_state_dict(state)
    assert np.array_equal(again.spread_keys, probe.spread_keys) and again.start_snapshot.keys() == start.keys()


def test_probe_nan_reference_confidences_do_not_make_weighted_flips_nan(probe_config, monkeypatch):
    probe = ProbeWorker(probe_config)
    conf = np.array([np.nan, 0.2, 0.4, np.nan, 0.1, 0.3, 0.9, 0.8])
    answers = iter([(np.zeros(8, np.int64), conf), (np.array([1, 1, 0, 0, 0, 0, 0, 0]), conf)])
    monkeypatch.setattr(probe, "_predict", lambda snapshot, images: next(answers))
    probe.start_cycle({}, 0, 0)
    probe.add_reference(images(0, 8))
    result = probe.evaluate({}, 10)
    assert result.flips == 2 and result.weighted_flips == pytest.approx(2 / 6)  # NaN at 0 skipped, 0.2 ranks 2nd of 6
    probe.start_cycle({}, 1, 20)
    answers = iter([(np.zeros(8, np.int64), np.full(8, np.nan)), (np.zeros(8, np.int64), conf)])
    probe.add_reference(images(0, 8))
    assert probe.evaluate({}, 30).weighted_flips == 0.0


def test_probe_reference_counts_stream_positions_when_images_are_unreadable(probe_config):
    # the driver feeds the cycle's first probe.size (8) positions; unreadable ones shrink the reference
    probe = ProbeWorker(probe_config)
    probe.start_cycle({}, 0, 0)
    assert probe.add_reference(images(0, 4, readable=[0, 2, 3])) == 3 and not probe.ready
    assert probe.add_reference(images(4, 8, readable=[])) == 3 and probe.ready
    assert probe.add_reference(images(8, 12)) == 3
    assert probe.evaluate({}, 20).probe_size == 3
    probe.start_cycle({}, 1, 30)
    assert probe.add_reference(images(0, 6)) == 6
    assert probe.add_reference(images(6, 12, readable=[6, 8, 9, 10])) == 7 and probe.ready  # 7 is unreadable
    assert probe.evaluate({}, 40).probe_size == 7
    probe.start_cycle({}, 2, 60)
    probe.add_reference(images(0, 8, readable=[]))
    assert not probe.ready and probe.evaluate({}, 70) is None  # nothing readable: no reference this cycle


def test_probe_of_the_cycle_snapshot_flips_nothing_and_a_changed_one_flips(probe_config):
    probe = ProbeWorker(probe_config)
    probe.start_cycle({}, 0, 0)  # the source weights
    probe.add_reference(images(0, 8, seed=1))
    same = probe.evaluate({}, 5)
    assert (same.flips, same.weighted_flips, same.probe_size) == (0, 0.0, 8)
    weights = [k for k in probe.source_state if k.endswith("bn1.weight")]
    changed = probe.evaluate({k: -probe.source_state[k].numpy() for k in weights}, 10)
    assert 0 < changed.flips <= 8 and 0 < changed.weighted_flips <= changed.flips


def test_probe_state_round_trip_continues_the_same(probe_config):
    probe = ProbeWorker(probe_config)
    probe.start_cycle({}, 2, 40)
    probe.add_reference(images(0, 6, seed=2))  # mid-reference: the snapshot is still held
    other = ProbeWorker(probe_config)
    other.load_state_dict(probe.state_dict())
    for p in (probe, other):
        p.add_reference(images(6, 10, seed=2))
    weights = {k: probe.source_state[k].numpy() * 0.5 for k in probe.source_state if k.endswith("bn2.bias")}
    a, b = probe.evaluate(weights, 90), other.evaluate(weights, 90)
    assert (a.cycle, a.cycle_step, a.flips, a.weighted_flips) == (b.cycle, b.cycle_step, b.flips, b.weighted_flips)
    assert np.array_equal(probe.reference_confidences, other.reference_confidences)


# ---- FlipsCalibration ----------------------------------------------------------------------------
def test_paper_calibration_values():
    cal = SHIPPED["resnet50"][990]
    assert cal is PAPER_RESNET50 and cal.cycle_step == 990
    assert [round(cal(wf, 1000)[0], 1) for wf in (0, 100, 200)] == [75.7, 47.1, 25.6]
    assert round(cal(0, 1000)[0], 2) == 75.66
    assert "embedded" not in SHIPPED  # the embedded model's f comes from `stream-monitor calibrate`


def test_paper_calibration_holds_the_vertex_value_above_it():
    cal = PAPER_RESNET50
    a, b, c = cal.coefficients
    vertex = -b / (2 * a)
    assert 451 < vertex < 453
    at_vertex = cal(vertex, 1000)[0]
    assert at_vertex == pytest.approx(c - b * b / (4 * a)) and 2.9 < at_vertex < 3.1
    assert cal(600, 1000)[0] == at_vertex and cal(1000, 1000)[0] == at_vertex  # the parabola would rise again
    assert cal(400, 1000)[0] > at_vertex


def test_calibration_clips_to_percent():
    assert PAPER_RESNET50(-100, 1000)[0] == 100.0
    falling = FlipsCalibration("m", (0.0, -1.0, 50.0), (0.0, 100.0), cycle_step=10)
    assert falling(80, 1000) == (0.0, False) and falling(20, 1000) == (30.0, False)


def test_calibration_scales_by_probe_size():
    cal = PAPER_RESNET50
    assert cal(10, 100) == cal(100, 1000)  # the paper's 100-image setting: x10
    assert cal(50, 500) == cal(100, 1000)
    assert round(cal(20, 100)[0], 1) == 25.6


@pytest.mark.parametrize("wf, size, extrapolated", [
    (12.9, 1000, True), (13, 1000, False), (265, 1000, False), (265.1, 1000, True), (0, 1000, True),
    (1.2, 100, True), (1.3, 100, False), (26.5, 100, False), (27, 100, True),
])
def test_calibration_flags_extrapolation_outside_the_fitted_range(wf, size, extrapolated):
    assert PAPER_RESNET50(wf, size)[1] is extrapolated


# ---- detectors -----------------------------------------------------------------------------------
def feed(detector, column: str, values) -> None:
    for v in values:
        detector.update_step({column: v, "correct": 0})


@pytest.mark.parametrize("make, column, stable, collapsed", [
    (lambda: EntropyCollapse(num_classes=10), "mean_entropy", 1.2, 0.01),
    (lambda: PredictionConcentration(), "top_class_share", 0.15, 1.0),
])
def test_step_detectors_fire_on_collapse_and_stay_quiet_when_stable(make, column, stable, collapsed):
    detector = make()
    feed(detector, column, [stable] * 49)
    with pytest.raises(NotComputableError):
        detector.compute()
    feed(detector, column, [stable, None, math.nan])  # missing values do not count
    verdict = detector.compute()
    assert not verdict.firing and verdict.value == pytest.approx(stable)
    feed(detector, column, [stable] * 200)
    assert not detector.compute().firing
    feed(detector, column, [collapsed] * 100)
    assert detector.compute().firing
    state = detector.state_dict()
    restored = make()
    restored.load_state_dict(state)
    assert restored.compute() == detector.compute()
    detector.reset()
    with pytest.raises(NotComputableError):
        detector.compute()


def test_entropy_threshold_scales_with_the_number_of_classes():
    assert EntropyCollapse(1000).threshold == pytest.approx(0.2)
    assert EntropyCollapse(10).threshold == pytest.approx(0.2 / 3)


def test_detectors_need_their_warmup_before_a_verdict():
    detector = PredictionConcentration(warmup=3)
    feed(detector, "top_class_share", [0.9, 0.9])
    with pytest.raises(NotComputableError, match="needs 3 steps"):
        detector.compute()
    feed(detector, "top_class_share", [0.9])
    assert detector.compute().firing


def test_estimate_below_source_needs_patience():
    detector = EstimateBelowSource(margin=5.0, patience=2)
    with pytest.raises(NotComputableError):
        detector.compute()
    detector.update_probe({"est_online_gap": -10.0})
    assert not detector.compute().firing
    detector.update_probe({"est_online_gap": None})  # no estimate: no change
    detector.update_probe({"est_online_gap": -10.0})
    assert detector.compute().firing
    detector.update_probe({"est_online_gap": -2.0})
    assert not detector.compute().firing


def test_estimate_below_source_reads_the_rows_one_calibration_gap():
    detector = EstimateBelowSource(margin=5.0, patience=1)
    # the headlines differ by 10 points, the gap through one calibration by 2: no warning
    detector.update_probe({"est_online_acc": 50.0, "est_source_acc": 60.0, "est_online_gap": -2.0})
    assert not detector.compute().firing and detector.compute().value == pytest.approx(2.0)
    detector.update_probe({"est_online_acc": 40.0, "est_source_acc": 45.0, "est_online_gap": -7.0})
    verdict = detector.compute()
    assert verdict.firing and "7.0 points below" in verdict.evidence
    # the headlines alone are not read: a row without a gap changes nothing
    detector.update_probe({"est_online_acc": 30.0, "est_source_acc": 60.0})
    assert detector.compute().value == pytest.approx(7.0)


def test_top_class_share_does_not_warn_when_the_source_model_piles_up_as_much():
    detector = PredictionConcentration(warmup=3)
    # the source model scores every 8th batch; on a stream that piles both onto one class: no warning
    for step in range(1, 201):
        detector.update_step({"step": step, "top_class_share": 0.8,
                              "source_top_class_share": 0.75 if step % 8 == 1 else None})
    verdict = detector.compute()
    assert not verdict.firing and "the source model's 75%" in verdict.evidence
    for step in range(201, 401):  # the adapter alone goes on to a single class
        detector.update_step({"step": step, "top_class_share": 1.0,
                              "source_top_class_share": 0.75 if step % 8 == 1 else None})
    assert detector.compute().firing
    restored = PredictionConcentration(warmup=3)
    restored.load_state_dict(detector.state_dict())
    assert restored.compute() == detector.compute()


def test_top_class_share_clears_only_below_the_thresholds_by_its_hysteresis():
    detector = PredictionConcentration(warmup=1)
    feed(detector, "top_class_share", [0.9] * 60)
    assert detector.compute().firing and detector.ema == pytest.approx(0.9, abs=0.01)
    while detector.ema > 0.47:  # under the 50% that raised it, not yet 5 points under
        feed(detector, "top_class_share", [0.46])
    assert detector.compute().firing
    feed(detector, "top_class_share", [0.2] * 5)
    assert detector.ema < 0.45 and not detector.compute().firing
    feed(detector, "top_class_share", [0.48] * 100)  # back near the threshold from below: quiet
    assert not detector.compute().firing


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_decode_on_a_machine_without_cuda_says_what_to_do(tmp_path):
    from stream_monitor.runtime.workers import SourceWorker

    config = load_config(None, ["source.decode_device=cuda", f"source.data={str(tmp_path)!r}"])
    with pytest.raises(ValueError, match=r"source.decode_device is cuda but this source actor sees no CUDA device.*"
                                         r"source.num_gpus.*--set source.decode_device=cpu"):
        SourceWorker(config, 1)


@pytest.mark.parametrize("overrides, cuda, adapter, source", [
    ([], False, 0.0, 0.0),
    ([], True, 1.0, 0.0),
    (["probe.num_gpus=0.25"], True, 0.75, 0.0),
    (["source.decode_device=cuda", "source.data='/d'", "source.num_actors=4"], True, 0.6, 0.1),
    (["source.decode_device=cuda", "source.data='/d'", "source.num_actors=20"], True, 1.0, 0.1),
    (["source.decode_device=cuda", "source.data='/d'", "runtime.num_gpus=1.0"], True, 1.0, 0.1),
    (["runtime.num_gpus=0.5"], False, 0.5, 0.0),
])
def test_gpu_shares_fit_adapter_sources_and_probe_on_one_device(overrides, cuda, adapter, source):
    from stream_monitor.runtime.actors import gpu_shares

    got = gpu_shares(load_config(None, overrides), cuda)
    assert got == pytest.approx((adapter, source))


def test_marginal_entropy_is_judged_against_its_largest_possible_value():
    detector = MarginalEntropyCollapse(1000, warmup=1)  # 64 images can hold at most ln 64 nats, not ln 1000
    detector.update_step({"marginal_entropy": 0.8 * math.log(64), "images": 64})
    assert not detector.compute().firing and detector.compute().value == pytest.approx(0.8)
    detector.update_step({"marginal_entropy": 0.0, "images": 1})  # a one-image batch: no evidence
    assert detector.count == 1
    detector = MarginalEntropyCollapse(10)
    for _ in range(200):  # a stable stream: predictions over most of the 10 classes
        detector.update_step({"marginal_entropy": 0.9 * math.log(10), "images": 64})
    assert not detector.compute().firing
    for _ in range(100):  # collapse: two classes left
        detector.update_step({"marginal_entropy": math.log(2), "images": 64})
    assert detector.compute().firing and "30% of its maximum" in detector.compute().evidence


def flips_probe(cycle, step, share, size=1000):
    return {"cycle": cycle, "cycle_step": step, "flips": int(share * size), "probe_size": size}


def test_flip_rate_fires_when_flips_jump_above_earlier_cycles_at_the_same_step():
    detector = FlipRateRise(factor=2.0, rise=0.1, history=5, patience=2)
    rng = np.random.default_rng(0)
    for cycle in range(2):  # flips grow within a cycle; no verdict before two earlier cycles
        for step in range(100, 1000, 100):
            detector.update_probe(flips_probe(cycle, step, 0.02 * step / 100 + rng.uniform(0, 0.02)))
            with pytest.raises(NotComputableError, match="two earlier cycles"):
                detector.compute()
    for cycle in range(2, 12):  # a stable stream: the same growth, noisy; quiet all along
        for step in range(100, 1000, 100):
            detector.update_probe(flips_probe(cycle, step, 0.02 * step / 100 + rng.uniform(0, 0.04)))
            assert not detector.compute().firing
    detector.update_probe(flips_probe(12, 100, 0.5))  # collapse: half the reference set flips at once
    assert not detector.compute().firing  # one probe is not enough
    detector.update_probe(flips_probe(12, 200, 0.7))
    verdict = detector.compute()
    assert verdict.firing and "70% of the reference set flipped" in verdict.evidence
    restored = FlipRateRise()
    restored.load_state_dict(detector.state_dict())
    assert restored.compute() == verdict
    detector.update_probe(flips_probe(12, 300, 0.07))  # back to normal: the warning clears
    assert not detector.compute().firing


def test_small_flip_counts_need_an_absolute_rise_too():
    detector = FlipRateRise(factor=2.0, rise=0.1, patience=1)
    for cycle in range(3):
        detector.update_probe(flips_probe(cycle, 100, 0.01))
    detector.update_probe(flips_probe(3, 100, 0.05))  # 5x the median, but only 4 points more
    assert not detector.compute().firing


def test_detectors_are_registered_by_name_and_the_default_set_is_the_measured_one():
    assert set(DETECTORS.names()) == {"entropy-ema", "top-class-share", "marginal-entropy", "online-below-source",
                                      "aetta-drop", "flip-rate"}
    built = build_detectors(DEFAULT_DETECTORS, 10)
    assert [d.name for d in built] == list(DEFAULT_DETECTORS)
    assert built[0].threshold == pytest.approx(0.2 / 3) and (built[-1].drop, built[-1].span) == (10.0, 10)
    with pytest.raises(KeyError, match="Did you mean 'flip-rate'"):
        build_detectors(["flip-rat"], 10)
    assert load_config(None, []).estimation.detectors == ",".join(DEFAULT_DETECTORS)  # one default, two spellings
    assert load_config(None, ["estimation.detectors="]).estimation.detectors == ""  # warnings off


def test_transitions_raise_and_clear_each_warning_once():
    detector = PredictionConcentration(warmup=1)
    active: list[str] = []
    feed(detector, "top_class_share", [0.1])
    assert list(transitions([detector], active)) == []
    for _ in range(100):
        feed(detector, "top_class_share", [1.0])
    (fired,) = list(transitions([detector], active))
    assert fired[0] == "warning" and fired[1] is detector and active == ["top-class-share"]
    assert list(transitions([detector], active)) == []  # still on: no second warning
    for _ in range(100):
        feed(detector, "top_class_share", [0.1])
    assert [kind for kind, _, _ in transitions([detector], active)] == ["clear"] and active == []
