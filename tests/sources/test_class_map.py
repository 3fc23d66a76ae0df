"""An image folder's classes against the model's: accepted, mapped, or a clear error."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from stream_monitor.sources.class_map import ClassMapError, folder_labels, load_class_map
from stream_monitor.sources.factory import check_folder_classes, open_source, stream_label
from stream_monitor.models import WeightsError, load_model, model_classes
from tests.conftest import write_glyph_folder

DIGITS = tuple(str(d) for d in range(10))


def test_the_models_own_names_map_to_their_indices():
    assert folder_labels(list(DIGITS), 10, DIGITS) == list(range(10))
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert folder_labels(wnids, 1000, tuple(f"c{i}" for i in range(1000))) == list(range(1000))
    names = ("cat", "dog", "eel")
    assert folder_labels(["dog", "eel", "cat"], 3, names) == [1, 2, 0]
    assert folder_labels(["a", "b"], 2, None) == [0, 1]  # unknown names: sorted folders, counts agree


def test_a_folder_of_other_size_or_names_is_an_error_naming_the_way_out():
    with pytest.raises(ClassMapError, match=r"has 2 class folders \(a, b\) and embedded predicts 10 classes.*"
                                            r"--class-map FILE"):
        folder_labels(["a", "b"], 10, DIGITS, model="embedded")
    with pytest.raises(ClassMapError, match=r"class folders \(x\) are not embedded's class names \(0, 1, 2"):
        folder_labels([*DIGITS[:9], "x"], 10, DIGITS, model="embedded")
    with pytest.raises(ClassMapError, match="ImageNet WordNet ids"):
        folder_labels([f"k{i}" for i in range(1000)], 1000, tuple(f"c{i}" for i in range(1000)))


def test_an_explicit_map_covers_every_folder_within_the_head(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"cats": 3, "dogs": 5}))
    mapping = load_class_map(path)
    assert folder_labels(["cats", "dogs"], 10, DIGITS, mapping) == [3, 5]
    with pytest.raises(ClassMapError, match=r"names no model class for 1 of the folder's 3 class folders \(eels\)"):
        folder_labels(["cats", "dogs", "eels"], 10, DIGITS, mapping)
    with pytest.raises(ClassMapError, match=r"indices beyond m's 4 classes \(dogs -> 5\); valid indices are 0-3"):
        folder_labels(["cats", "dogs"], 4, None, mapping, model="m")
    (tmp_path / "bad.yaml").write_text("cats: three\n")
    with pytest.raises(ClassMapError, match="must be a model class index"):
        load_class_map(tmp_path / "bad.yaml")
    with pytest.raises(ClassMapError, match="no such file"):
        load_class_map(tmp_path / "none.json")


def test_a_mapped_folder_streams_the_models_labels(tmp_path):
    root = tmp_path / "two"
    write_glyph_folder(tmp_path / "glyphs", images=20)
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    for i, png in enumerate(sorted((tmp_path / "glyphs").rglob("*.png"))[:8]):
        png.rename(root / ("cats" if i % 2 else "dogs") / f"{i}.png")
    model = load_model("embedded")
    with pytest.raises(ClassMapError, match="has 2 class folders"):
        open_source("imagefolder", data=root, model=model)
    with pytest.raises(ClassMapError, match="has 2 class folders"):
        check_folder_classes(root, "embedded", None, None)
    (tmp_path / "map.yaml").write_text("cats: 7\ndogs: 2\n")
    source = open_source("imagefolder", data=root, model=model, class_map=tmp_path / "map.yaml")
    labels = {int(x) for b in source.read(0, source.length) for x in b.labels}
    assert labels == {2, 7} and source.num_classes == 10


def test_a_torchvision_architecture_with_its_own_head(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "rn18_10.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    assert model_classes("resnet18", path).num_classes == 10 and model_classes("resnet18", path).names is None
    assert model_classes("resnet18").num_classes == 1000
    bundle = load_model("resnet18", path)
    assert bundle.num_classes == 10 and bundle.module.fc.out_features == 10
    wrong = tmp_path / "rn34.pt"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"is not a state dict of torchvision's resnet18 \(unexpected layer1\.2"):
        load_model("resnet18", wrong)


def test_run_directories_are_named_after_the_stream_run():
    assert stream_label("imagefolder", None, "/data/my_val/") == "imagefolder-my_val"
    assert stream_label("ccc", None, None) == "baseline_20_s1000_seed_43"
    assert stream_label("heldout", "pixelate:3", None) == "heldout-pixelate-3"
