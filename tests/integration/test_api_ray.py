"""The Python API on Ray: the adapter and the probe as actors, a plain generator read in the driver."""

import pytest
import torch
from torch import nn

from stream_monitor import Monitor, read_probes


def _batches(n: int = 8, size: int = 16):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        yield torch.rand(size, 3, 16, 16, generator=g), torch.randint(0, 10, (size,), generator=g)


@pytest.mark.ray
def test_monitor_on_ray_matches_in_process(ray_local, tmp_path, tables):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 10))

    settings = dict(adapter="tent", mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=16, probe_every=2, probe_size=32)
    on_ray = Monitor(model(), use_ray=True, out=tmp_path / "ray", **settings).run(_batches())
    local = Monitor(model(), use_ray=False, out=tmp_path / "local", **settings).run(_batches())
    assert on_ray.status == "finished" and on_ray.images == 128
    assert len(on_ray.probes) == 4 and on_ray.probes == read_probes(on_ray.run_dir)
    assert tables(on_ray.run_dir) == tables(local.run_dir)  # the same rows, wherever the workers ran
    assert ray_local.is_initialized()  # the monitor joined the test's Ray and left it running
