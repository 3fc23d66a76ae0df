"""benchmarks/estimate_suite.py and suite_streams.py: the cases, the stream plans, the user errors."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_monitor.sources.corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


suite = load("estimate_suite")
streams = load("suite_streams")


def test_the_suite_has_the_issues_cases():
    names = [c.name for c in suite.CASES]
    assert len(names) >= 12 and len(set(names)) == len(names)
    ccc = [c.ccc for c in suite.CASES if c.ccc]
    assert all("seed_43" not in s and "speed_1000" not in s for s in ccc)  # never a stream used while developing
    assert {s.split("_")[1] for s in ccc} == {"40", "20", "0"}
    assert {c.kind for c in suite.CASES if c.kind} == set(streams.KINDS)


def test_novel_families_are_used_by_neither_ccc_nor_the_calibration():
    for family in streams.NOVEL_FAMILIES:
        assert family not in STREAM_CORRUPTIONS and family not in HELD_OUT_CORRUPTIONS and family not in CORRUPTIONS


def test_stream_plans():
    family, severity = streams.plan("drift", 1000)
    assert (severity[:300] == 0).all() and (family[:300] == "").all()
    assert np.all(np.diff(severity[300:]) >= 0) and severity[-1] == pytest.approx(5.0)
    family, severity = streams.plan("mixed", 10_000)
    assert (family[:2500] == "").all() and set(family[2500:5000]) <= set(STREAM_CORRUPTIONS) - {""}
    assert 3.0 <= severity[2500] <= 5.0 and (severity[5000:7500] == 0).all()
    family, severity = streams.plan("posterize", 12_500)
    assert set(family) == {"posterize"} and sorted(set(severity[::2500])) == [1, 2, 3, 4, 5]
    assert (streams.plan("clean", 100)[1] == 0).all()
    with pytest.raises(ValueError, match="valid: clean, drift"):
        streams.plan("fog", 10)


def test_novel_shifts_keep_the_image_shape_and_range():
    import torch

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, shift in streams.NOVEL.items():
        y = shift(x, 3.0, torch.Generator().manual_seed(1))
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1 and not torch.equal(x, y), name


def test_unknown_case_and_bad_sizes_are_refused_with_the_valid_choices(monkeypatch, tmp_path):
    for argv, message in ((["--cases", "no-such"], "valid: no-shift"), (["--images", "100"], "at least 6,400")):
        monkeypatch.setattr(sys, "argv", ["estimate_suite.py", "--out", str(tmp_path / "x"), *argv])
        with pytest.raises(SystemExit, match=message):
            suite.main()
    assert not list(tmp_path.iterdir())  # nothing written
