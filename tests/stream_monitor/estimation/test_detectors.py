"""Collapse detectors (estimation/detectors.py): each one's rule on hand-made rows, the registry and
default set, the warning transitions, and checkpoints that keep only the running quantities."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from stream_monitor.config import load_config
from stream_monitor.estimation.base import NotComputableError
from stream_monitor.estimation.context import EstimationContext
from stream_monitor.estimation.window import FeedStats
from stream_monitor.estimation.detectors import (DEFAULT_DETECTORS, DEFAULT_WARNING, DETECTORS, ASRTrigger, CollapseDetector,
                                                 EntropyCollapse, EstimateBelowSource, FlipRateRise,
                                                 MarginalEntropyCollapse, DetectorSetup, PredictionConcentration,
                                                 SequentialRiskTest, Verdict, build_detectors, transitions)


def feed(detector, column: str, values) -> None:
    for v in values:
        detector.update_step({column: v, "correct": 0})


@pytest.mark.parametrize("make, column, stable, collapsed", [
    (lambda: EntropyCollapse(num_classes=10), "mean_entropy", 1.2, 0.01),
    (lambda: PredictionConcentration(), "top_class_share", 0.15, 1.0),
])
def test_step_detectors_fire_on_collapse_and_stay_quiet_when_stable(make, column, stable, collapsed):
    detector = make()
    feed(detector, column, [stable] * (detector.warmup - 1))
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


def test_the_default_warmup_is_the_averages_memory():
    # 1 / (1 - decay) steps: judged as soon as the first value weighs no more than e^-1
    assert EntropyCollapse(10).warmup == 10  # decay 0.9
    assert PredictionConcentration().warmup == 20 and MarginalEntropyCollapse(10).warmup == 20  # 0.95


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
                              "frozen_top_class_share": 0.75 if step % 8 == 1 else None})
    verdict = detector.compute()
    assert not verdict.firing and "the source model's 75%" in verdict.evidence
    for step in range(201, 401):  # the adapter alone goes on to a single class
        detector.update_step({"step": step, "top_class_share": 1.0,
                              "frozen_top_class_share": 0.75 if step % 8 == 1 else None})
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
    assert set(DETECTORS.names()) == {"divergence", "entropy-ema", "top-class-share", "marginal-entropy",
                                      "online-below-source", "aetta-drop", "flip-rate", "risk-test", "asr",
                                      "chance-agreement"}
    assert "asr" not in DEFAULT_DETECTORS  # a benchmark decides
    assert set(DEFAULT_WARNING) <= set(DEFAULT_DETECTORS)
    built = build_detectors(DEFAULT_DETECTORS, DetectorSetup(10))
    assert [d.name for d in built] == list(DEFAULT_DETECTORS)
    assert built[1].threshold == pytest.approx(0.2 / 3) and (built[-1].drop, built[-1].span) == (10.0, 10)
    with pytest.raises(KeyError, match="Did you mean 'flip-rate'"):
        build_detectors(["flip-rat"], DetectorSetup(10))
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


# ---- checkpoints ---------------------------------------------------------------------------------
#: A run whose served feed was calibrated (the risk test's clean error and threshold): every detector computes.
SETUP = DetectorSetup(10, EstimationContext(served=FeedStats(accuracy=80.0, atc_mc_threshold=0.5, images=2000)))


def exercised(name: str) -> CollapseDetector:
    """The registered detector for 10 classes, after rows that move each one's running quantities
    far enough for a verdict."""
    detector = DETECTORS.get(name).for_model(SETUP)
    for step in range(1, 121):
        detector.update_step({"step": step, "images": 64, "mean_entropy": 0.5, "top_class_share": 0.6,
                              "frozen_top_class_share": 0.3 if step % 8 == 1 else None, "marginal_entropy": 1.5,
                              "frozen_flip_rate": 0.2 if step % 8 == 1 else None,
                              "aetta_acc": 60.0 - step / 10, "diverged": step >= 100,
                              "proxy_flagged": 20, "proxy_seen": 64})
    for cycle in range(4):
        for step in (100, 200):
            detector.update_probe({"est_online_gap": -8.0, **flips_probe(cycle, step, 0.05 + 0.1 * cycle)})
    return detector


@pytest.mark.parametrize("name", DETECTORS.names())
def test_a_checkpoint_holds_the_running_quantities_and_restores_them(name):
    cls = DETECTORS.get(name)
    blank = cls.__new__(cls)
    blank.reset()
    # the state keys are what `reset` starts: no running quantity left out, no configuration in
    assert set(cls._state_dict_all_req_keys) == set(vars(blank))
    detector = exercised(name)
    state = detector.state_dict()
    assert set(state) == set(cls._state_dict_all_req_keys)
    restored = cls.for_model(SETUP)
    restored.load_state_dict(state)
    assert restored.state_dict() == state and restored.compute() == detector.compute()
    taken = copy.deepcopy(state)
    detector.update_step({"step": 121, "images": 64, "top_class_share": 1.0, "aetta_acc": 1.0})
    detector.update_probe({"est_online_gap": -30.0, **flips_probe(4, 100, 0.9)})
    assert state == taken  # a checkpoint does not follow the detector on


def test_a_resumed_detector_keeps_its_new_threshold_and_the_checkpoints_running_quantities():
    old = PredictionConcentration(share=0.5, warmup=3)
    feed(old, "top_class_share", [0.7] * 100)
    assert old.compute().firing
    checkpoint = dict(vars(old))  # what a checkpoint held before the state keys: the thresholds too
    resumed = PredictionConcentration(share=0.8, warmup=3)
    resumed.load_state_dict(checkpoint)
    assert resumed.share == 0.8 and (resumed.ema, resumed.count) == (old.ema, old.count)
    feed(resumed, "top_class_share", [0.7])  # the warning is judged again on the next step, by the new threshold
    verdict = resumed.compute()
    assert not verdict.firing and "threshold 80%" in verdict.evidence


def test_a_state_without_a_running_quantity_is_refused():
    state = exercised("top-class-share").state_dict()
    del state["source_ema"]
    with pytest.raises(ValueError, match="top-class-share detector's state lacks 'source_ema'"):
        PredictionConcentration().load_state_dict(state)


# ---- divergence ----------------------------------------------------------------------------------
def test_divergence_fires_on_the_first_non_finite_step_without_warm_up_and_stays_on():
    detector = DETECTORS.get("divergence").for_model(DetectorSetup(10))
    assert detector.compute() == Verdict(False, "loss, gradient and served logits finite", 0.0)  # no warm-up
    detector.update_step({"step": 1, "diverged": False})
    assert not detector.compute().firing
    detector.update_step({"step": 2, "diverged": True, "loss": None})
    verdict = detector.compute()
    assert verdict.firing and verdict.value == 2.0
    assert verdict.evidence.startswith("the adapter diverged at step 2: a non-finite loss, gradient or served logits")
    detector.update_step({"step": 3, "diverged": False})  # a diverged model's weights do not come back
    assert detector.compute().firing and detector.compute().value == 2.0
    active: list[str] = []
    assert [(kind, d.name) for kind, d, _ in transitions([detector], active)] == [("warning", "divergence")]
    detector.reset()  # re-armed after a reset to the source model
    assert not detector.compute().firing


# ---- ASR's reset trigger ---------------------------------------------------------------------------
def asr_rows(detector, entropies, flips=None):
    for k, h in enumerate(entropies):
        detector.update_step({"step": k + 1, "marginal_entropy": h,
                              "frozen_flip_rate": None if flips is None else flips[k]})


def test_asr_baseline_follows_the_marginal_entropy_with_the_flip_rates_momentum():
    detector = DETECTORS.get("asr").for_model(DetectorSetup(10))
    assert (detector.m0, detector.a0) == (0.15, 0.5) and detector.start == pytest.approx(math.log(5))
    with pytest.raises(NotComputableError, match="asr needs a step's marginal entropy"):
        detector.compute()
    # B0 = ln 5 = 1.609438; m = 0.15 f + 0.85
    asr_rows(detector, [2.0], [None])  # f unknown, taken as 0: m = 0.85
    assert detector.baseline == pytest.approx(0.85 * math.log(5) + 0.15 * 2.0)  # 1.668022
    asr_rows(detector, [1.8], [0.4])  # a scored batch: m = 0.91
    assert detector.baseline == pytest.approx(0.91 * 1.668022 + 0.09 * 1.8, abs=1e-6)  # 1.679900
    asr_rows(detector, [1.9], [None])  # between scored batches: the latest f, 0.4
    assert detector.baseline == pytest.approx(0.91 * 1.679900 + 0.09 * 1.9, abs=1e-6)  # 1.699709
    verdict = detector.compute()
    assert not verdict.firing and verdict.value == pytest.approx(1.9 - 1.679900, abs=1e-6)
    assert verdict.evidence == ("marginal entropy 1.900 nats at or above its baseline 1.680 (flip rate against "
                                "the frozen model 40%)")
    asr_rows(detector, [math.nan, None])  # no marginal entropy: nothing changes
    assert detector.compute() == verdict


def test_asr_fires_on_a_marginal_entropy_drop_and_clears_when_it_is_back_above_the_baseline():
    detector = ASRTrigger(10)
    stable = 0.9 * math.log(10)
    asr_rows(detector, [stable] * 200, [0.1 if k % 8 == 0 else None for k in range(200)])
    assert not detector.compute().firing and detector.baseline == pytest.approx(stable, abs=1e-3)
    asr_rows(detector, [1.0])  # predictions pile onto fewer classes
    verdict = detector.compute()
    assert verdict.firing and verdict.value == pytest.approx(1.0 - detector.baseline)
    assert verdict.evidence.startswith("marginal entropy 1.000 nats under its baseline 2.07")
    held = detector.baseline
    asr_rows(detector, [1.2])  # B does not move while under it: still on
    assert detector.compute().firing and detector.baseline == held
    active: list[str] = []
    assert [kind for kind, _, _ in transitions([detector], active)] == ["warning"]
    asr_rows(detector, [stable])  # back at or above B: the warning clears on that step
    assert not detector.compute().firing
    assert [kind for kind, _, _ in transitions([detector], active)] == ["clear"]
    detector.reset()  # after a reset B starts again at log(K a0), f unknown again
    asr_rows(detector, [2.0])
    assert detector.latest == [2.0, pytest.approx(math.log(5))] and detector.flip_rate is None
    assert "unknown, taken as 0" in detector.compute().evidence


def test_asr_more_flips_slow_the_baseline_so_a_drop_triggers_less():
    few, many = ASRTrigger(10), ASRTrigger(10)
    asr_rows(few, [3.0] * 30, [0.0] * 30)  # m = 0.85: B climbs toward 3 nats
    asr_rows(many, [3.0] * 30, [1.0] * 30)  # every prediction flipped: m = 1, B stays at ln 5
    assert few.baseline > 2.9 and many.baseline == pytest.approx(math.log(5))
    asr_rows(few, [2.0]), asr_rows(many, [2.0])
    assert few.compute().firing and not many.compute().firing
    half = ASRTrigger(10)
    asr_rows(half, [3.0] * 30, [0.5] * 30)
    assert many.baseline < half.baseline < few.baseline


def test_asr_fires_from_the_first_step_when_the_marginal_entropy_is_under_log_k_a0():
    detector = ASRTrigger(1000)  # no warm-up, as in the paper: B0 = ln 500
    asr_rows(detector, [math.log(64)])  # a 64-image batch of confident, spread predictions
    assert detector.compute().firing


def test_asr_refuses_invalid_constants():
    with pytest.raises(ValueError, match="asr trigger needs num_classes >= 2, 0 <= m0 <= 1 and a0 > 0"):
        ASRTrigger(10, m0=1.5)
    with pytest.raises(ValueError, match="a0=0"):
        ASRTrigger(10, a0=0)


# ---- the sequential risk test --------------------------------------------------------------------
def rows(flag_rate: float, steps: int, rng, batch: int = 64, start: int = 0):
    for k in range(steps):
        yield {"step": start + k + 1, "proxy_flagged": int(rng.binomial(batch, flag_rate)), "proxy_seen": batch}


def test_the_risk_test_fires_when_the_flag_rate_is_certified_above_the_clean_error_plus_the_tolerance():
    rng = np.random.default_rng(0)
    test = SequentialRiskTest.for_model(SETUP)  # clean error 20% of 2,000: upper bound about 21.9%
    assert test.source_upper == pytest.approx(0.2190, abs=2e-3)
    with pytest.raises(NotComputableError, match="no served image yet"):
        test.compute()
    for row in rows(0.2, 300, rng):  # as healthy as on the clean images: no alarm
        test.update_step(row)
        assert not test.compute().firing
    fired_at = None
    for row in rows(0.7, 200, rng, start=300):  # a collapse after 19,200 healthy images
        test.update_step(row)
        if test.compute().firing:
            fired_at = row["step"]
            break
    assert fired_at is not None and fired_at - 300 <= 20  # within 1,280 images, despite the long history
    verdict = test.compute()
    assert verdict.evidence.startswith("flagged rate (no precision in the calibration) at least")
    assert "false-alarm budget delta 0.05" in verdict.evidence
    assert verdict.value > test.source_upper + test.tolerance
    assert verdict.bounds.upper == test.source_upper + test.tolerance and verdict.bounds.delta == 0.05
    assert verdict.bounds.precision is None and verdict.bounds.lower == verdict.value


#: the clean images' flags: 400 flagged, 300 of them wrong (precision 0.75)
PRECISE = DetectorSetup(10, EstimationContext(served=FeedStats(accuracy=80.0, atc_mc_threshold=0.5, images=2000,
                                                               flag_precision=(300, 400))))


def test_the_precision_correction_scales_the_flag_rates_bound_by_pi_l_and_splits_delta_in_three():
    """research/risk_monitoring.md 1.4: P(error) >= pi_L P(flag); pi_L is Clopper-Pearson's lower
    bound on 300 wrong of 400 flagged at delta/3, the source bound also at delta/3."""
    from scipy.stats import beta

    corrected, plain = SequentialRiskTest.for_model(PRECISE), SequentialRiskTest.for_model(SETUP)
    assert corrected.precision_lower == pytest.approx(beta.ppf(0.05 / 3, 300, 101), rel=1e-9)
    assert 0.70 < corrected.precision_lower < 0.75
    assert corrected.source_upper == pytest.approx(beta.ppf(1 - 0.05 / 3, 401, 1600), rel=1e-9)
    rng = np.random.default_rng(3)
    for row in rows(0.9, 100, rng):
        corrected.update_step(row)
        plain.update_step(row)
    bounds = corrected.compute().bounds
    assert bounds.precision == corrected.precision_lower
    assert bounds.lower == pytest.approx(corrected.precision_lower * corrected.sequences.lower)
    assert bounds.lower < plain.compute().bounds.lower  # the price of speaking of the error rate
    verdict = corrected.compute()
    assert verdict.firing and verdict.evidence.startswith("running error at least") and "precision >= 0.7" in verdict.evidence


def test_a_calibration_without_the_precision_gives_the_flag_rate_test_and_says_so(caplog):
    with caplog.at_level("WARNING", logger="stream_monitor.estimation.detectors"):
        test = SequentialRiskTest.for_model(SETUP)
    assert test.precision_lower is None and test.share == 0.025
    assert "records no precision of the error proxy" in caplog.text and "stream-monitor calibrate" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_monitor.estimation.detectors"):
        SequentialRiskTest.for_model(PRECISE)
    assert not caplog.text


def test_the_risk_test_needs_the_served_feeds_calibration_and_valid_settings():
    test = SequentialRiskTest.for_model(DetectorSetup(10))  # no calibration: no source bound
    test.update_step({"step": 1, "proxy_flagged": 3, "proxy_seen": 64})
    with pytest.raises(NotComputableError, match="needs the served feed's calibration"):
        test.compute()
    with pytest.raises(ValueError, match="needs 0 < delta < 1"):
        SequentialRiskTest(10, 100, delta=1.5)


@pytest.mark.slow
def test_the_risk_tests_false_alarm_rate_stays_under_delta_on_simulated_healthy_streams():
    """Streams whose flags are as frequent as the clean error (the null at its edge, tolerance 0):
    the share of runs with any alarm over 20,000 images is at most delta."""
    rng = np.random.default_rng(1)
    setup = DetectorSetup(10, SETUP.context, risk_delta=0.1, risk_tolerance=0.0)
    alarms = 0
    for _ in range(60):
        test = SequentialRiskTest.for_model(setup)
        for row in rows(0.2, 312, rng):
            test.update_step(row)
            if test.compute().firing:
                alarms += 1
                break
    assert alarms / 60 <= 0.1


def scored(flips: float, served: float, frozen: float) -> dict:
    """A step row of a batch the frozen model scored."""
    return {"frozen_flip_rate": flips, "top_class_share": served, "frozen_top_class_share": frozen}


def test_chance_agreement_fires_on_the_second_collapsed_looking_scored_batch_and_skips_the_others():
    detector = DETECTORS.get("chance-agreement").for_model(SETUP)
    with pytest.raises(NotComputableError, match="frozen_every"):
        detector.compute()
    detector.update_step(scored(0.85, 0.40, 0.25))  # agrees on 15% <= chance's 25%, piles onto one class
    assert not detector.compute().firing  # one batch of 64 can look so by chance
    detector.update_step({"top_class_share": 0.9, "frozen_flip_rate": None})  # not scored: no say
    detector.update_step(scored(0.80, 0.45, 0.20))
    verdict = detector.compute()
    assert verdict.firing and "agree with the frozen model's on 20%" in verdict.evidence
    assert verdict.value == pytest.approx(0.0)  # agreement - chance ceiling
    detector.update_step(scored(0.40, 0.20, 0.25))  # agrees on 60%: a model that reads the image
    assert detector.compute().firing
    detector.update_step(scored(0.45, 0.20, 0.25))
    assert not detector.compute().firing


def test_chance_agreement_stays_quiet_where_the_frozen_model_is_near_chance_and_on_a_model_that_does_not_adapt():
    detector = DETECTORS.get("chance-agreement").for_model(SETUP)
    # harsh noise: the frozen model calls 70% of the batch one class; a healthy adapter spreads its
    # predictions and agrees with that junk only by chance
    for _ in range(10):
        detector.update_step(scored(0.90, 0.15, 0.70))
    assert not detector.compute().firing
    for _ in range(10):
        detector.update_step(scored(0.0, 0.95, 0.95))  # the served model is the frozen model
    assert not detector.compute().firing


def test_chance_agreement_refuses_a_patience_under_one():
    with pytest.raises(ValueError, match="patience >= 1"):
        DETECTORS.get("chance-agreement")(patience=0)
