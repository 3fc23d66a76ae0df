"""The Python API: the example's runs, a custom adapter, resume (exact, or refused), errors, lazy import."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from stream_monitor import Monitor, MonitorError, read_probes
from stream_monitor.api import BatchFormatError
from stream_monitor.registry import UnknownNameError
from stream_monitor.rundir import RunDirectory
from stream_monitor.runtime.runner import RunError, prepare_resume

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "monitor_your_model.py"
TIMING = {"wall_time", "step_ms", "probe_ms", "time", "run_id"}  # differ between two runs of one stream
TINY = dict(batch_size=16, probe_every=2, probe_size=32)


def _example():
    spec = importlib.util.spec_from_file_location("monitor_your_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


class Glyphs:
    """A map-style dataset: item i is (uint8 image, label), a pure function of i."""

    def __init__(self, length: int = 160) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        label = i % 10
        image = (torch.rand(3, 16, 16, generator=g) * 128 + 12 * label).to(torch.uint8)
        return image, label


def _batches(n: int = 6, size: int = 16, labels: bool = True):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        images = torch.rand(size, 3, 16, 16, generator=g)
        yield (images, torch.randint(0, 10, (size,), generator=g)) if labels else images


def _monitor(tmp_path, **kwargs) -> Monitor:
    return Monitor(_tiny_model(), **{"adapter": "tent", "mean": (0.5,) * 3, "std": (0.25,) * 3, "out": tmp_path,
                                     **TINY, **kwargs})


def _tables(run_dir):
    directory = RunDirectory(run_dir)
    out = {}
    for name in ("steps", "probes", "estimates"):
        table = directory.table(name)
        out[name] = table.drop_columns([c for c in table.column_names if c in TIMING]).to_pylist()
    return out


@pytest.mark.slow
def test_example_runs_both_adapters_on_a_generator(tmp_path):
    example = _example()
    for run in (example.monitor_registered, example.monitor_custom):
        seen = []
        result = run(str(tmp_path), images=128, batch_size=16, probe_every=2, probe_size=32,
                     callbacks=[type("Keep", (), {"on_probe": lambda self, r: seen.append(r)})()])
        assert result.status == "finished" and result.images == 128
        assert len(result.probes) == 4 and seen == result.probes == read_probes(result.run_dir)
        last = result.last
        assert last.readings and last.reading("average-confidence").value is not None
        assert last.true_online_accuracy is not None  # the generator yields labels
        assert not last.calibrated and last.online_accuracy is None and "uncalibrated" in last.warnings[-1]
    assert result.info.adapter == "EntropyNorm" and result.info.has_labels


def test_custom_adapter_object_and_unlabelled_stream(tmp_path):
    adapter = _example().EntropyNorm(_tiny_model(), lr=0.5)
    result = _monitor(tmp_path, adapter=adapter, flips_every=2).run(_batches(labels=False))
    assert result.status == "finished" and result.images == 96
    assert not result.info.has_labels and result.last.true_online_accuracy is None
    steps = RunDirectory(result.run_dir).table("steps")
    assert steps.column("correct").null_count == steps.num_rows
    flips = [p.flips for p in result.probes]
    assert flips and max(flips) > 0  # the snapshots of the adapted weights reach the probe


def test_adapter_without_the_protocol_is_refused(tmp_path):
    class NoSnapshot:
        def step(self, images):
            return images.mean((2, 3))

    with pytest.raises(TypeError, match="lacks snapshot, reset, state_dict"):
        _monitor(tmp_path, adapter=NoSnapshot()).run(_batches())
    with pytest.raises(UnknownNameError, match="Valid adapters"):
        _monitor(tmp_path, adapter="tnet")


def test_generator_cannot_resume(tmp_path):
    result = _monitor(tmp_path).run(_batches(), max_images=48)
    assert result.status == "finished" and result.images == 48
    with pytest.raises(MonitorError, match="generator .* cannot be rewound"):
        _monitor(tmp_path).resume(result.run_dir, _batches())
    assert RunDirectory(result.run_dir).rows("steps")[-1]["stop"] == 48  # nothing was written


@pytest.mark.slow
def test_indexable_dataset_resumes_to_the_same_rows(tmp_path):
    settings = ["runtime.checkpoint_every=3"]
    whole = _monitor(tmp_path / "a", settings=settings).run(Glyphs())
    part = _monitor(tmp_path / "b", settings=settings).run(Glyphs(), max_images=80)  # stops between two probes
    assert part.images == 80
    resumed = _monitor(tmp_path / "b", settings=settings).resume(part.run_dir, Glyphs())
    assert resumed.status == whole.status == "finished" and resumed.images == 160 - 80
    assert _tables(resumed.run_dir) == _tables(whole.run_dir)
    assert read_probes(resumed.run_dir) == whole.probes


def test_resume_checks_the_model_and_the_cli_refuses_api_runs(tmp_path):
    result = _monitor(tmp_path).run(Glyphs(48))
    other = Monitor(_tiny_model(seed=1), adapter="tent", mean=(0.5,) * 3, std=(0.25,) * 3, out=tmp_path, **TINY)
    with pytest.raises(MonitorError, match="model weights"):
        other.resume(result.run_dir, Glyphs(48))
    with pytest.raises(RunError, match="Python API"):
        prepare_resume(result.run_dir)


def test_bad_batches_say_what_is_expected(tmp_path):
    monitor = _monitor(tmp_path)
    normalised = ((torch.rand(16, 3, 16, 16) - 0.5) / 0.25 for _ in range(2))
    with pytest.raises(BatchFormatError, match=r"before normalisation"):
        monitor.run(normalised)
    with pytest.raises(BatchFormatError, match=r"channels last"):
        monitor.run(torch.rand(16, 16, 16, 3) for _ in range(2))
    with pytest.raises(BatchFormatError, match=r"class indices of the model, 0 to 9"):
        monitor.run((torch.rand(16, 3, 16, 16), torch.full((16,), 12)) for _ in range(2))
    with pytest.raises(ValueError, match="either as mean and std or as a normalise callable"):
        Monitor(_tiny_model(), mean=(0.5,) * 3, std=(0.2,) * 3, normalise=lambda x: x, out=tmp_path).run(_batches())
    assert not any(tmp_path.iterdir())  # validated before any run directory


def test_a_list_of_batches_a_normalise_callable_and_the_dashboard(tmp_path, capsys):
    batches = [(torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8), torch.arange(16) % 10)
               for _ in range(3)]
    monitor = Monitor(_tiny_model(), adapter="source", normalise=lambda x: (x - 0.5) / 0.25, out=tmp_path,
                      dashboard=True, **TINY)
    result = monitor.run(batches)
    assert result.images == 48 and result.last is not None
    assert RunDirectory(result.run_dir).info().stream == "batches"
    assert result.run_dir.name in capsys.readouterr().out  # not a terminal: the dashboard's plain lines


def test_import_stays_light():
    import stream_monitor

    code = "import sys, stream_monitor; assert 'torch' not in sys.modules, 'torch loaded'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert stream_monitor.Monitor is Monitor and "calibrate_model" in dir(stream_monitor)
    with pytest.raises(AttributeError, match="no attribute 'Monitr'"):
        stream_monitor.Monitr


def test_stored_values_are_read_back(tmp_path):
    from stream_monitor import read_events, read_table

    result = _monitor(tmp_path).run(_batches())
    probes = read_table(result.run_dir, "probes")
    frame = read_table(result.run_dir, "estimates", "pandas")
    assert probes.num_rows == len(result.probes) == 3
    assert set(frame["estimator"]) >= {"average-confidence", "cot", "nuclear-norm"}
    served = frame[(frame.estimator == "average-confidence") & (frame.feed == "served")]
    assert served.value.iloc[-1] == result.last.reading("average-confidence").value
    kinds = [e.kind for e in read_events(result.run_dir)]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    from stream_monitor.rundir import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="Valid tables: steps, probes, events, estimates"):
        read_table(result.run_dir, "step")


@pytest.mark.slow
def test_calibration_from_labelled_heldout_data_gives_a_headline(tmp_path):
    from stream_monitor import calibrate_model
    from stream_monitor.calibration.format import CalibrationMismatch

    settings = dict(mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=16, probe_every=2, probe_size=32, probe_cycle=8)
    path = calibrate_model(_tiny_model(), Glyphs(96), "tent", output=tmp_path / "cal.json", log=lambda m: None,
                           domains=("clean", "speckle_noise:3", "gaussian_blur:3", "spatter:3"), metaset=False,
                           **settings)  # the meta-set: test_calibrate_metaset.py
    result = Monitor(_tiny_model(), "tent", calibration=path, out=tmp_path / "runs", **settings).run(_batches(8))
    assert result.probes and all(p.calibrated for p in result.probes)
    assert result.last.source_accuracy is not None and result.last.online_accuracy is not None
    assert not any("uncalibrated" in w for w in result.last.warnings)
    other = Monitor(_tiny_model(seed=1), "tent", calibration=path, out=tmp_path / "other", **settings)
    with pytest.raises(CalibrationMismatch, match="model_sha256"):
        other.run(_batches(8))
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_the_docstring_example_runs():
    import doctest

    from stream_monitor.api import monitor

    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(monitor.Monitor, "Monitor", globs={}) if t.examples]
    assert tests
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_a_list_of_batches_resumes_by_reading_it_again(tmp_path):
    batches = list(_batches(n=6))
    whole = _monitor(tmp_path / "a").run(batches)
    part = _monitor(tmp_path / "b").run(batches, max_images=48)
    resumed = _monitor(tmp_path / "b").resume(part.run_dir, batches)
    assert resumed.images == 96 - 48
    assert _tables(resumed.run_dir) == _tables(whole.run_dir)
