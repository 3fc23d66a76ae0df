"""Worker pieces without a run: batch splitting, the probe worker's flips, GPU shares. The flip
counting and the detectors they feed are tested with their package (tests/stream_monitor/estimation)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_monitor.sources.base import Batch
from stream_monitor.config import load_config
from stream_monitor.runtime.messages import Images, split_batches
from stream_monitor.runtime.workers import ProbeWorker, same_weights


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
    assert out[1][1].frozen_predictions is None


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


#: weights the probe loads that differ from the source model's ({}): an adapted snapshot
ADAPTED = {"fc.bias": np.full(10, 0.5, np.float32)}


def images(start: int, stop: int, readable=None, seed: int = 0) -> Images:
    idx = np.arange(start, stop) if readable is None else np.asarray(readable, np.int64)
    pixels = np.random.default_rng(seed + start).integers(0, 256, (len(idx), 3, 32, 32), dtype=np.uint8)
    return Images(start, stop, idx, pixels)


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
    result = probe.evaluate(ADAPTED, 350)
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
    start, later = {"fc.bias": np.zeros(10, np.float32)}, ADAPTED
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
    result = probe.evaluate(ADAPTED, 10)
    assert result.flips == 2 and result.weighted_flips == pytest.approx(2 / 6)  # NaN at 0 skipped, 0.2 ranks 2nd of 6
    probe.start_cycle({}, 1, 20)
    answers = iter([(np.zeros(8, np.int64), np.full(8, np.nan)), (np.zeros(8, np.int64), conf)])
    probe.add_reference(images(0, 8))
    assert probe.evaluate(ADAPTED, 30).weighted_flips == 0.0


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
    weights = [k for k in probe.initial_state if k.endswith("bn1.weight")]
    changed = probe.evaluate({k: -probe.initial_state[k].numpy() for k in weights}, 10)
    assert 0 < changed.flips <= 8 and 0 < changed.weighted_flips <= changed.flips


def test_probe_state_round_trip_continues_the_same(probe_config):
    probe = ProbeWorker(probe_config)
    probe.start_cycle({}, 2, 40)
    probe.add_reference(images(0, 6, seed=2))  # mid-reference: the snapshot is still held
    other = ProbeWorker(probe_config)
    other.load_state_dict(probe.state_dict())
    for p in (probe, other):
        p.add_reference(images(6, 10, seed=2))
    weights = {k: probe.initial_state[k].numpy() * 0.5 for k in probe.initial_state if k.endswith("bn2.bias")}
    a, b = probe.evaluate(weights, 90), other.evaluate(weights, 90)
    assert (a.cycle, a.cycle_step, a.flips, a.weighted_flips) == (b.cycle, b.cycle_step, b.flips, b.weighted_flips)
    assert np.array_equal(probe.reference_confidences, other.reference_confidences)


def adapted(probe: ProbeWorker, scale: float) -> dict[str, np.ndarray]:
    """A snapshot as an adapter takes one: every BatchNorm weight, scaled."""
    return {k: v.numpy() * scale for k, v in probe.initial_state.items() if k.endswith(("bn1.weight", "bn2.weight"))}


def spread_probe(probe_config, start: dict[str, np.ndarray]) -> ProbeWorker:
    probe = ProbeWorker(probe_config)
    probe.start_cycle(start, 1, 100)
    for lo in range(0, 40, 8):
        probe.observe(images(lo, lo + 8, seed=3))
        probe.add_reference(images(lo, lo + 8, seed=3))
    return probe


def outcome(result) -> tuple:
    """Everything a probe row takes from a result but its time."""
    return (result.step, result.cycle, result.cycle_step, result.probe_size, result.flips, result.weighted_flips,
            result.spread_size, result.spread_flips, result.spread_weighted_flips)


def test_a_probe_evaluated_twice_or_after_a_round_trip_gives_identical_results(probe_config):
    probe = spread_probe(probe_config, adapted(ProbeWorker(probe_config), 1.0))
    snapshot = adapted(probe, 0.5)
    first = probe.evaluate(snapshot, 150)
    assert first.spread_size == 8 and first.flips + first.spread_flips > 0  # both sets forwarded, and it moved
    assert outcome(probe.evaluate(snapshot, 150)) == outcome(first)
    resumed = ProbeWorker(probe_config)
    resumed.load_state_dict(probe.state_dict())
    assert outcome(resumed.evaluate(snapshot, 150)) == outcome(first)


def test_the_cycle_start_weights_are_counted_without_forwards_as_forwards_count_them(probe_config, monkeypatch):
    probe = spread_probe(probe_config, adapted(ProbeWorker(probe_config), 2.0))
    forwards, predict = [], probe._predict

    def counted(snapshot, images):
        forwards.append(len(images))
        return predict(snapshot, images)

    monkeypatch.setattr(probe, "_predict", counted)
    again = adapted(probe, 2.0)  # equal to the start snapshot, another object
    shortcut = probe.evaluate(again, 150)
    assert forwards == [8]  # the spread set by the cycle-start weights, nothing else
    monkeypatch.setattr("stream_monitor.runtime.workers.same_weights", lambda *args: False)
    assert outcome(probe.evaluate(again, 150)) == outcome(shortcut) and forwards == [8, 8, 8, 8]
    assert (shortcut.flips, shortcut.spread_flips) == (0, 0)


def test_same_weights_compares_what_the_probe_loads_bit_for_bit():
    own = {"a": None, "b": None}
    w = np.array([0.0, 1.0], np.float32)
    assert same_weights({"a": w, "x": w}, {"a": w.copy(), "x": -w}, own)  # x is never loaded
    assert not same_weights({"a": w}, {"a": w, "b": w}, own)  # b: the snapshot's against the model's own
    assert not same_weights({"a": w}, {"a": -w}, own)  # -0.0 == 0.0, but not bit for bit
    assert not same_weights({"a": w}, {"a": w.astype(np.float64)}, own)
    nan = np.array([np.nan], np.float32)
    assert same_weights({"a": nan}, {"a": nan.copy()}, own)


# ---- GPU shares --------------------------------------------------------------------------------------
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_decode_on_a_machine_without_cuda_says_what_to_do(tmp_path):
    from stream_monitor.runtime.workers import StreamWorker

    config = load_config(None, ["source.decode_device=cuda", f"source.data={str(tmp_path)!r}"])
    with pytest.raises(ValueError, match=r"source.decode_device is cuda but this source actor sees no CUDA device.*"
                                         r"source.num_gpus.*--set source.decode_device=cpu"):
        StreamWorker(config, 1)


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
