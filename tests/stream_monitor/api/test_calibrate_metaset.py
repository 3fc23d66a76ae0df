"""`calibrate_model` builds the full-range meta-set on the user's held-out images and learns the
headline rules, so a `Monitor` run on its file shows every headline with a 90% interval
(docs/headline-rule.md); its options are checked before anything runs or is written."""

import pytest
import torch
from torch import nn

from stream_monitor import Monitor, calibrate_model, read_table
from stream_monitor.calibration.format import Calibration
from stream_monitor.estimation.readings import Target

from .test_monitor import Glyphs, _batches, _tiny_model

SETTINGS = dict(mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=16, probe_every=2, probe_size=32, probe_cycle=8)
PROBE_DOMAINS = ("clean", "speckle_noise:3", "gaussian_blur:3")
#: five families x 4 windows: 20 windows, one more than a 90% conformal interval stands on (19)
METASET = dict(metaset_domains=("clean/whole", "heldout:gaussian_blur:3/whole", "invert:5/whole", "occlude:3/whole",
                                "affine:3/whole"), metaset_windows=4, metaset_window_images=32)


def _trained_model() -> nn.Module:
    """The tiny model, fitted for a few seconds on `Glyphs` (whose label is the image's brightness),
    so the meta-set's shifts move its accuracy between the source domain and chance."""
    model = _tiny_model()
    data = Glyphs(160)
    images = torch.stack([data[i][0] for i in range(len(data))]).float() / 255.0
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(80):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model((images - 0.5) / 0.25), labels).backward()
        optimiser.step()
    return model.eval()


def _calibrate(tmp_path, adapter="tent", model=None, heldout=None, **kwargs):
    return calibrate_model(model or _trained_model(), heldout or Glyphs(96), adapter,
                           output=tmp_path / "cal.json", domains=PROBE_DOMAINS,
                           **{"log": lambda m: None, **SETTINGS, **METASET, **kwargs})


class Resets:
    """An adapter object (the protocol, no base class) that serves the model's logits and counts resets."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.resets = model, 0

    def step(self, images):
        with torch.no_grad():
            return self.model(images)

    def snapshot(self):
        return {}

    def reset(self):
        self.resets += 1

    def state_dict(self):
        return {}


def _read_meta_set(tmp_path, adapter, name: str):
    """Two domains x 2 windows of the held-out glyphs, read as `calibrate_model` reads its meta-set."""
    from stream_monitor.api.calibration import heldout_readers, load_heldout
    from stream_monitor.estimation.window import fit_feed_stats
    from stream_monitor.metaset import MetaSetBuild, build
    from stream_monitor.runtime.components import CopiedModel

    model = _trained_model()
    monitor = Monitor(model, adapter if adapter != "object" else Resets(model), **SETTINGS)
    images, labels = load_heldout(Glyphs(64))
    _, bundle = monitor.prepare([(images[:1], labels[:1])])
    config = monitor.config(None, bundle.name)
    readers = heldout_readers(config, monitor.factory, CopiedModel(bundle)("cpu"), images, labels, None)
    frozen = fit_feed_stats(readers.model.probabilities(torch.from_numpy(images)), labels)
    spec = MetaSetBuild(("clean/whole", "invert:5/whole"), {config.adapter.name: None}, frozen, windows=2,
                        window_images=32, batch_size=16, data=readers.data)
    return build(spec, None, tmp_path / f"{name}.jsonl", lambda m: None, readers), monitor


def test_the_meta_set_shifts_the_held_out_images_for_the_users_model_and_adapter(tmp_path):
    windows, _ = _read_meta_set(tmp_path, "tent", "a")
    assert [(w["domain"], w["window"], w["images"]) for w in windows] == [
        ("clean/whole", 0, 32), ("clean/whole", 1, 32), ("invert:5/whole", 0, 32), ("invert:5/whole", 1, 32)]
    by = {(w["domain"], w["window"]): w for w in windows}
    assert by["clean/whole", 0]["true_source_acc"] > 80 > by["invert:5/whole", 0]["true_source_acc"] + 30
    assert {"sentinel", "nuclear-norm", "average-confidence"} <= set(by["clean/whole", 0]["frozen"])
    assert set(by["clean/whole", 0]["served"]["tent"]["readings"]) >= {"sentinel", "average-confidence"}
    again, _ = _read_meta_set(tmp_path, "tent", "b")
    assert again == windows  # a pure function of the images, the domain and the position


def test_an_adapter_object_starts_each_meta_set_domain_at_the_source_model(tmp_path):
    windows, monitor = _read_meta_set(tmp_path, "object", "c")
    assert set(windows[0]["served"]) == {"Resets"} and monitor.adapter.resets == 2  # once per domain
    served = [w["served"]["Resets"]["true_online_acc"] for w in windows]
    assert served == [w["true_source_acc"] for w in windows]  # it serves the model's own predictions


@pytest.mark.slow
def test_the_file_holds_the_rules_and_a_monitor_shows_intervals(tmp_path):
    path = _calibrate(tmp_path)
    cal = Calibration.load(path)
    assert set(cal.rules) == {"source", "online"} and len(cal.meta_windows) == 20
    assert {w["family"] for w in cal.meta_windows} == {"clean", "heldout", "invert", "occlude", "affine"}
    assert all(set(w["served"]) == {"tent"} for w in cal.meta_windows)
    by = {w["domain"]: w["true_source_acc"] for w in cal.meta_windows}
    assert by["clean/whole"] > 80 and by["invert:5/whole"] < by["clean/whole"] - 30  # the held-out images, shifted
    assert cal.frozen_stats["anchor_fit"] is not None
    rules = cal.headline_rules()
    assert set(rules) == {Target.SOURCE, Target.ONLINE}
    assert all(rule.inside or rule.outside for rule in rules.values())  # 20 windows: estimators ranked

    # the frozen model scores every batch, so a probe window of 32 images has the Sentinel's features
    # that place it against the support (the default scores every 8th)
    monitor = Monitor(_trained_model(), "tent", calibration=path, out=tmp_path / "runs",
                      settings=["evaluator.frozen_every=1"], **SETTINGS)
    result = monitor.run(_batches(8))
    assert result.status == "finished" and result.probes
    probes = read_table(result.run_dir, "probes").to_pylist()
    for target in ("source", "online"):
        ranked = {c.estimator for c in (*rules[Target(target)].inside, *rules[Target(target)].outside)}
        assert all(p[f"est_{target}_out_of_support"] is not None for p in probes)
        assert all(p[f"est_{target}_method"] in ranked for p in probes)  # the rule headlines, not the fixed order
        assert all(p[f"est_{target}_lo"] <= p[f"est_{target}_acc"] <= p[f"est_{target}_hi"] for p in probes)


def test_without_the_meta_set_the_file_has_no_rules(tmp_path):
    cal = Calibration.load(_calibrate(tmp_path, metaset=False))
    assert cal.rules == {} and cal.meta_windows == [] and cal.points


@pytest.mark.slow
def test_the_source_adapter_makes_the_frozen_models_file(tmp_path):
    cal = Calibration.load(_calibrate(tmp_path, "source"))
    assert cal.adapter == "source" and "source" in cal.rules
    assert all(w["served"] == {} for w in cal.meta_windows)  # the served feeds were norm's and tent's


@pytest.mark.parametrize("kwargs, message", [
    (dict(metaset_domains=("clean/whole", "blur:3")),
     "metaset_domains: Unknown meta-set domain 'blur:3': the family must be one of clean, heldout"),
    (dict(metaset_windows=0), "metaset_windows must be 1 or more, got 0"),
    (dict(metaset_window_images=8), "metaset_window_images must be at least 32 .* 512 is the default"),
    (dict(metaset_window_images=128), "The held-out data has 96 images .* give at least 128 held-out images, or "
                                      "lower metaset_window_images to 96 or fewer"),
])
def test_bad_meta_set_options_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _calibrate(tmp_path, model=_tiny_model(), work_dir=tmp_path / "work", **kwargs)
    assert not (tmp_path / "cal.json").exists() and not (tmp_path / "work").exists()


def test_the_source_adapter_on_a_model_without_batchnorm_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(ValueError, match="makes the frozen model's file.* has none. Pass metaset=False"):
        _calibrate(tmp_path, "source", model=model)
    assert not (tmp_path / "cal.json").exists()


def test_an_adapter_object_starts_each_probe_run_and_the_clean_statistics_at_the_source_model(tmp_path):
    model = _trained_model()
    adapter = Resets(model)
    calibrate_model(model, Glyphs(96), adapter, output=tmp_path / "cal.json", domains=PROBE_DOMAINS[:2],
                    metaset=False, log=lambda m: None, **SETTINGS)
    # the description, each domain's probe run and the clean statistics: it served the stream of
    # the run before (adapted by it) before this reset existed
    assert adapter.resets == 1 + 2 + 1
