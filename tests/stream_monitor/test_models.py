import json
import shutil

import pytest
import torch
import torchvision

import stream_monitor.models as models
from stream_monitor.models import WeightsError, load_model, sha256_file


def test_embedded_model_loads_with_its_checksum():
    model = load_model("embedded")
    card = json.loads(models.EMBEDDED_CARD.read_text())
    assert model.sha256 == card["sha256"] and model.num_classes == 10 and model.image_size == 32
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert model.predict(x).shape == (4, 10)


def test_a_tampered_embedded_file_is_refused(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    shutil.copytree(models.ASSETS, assets)
    weights = assets / "embedded_resnet20.pt"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(models, "ASSETS", assets)
    monkeypatch.setattr(models, "EMBEDDED_CARD", assets / "embedded_resnet20.json")
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        load_model("embedded")


def test_missing_embedded_weights_say_what_to_do(tmp_path):
    with pytest.raises(WeightsError, match="train_embedded"):
        load_model("embedded", weights=tmp_path / "nope.pt")


def test_torchvision_model_from_a_weights_file(tmp_path):
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "rn18.pth"
    torch.save(state, path)
    model = load_model("resnet18", weights=path)
    assert model.num_classes == 1000 and model.image_size == 224 and model.resize_size == 256
    assert model.mean == pytest.approx((0.485, 0.456, 0.406)) and model.sha256 == sha256_file(path)
    assert model.predict(torch.zeros(1, 3, 224, 224, dtype=torch.uint8)).shape == (1, 1000)


def test_resnet50_without_weights_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match=r"resnet50-0676ba61\.pth.*--weights PATH"):
        load_model("resnet50")


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match="Did you mean 'resnet50'"):
        load_model("resnet5O")


def test_weights_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="Cannot read weights"):
        load_model("resnet18", weights=path)


def test_top_level_packages_resolve_to_this_repository():
    from stream_monitor import adapters
    from stream_monitor import sources

    root = models.ASSETS.parent.parent
    for package in (adapters, sources):
        assert root in __import__("pathlib").Path(package.__file__).resolve().parents
