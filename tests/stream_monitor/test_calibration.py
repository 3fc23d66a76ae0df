"""Calibration: the fit, the file and its provenance, and a run that uses (or refuses) it."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

from stream_monitor.calibrate import calibrate
from stream_monitor.calibration import SHIPPED, Calibration, CalibrationMismatch, Provenance, fit_flips, resolve_context
from stream_monitor.config import load_config
from stream_monitor.estimation.sentinel import ALL_FEATURES
from stream_monitor.metrics.sink import read_table
from stream_monitor.rundir import RunDirectory
from stream_monitor.runtime.runner import run
from stream_monitor.runtime.workers import AdapterWorker

TINY = ["runtime.threads=1", "probe.cycle=12", "probe.every=4", "probe.size=64", "source.batch_size=32",
        "runtime.checkpoint_every=100"]


def points(f, wfs, step=990):
    return [{"cycle_step": step, "weighted_flips": wf, "true_source_acc": f(wf)} for wf in wfs]


def test_fit_recovers_a_known_quadratic_per_step():
    f = np.poly1d([3.5e-4, -0.32, 75.66])
    fits = fit_flips(points(f, [5, 40, 80, 150, 220, 260]) + points(lambda wf: 90 - wf, [1, 2, 3, 4, 5], step=100))
    assert np.allclose(fits[990]["coefficients"], f.coeffs, rtol=1e-6) and fits[990]["range"] == [5.0, 260.0]
    assert fits[990]["rmse"] < 1e-6
    assert np.allclose(fits[100]["coefficients"], [0, -1, 90], atol=1e-9)  # 5 domains: a line, no curvature


def test_fit_skips_steps_with_too_few_domains():
    assert fit_flips(points(lambda wf: 50.0, [1, 2, 3])) == {}


def calibration(**changes):
    base = dict(model="embedded_resnet20", model_sha256="ab" * 32, adapter="rdumb",
                hyperparameters={"lr": 0.00025, "reset_every": 1000}, probe_size=1000, probe_every=100, cycle=1000,
                domains=["clean"], fits={990: {"coefficients": [0.0, -0.5, 80.0], "range": [0.0, 100.0],
                                               "rmse": 1.0, "domains": 13}})
    base.update(changes)
    return Calibration(**base)


def test_file_round_trip_and_provenance(tmp_path):
    cal = calibration()
    loaded = Calibration.load(cal.save(tmp_path / "c.json"))
    assert loaded == cal
    f = loaded.flips_calibrations()[990]
    assert f(40, 1000) == (60.0, False) and f(6, 100)[0] == pytest.approx(80 - 0.5 * 60)  # 100 images: WF x10
    assert f(400, 1000) == (0.0, True)  # clipped, and outside the fitted range
    provenance = Provenance(**{k: getattr(cal, k) for k in ("model", "model_sha256", "adapter", "hyperparameters",
                                                             "probe_size", "cycle")})
    loaded.check(provenance)
    with pytest.raises(CalibrationMismatch, match=r"adapter: calibration has 'rdumb', the run has 'tent'"):
        loaded.check(replace(provenance, adapter="tent"))
    with pytest.raises(CalibrationMismatch, match="hyperparameters"):
        loaded.check(replace(provenance, hyperparameters={"lr": 0.001, "reset_every": 1000}))
    # a null provenance field matches any run (the paper's f holds for any ResNet-50 weights file)
    calibration(model_sha256=None, hyperparameters=None).check(replace(provenance, model_sha256="cd" * 32))


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="stream-monitor calibrate --out"):
        Calibration.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"format": 1}')
    with pytest.raises(ValueError, match=r"has format 1 \(it lacks .*\); this version reads format 3. Make it again"):
        Calibration.load(tmp_path / "old.json")
    (tmp_path / "v2.json").write_text('{"format": 2}')
    with pytest.raises(ValueError, match="has format 2 .*learned headline rules.*refit_calibration.py"):
        Calibration.load(tmp_path / "v2.json")
    data = json.loads(calibration().save(tmp_path / "extra.json").read_text())
    (tmp_path / "extra.json").write_text(json.dumps({**data, "colour": "blue"}))
    with pytest.raises(ValueError, match="unknown fields colour"):
        Calibration.load(tmp_path / "extra.json")


@pytest.fixture(scope="module")
def tiny_calibration(tmp_path_factory):
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01"])
    cal = calibrate(cfg, ("clean", "speckle_noise:2", "speckle_noise:4", "gaussian_blur:3", "saturate:5"),
                    log=lambda m: None)
    return cal, cal.save(tmp_path_factory.mktemp("cal") / "tiny.json")


@pytest.mark.slow
def test_calibrate_runs_the_probe_protocol_on_every_domain(tiny_calibration):
    cal, _ = tiny_calibration
    assert {p["domain"] for p in cal.points} == {"clean", "speckle_noise:2", "speckle_noise:4", "gaussian_blur:3",
                                                 "saturate:5"}
    assert set(cal.fits) == {4, 8}  # the snapshots of a 12-step cycle, probe every 4
    clean = [p for p in cal.points if p["domain"] == "clean"]
    noisy = [p for p in cal.points if p["domain"] == "speckle_noise:4"]
    assert clean[-1]["true_source_acc"] > noisy[-1]["true_source_acc"]  # labels scored the meta-set
    assert cal.adapter == "tent" and cal.hyperparameters["lr"] == 0.01 and cal.cycle == 12


@pytest.mark.slow
def test_a_run_uses_a_matching_calibration_and_refuses_another(tiny_calibration, tmp_path):
    _, path = tiny_calibration
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01", f"estimation.calibration={path}",
                             "runtime.use_ray=false", "runtime.max_images=640", "probe.flips_every=4"])
    assert run(cfg, tmp_path / "ok").status == "finished"
    probes = read_table(tmp_path / "ok", "probes").to_pylist()
    assert any(p["est_source_method"] == "spread-flips" and p["est_source_acc"] is not None for p in probes)
    estimates = read_table(tmp_path / "ok", "estimates").to_pylist()
    assert {"spread-flips", "weighted-flips"} <= {e["estimator"] for e in estimates if e["value"] is not None}
    other = load_config(None, [*TINY, "adapter.name=eta", f"estimation.calibration={path}", "runtime.use_ray=false",
                               "runtime.max_images=640"])
    with pytest.raises(CalibrationMismatch, match="adapter: calibration has 'tent', the run has 'eta'"):
        run(other, tmp_path / "refused")


def context_of(*overrides: str):
    config = load_config(None, ["runtime.threads=1", *overrides])
    worker = AdapterWorker(config)
    description = worker.describe()
    provenance = Provenance(description.model_name, description.model_sha256, config.adapter.name,
                            description.hyperparameters, config.probe.size, 1000)
    return resolve_context(config, provenance)


def test_the_shipped_embedded_calibration_matches_the_default_run():
    context = context_of()
    assert context.origins["served"].startswith("shipped embedded_resnet20_rdumb")
    assert 990 in context.flips and context.served.atc_mc_threshold is not None and context.adapter_calibrated
    assert context.flips[990](0.0, 1000)[0] > context.flips[990](100.0, 1000)[0]  # more flips, lower accuracy
    # the frozen model's feed: the shipped held-out-stream calibration of the model, Sentinel forest included
    assert context.origins["frozen"].startswith("shipped frozen/embedded_resnet20_frozen")
    assert context.frozen.sentinel is not None
    # an adapter without a shipped file gets no f, and the same frozen feed: that feed never sees the adapter
    eta = context_of("adapter.name=eta")
    assert not eta.flips and eta.served.nuclear_fit == eta.frozen.nuclear_fit and not eta.adapter_calibrated
    assert eta.frozen == context.frozen and "served" not in eta.origins
    # ... and the frozen file's online rule for adapters without their own: the anchored estimate,
    # placed by the frozen feed's features, with the line fitted on the meta-set's adapters
    assert eta.rules["online"].feed == "frozen" and eta.rules["online"].inside[0].estimator == "anchored-nuclear-norm"
    assert "online rule" in eta.origins and eta.frozen.anchor_fit is not None and not eta.served_is_frozen
    # the source adapter serves the frozen model itself
    assert context_of("adapter.name=source").served_is_frozen and not context.served_is_frozen
    # tent ships its own (the full-range meta-set's rule included)
    tent = context_of("adapter.name=tent")
    assert tent.origins["served"].startswith("shipped embedded_resnet20_tent") and tent.adapter_calibrated
    assert tent.frozen == context.frozen and set(tent.rules) == {"source", "online"}


def test_a_configured_calibration_serves_the_frozen_feed_too():
    shipped = next(SHIPPED.glob("embedded_resnet20_rdumb*.json"))
    context = context_of(f"estimation.calibration={shipped}")
    assert context.origins["frozen"] == context.origins["served"] == str(shipped)
    assert context.frozen == Calibration.load(shipped).window_stats(frozen=True)


def test_the_papers_resnet50_f_ships_as_a_calibration_file():
    paper = Calibration.load(SHIPPED / "resnet50_rdumb_entropy_enigma_paper.json")
    provenance = Provenance("resnet50", "ef" * 32, "rdumb", {"lr": 0.00025, "reset_every": 1000}, 100, 1000)
    paper.check(provenance)  # any weights file, hyperparameters and probe size of that model and cadence
    with pytest.raises(CalibrationMismatch, match="cycle"):
        paper.check(replace(provenance, cycle=500))
    f = paper.flips_calibrations()[990]
    expected = 75.6618580 - 0.321445023 * 13 + 3.55553868e-4 * 169
    assert f.probe_size == 1000 and f(13.0, 1000) == (pytest.approx(expected), False)
    assert f(5.0, 100)[0] == pytest.approx(f(50.0, 1000)[0])  # 100 probe images: WF x10 (the paper's setting)


@pytest.fixture(scope="module")
def stream_calibration():
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01"])
    return calibrate(cfg, streams=("baseline_40_transition+speed_1000_seed_3",
                                   "baseline_0_transition+speed_1000_seed_4"), cycles=2, log=lambda m: None)


@pytest.mark.slow
def test_calibrate_on_held_out_streams_fits_every_cycle_window(stream_calibration):
    cal = stream_calibration
    labels = {p["domain"] for p in cal.points}
    assert labels == {f"heldout-ccc/baseline_{b}_transition+speed_1000_seed_{s}#cycle{c}"
                      for b, s in ((40, 3), (0, 4)) for c in (0, 1)}
    assert set(cal.fits) == {4, 8} and all(f["domains"] == 4 for f in cal.fits.values())
    assert set(cal.spread_fits) == {4, 8}  # the spread reference set has its own f
    assert all(p["spread_size"] if "spread_size" in p else p["spread_weighted_flips"] is not None for p in cal.points)
    assert all(p["true_source_acc"] is not None and p["frozen_nuclear_score"] is not None for p in cal.points)
    for stats in (cal.served_stats, cal.frozen_stats):  # both feeds' labelled statistics
        assert stats["atc_mc_threshold"] is not None and 0 < stats["accuracy"] <= 100
    assert cal.frozen_stats["nuclear_fit"] is not None  # frozen score against source accuracy, over 8 windows
    for stats in (cal.served_stats, cal.frozen_stats):  # a Sentinel training set per feed, CV over the 2 streams
        assert len(stats["sentinel"]["features"]) == 8 and len(stats["sentinel"]["features"][0]) == 20
        assert stats["sentinel"]["names"] == list(ALL_FEATURES[:20]) and stats["sentinel"]["sidekick"] is None
        assert set(stats["sentinel"]["groups"]) == {"heldout-ccc/baseline_40_transition+speed_1000_seed_3",
                                                    "heldout-ccc/baseline_0_transition+speed_1000_seed_4"}


@pytest.mark.slow
def test_eval_reestimates_flips_with_a_later_calibration(stream_calibration, tmp_path):
    from stream_monitor.evaluation import score_estimators

    cal = stream_calibration
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01", "runtime.use_ray=false",
                             "runtime.max_images=640", "probe.flips_every=4"])
    assert run(cfg, tmp_path / "run").status == "finished"  # no calibration: no flips estimate
    assert not [s for s in score_estimators(tmp_path / "run") if s.estimator == "weighted-flips"]
    scores = {(s.estimator, s.target): s for s in score_estimators(tmp_path / "run", cal)}
    probes = [p for p in read_table(tmp_path / "run", "probes").to_pylist() if p["true_source_acc"] is not None]
    f = cal.flips_calibrations()
    errors = [abs(f[p["cycle_step"]](p["weighted_flips"], p["probe_size"])[0] - p["true_source_acc"]) for p in probes]
    assert scores["weighted-flips", "source"].mae == pytest.approx(np.mean(errors))
    # the Sentinel of each feed is redone from the window features the run recorded
    from stream_monitor.estimation.sentinel import SentinelRegressor

    recorded = [e for e in read_table(tmp_path / "run", "estimates").to_pylist() if e["estimator"] == "sentinel"]
    # no calibration for tent: no served-feed forest; the frozen feed's from the shipped file
    assert all(e["value"] is None for e in recorded if e["feed"] == "served")
    assert any(e["value"] is not None for e in recorded if e["feed"] == "frozen")
    recorded = [e for e in recorded if e["features"] is not None]  # windows of 32 images or more
    assert recorded and all(len(e["features"]) == 20 for e in recorded)  # no sidekick: no agreement column
    forest = SentinelRegressor(cal.frozen_stats["sentinel"])
    truth = {p["step"]: p["true_source_acc"] for p in probes}
    errors = [abs(forest(e["features"]) - truth[e["step"]]) for e in recorded
              if e["feed"] == "frozen" and e["step"] in truth]
    assert errors and scores["sentinel", "source"].mae == pytest.approx(np.mean(errors), rel=1e-5)
    assert scores["sentinel", "online"].windows > 0
    assert RunDirectory(tmp_path / "run").provenance().model_sha256 == cal.model_sha256[:12]
    eta = load_config(None, [*TINY, "adapter.name=eta", "runtime.use_ray=false", "runtime.max_images=320"])
    assert run(eta, tmp_path / "eta").status == "finished"
    with pytest.raises(CalibrationMismatch, match="adapter: calibration has 'tent', the run has 'eta'"):
        score_estimators(tmp_path / "eta", cal)
    # the frozen feed's estimators depend on the model only: tent's file serves the eta run there
    frozen = {(s.estimator, s.target): s for s in score_estimators(tmp_path / "eta", frozen_calibration=cal)}
    assert frozen["sentinel", "source"].windows > 0 and ("sentinel", "online") not in frozen
    other_model = Calibration(**{**asdict(cal), "model_sha256": "0" * 64})
    with pytest.raises(CalibrationMismatch, match="model_sha256"):
        score_estimators(tmp_path / "eta", frozen_calibration=other_model)
    # and live: a run's frozen feed takes its statistics and forest from estimation.frozen_calibration
    path = cal.save(tmp_path / "tent.json")
    live = load_config(None, [*TINY, "adapter.name=eta", "runtime.use_ray=false", "runtime.max_images=320",
                              f"estimation.frozen_calibration={path}"])
    assert run(live, tmp_path / "live").status == "finished"
    sentinel = [e for e in read_table(tmp_path / "live", "estimates").to_pylist()
                if e["estimator"] == "sentinel" and e["features"] is not None]
    assert sentinel and all((e["value"] is None) == (e["feed"] == "served") for e in sentinel)
    other_model.save(tmp_path / "other.json")
    refused = load_config(None, [*TINY, "adapter.name=eta", "runtime.use_ray=false", "runtime.max_images=320",
                                 f"estimation.frozen_calibration={tmp_path / 'other.json'}"])
    with pytest.raises(CalibrationMismatch, match="model_sha256"):
        run(refused, tmp_path / "refused")


def test_statistics_only_calibration_takes_no_meta_set(tmp_path):
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01"])
    cal = calibrate(cfg, cycles=0, log=lambda m: None)
    assert cal.points == [] and cal.fits == {} and cal.spread_fits == {}
    assert cal.served_stats["atc_mc_threshold"] is not None and cal.frozen_stats["atc_ne_threshold"] is not None
    again = Calibration.load(cal.save(tmp_path / "stats.json"))
    assert again.frozen_stats == cal.frozen_stats and again.flips_calibrations() == {}


def test_an_adapter_with_a_fisher_penalty_is_calibrated_with_the_clean_domains_images():
    from stream_monitor.fisher import clean_fisher_images

    cfg = load_config(None, [*TINY, "adapter.name=eata"])
    fisher = clean_fisher_images(cfg)
    assert fisher is not None and fisher.dtype == np.uint8 and len(fisher) == 2000  # EATA's 2,000 images
    assert clean_fisher_images(load_config(None, [*TINY, "adapter.name=tent"])) is None
    cal = calibrate(cfg, cycles=0, log=lambda m: None)  # failed: "pass first_images"
    assert cal.adapter == "eata" and cal.served_stats["atc_mc_threshold"] is not None


@pytest.mark.slow
def test_calibrate_on_an_image_folder_fits_its_fixed_domains(tmp_path):
    from tests.conftest import write_glyph_folder

    root = write_glyph_folder(tmp_path / "val", images=48)
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01", f"source.data={root}"])
    domains = ("clean", "speckle_noise:5", "gaussian_blur:5", "saturate:3")
    cal = calibrate(cfg, domains, log=lambda m: None)
    assert [d for d in cal.domains] == list(domains) and {p["domain"] for p in cal.points} == set(domains)
    assert set(cal.fits) == {4, 8} and all(f["domains"] == 4 for f in cal.fits.values())
    by = {p["domain"]: p["true_source_acc"] for p in cal.points if p["cycle_step"] == 8}
    assert by["clean"] > 80 and by["speckle_noise:5"] < by["clean"] - 30  # the folder's images, corrupted
    assert cal.frozen_stats["accuracy"] > 80  # the clean statistics come from the folder too
    with pytest.raises(ValueError, match="fixed domains"):
        calibrate(cfg, streams=("baseline_40_transition+speed_1000_seed_3",), log=lambda m: None)


def test_an_image_folder_of_other_classes_is_refused(tmp_path):
    import shutil

    from tests.conftest import write_glyph_folder

    root = write_glyph_folder(tmp_path / "val", images=12)
    for extra in ("x", "y"):  # 12 class folders for a 10-class model
        shutil.copytree(root / "0", root / extra)
    cfg = load_config(None, [*TINY, "adapter.name=tent", f"source.data={root}"])
    with pytest.raises(ValueError, match="12 class folders and the model embedded predicts 10 classes"):
        calibrate(cfg, ("clean",), log=lambda m: None)


def test_the_shipped_rules_read_the_models_own_clean_glyphs_as_accurate():
    """Issue 25's no-shift stream: the frozen model is 98% right on its own clean glyphs, and the
    headlines read it as 10% before the full-range meta-set. A window of them now reads within
    a few points, with an interval around the truth, from the shipped files of a default run."""
    import torch

    from stream_monitor.sources.shifts import ShiftedGlyphSource
    from stream_monitor.config import load_config
    from stream_monitor.estimation.pipeline import EstimationPipeline, derive
    from stream_monitor.estimation.readings import Feed, Target
    from stream_monitor.models import load_model

    context = context_of()
    assert set(context.rules) == {Target.SOURCE, Target.ONLINE}
    config = load_config(None, [])
    model = load_model(config.model.name, config.model.weights, "cpu")
    batch = ShiftedGlyphSource("clean/whole", 8448).render(8192, 8448)  # images the meta-set never read
    probs = model.probabilities(torch.from_numpy(batch.images))
    truth = 100.0 * (probs.argmax(1) == batch.labels).mean()
    pipeline = EstimationPipeline(context, model.num_classes)
    pipeline.observe(Feed.FROZEN, probs)
    pipeline.observe(Feed.SERVED, probs)  # an adapter's first window serves what the model does
    estimate = derive(pipeline.readings(), context)
    assert truth > 90.0
    assert abs(estimate.source.value - truth) < 8.0
    low, high = estimate.source.interval
    assert low <= truth <= high
    assert abs(estimate.online.value - truth) < 8.0


@pytest.mark.slow
def test_calibrate_on_an_image_folder_learns_the_headline_rules_on_its_full_range_meta_set(tmp_path):
    from stream_monitor.calibrate_metaset import MetaSetOptions
    from stream_monitor.estimation.readings import Feed, Target
    from tests.conftest import write_glyph_folder

    root = write_glyph_folder(tmp_path / "val", images=48)
    cfg = load_config(None, [*TINY, "adapter.name=tent", "adapter.lr=0.01", f"source.data={root}"])
    metaset = MetaSetOptions(("clean/whole", "heldout:speckle_noise:5/whole", "occlude:4/whole"), windows=7,
                             window_images=32)
    cal = calibrate(cfg, ("clean", "speckle_noise:5", "gaussian_blur:5", "saturate:3"), tmp_path / "work",
                    log=lambda m: None, metaset=metaset)
    assert set(cal.rules) == {"source", "online"} and len(cal.meta_windows) == 21
    assert {w["family"] for w in cal.meta_windows} == {"clean", "heldout", "occlude"}
    assert all(set(w["served"]) == {"tent"} for w in cal.meta_windows)
    by = {w["domain"]: w["true_source_acc"] for w in cal.meta_windows}
    assert by["clean/whole"] > 80 and by["heldout:speckle_noise:5/whole"] < by["clean/whole"] - 30
    source = cal.headline_rules()[Target.SOURCE]
    assert cal.frozen_stats["anchor_fit"] is not None and (source.inside or source.outside)  # 21 windows: ranked
    assert len((tmp_path / "work" / "metaset.jsonl").read_text().splitlines()) == 21  # what a rerun resumes from
    path = cal.save(tmp_path / "cal.json")
    provenance = Provenance(**{k: getattr(cal, k) for k in ("model", "model_sha256", "adapter", "hyperparameters",
                                                             "probe_size", "cycle")})
    context = resolve_context(load_config(None, [*TINY, "adapter.name=tent", f"estimation.calibration={path}"]),
                              provenance)
    assert context.rules == Calibration.load(path).headline_rules()
    assert context.rules[Target.ONLINE].feed != Feed.FROZEN  # tent's own rule, not the frozen file's


def test_calibrate_refuses_a_bad_meta_set_domain_before_it_writes_anything(tmp_path):
    from typer.testing import CliRunner

    from stream_monitor.cli import app

    out = tmp_path / "cal.json"
    result = CliRunner().invoke(app, ["calibrate", "--metaset-domains", "clean,blur:3", "--out", str(out),
                                      "--domains", "clean"])
    assert result.exit_code == 2 and not out.exists()
    assert "family must be one of clean, heldout, compose, mix, affine, invert, occlude" in result.output
    assert "heldout:speckle_noise:3" in result.output  # an example of the valid forms
    result = CliRunner().invoke(app, ["calibrate", "--metaset-window-images", "8", "--out", str(out)])
    assert result.exit_code == 2 and "at least 32" in result.output and not out.exists()
