"""The accuracy matrix with a real (small, untrained) ResNet on real corruptions."""

import numpy as np
import pytest
import torch

from stream_monitor.sources.accuracy_matrix import compute_matrices, matrix_filename
from stream_monitor.sources.ccc_pickle import load_matrices_npz, save_matrices_npz
from stream_monitor.sources.glyphs import VAL, GlyphDomain
from stream_monitor.models.embedded import CifarResNet


@pytest.mark.slow
def test_matrix_shape_shared_edges_and_cache_round_trip(tmp_path):
    torch.manual_seed(0)
    net = CifarResNet(depth=8).eval()
    x, y = GlyphDomain().render_range(VAL.start, VAL.start + 8)

    def predict(images):
        with torch.inference_mode():
            return net(images.float() / 255.0 - 0.5)

    noises = ("contrast", "gaussian_noise", "impulse_noise")
    m = compute_matrices(predict, x, y, noises=noises, profile="cifar")
    assert set(m) == {(a, b) for a in noises for b in noises if a != b}
    for (a, b), grid in m.items():
        assert grid.shape == (21, 21) and grid.min() >= 0 and grid.max() <= 100
        # Row 0 is b alone, column 0 is a alone: shared by every pair.
        assert np.array_equal(grid[0], m[next(k for k in m if k[1] == b)][0])
        assert np.array_equal(grid[:, 0], m[next(k for k in m if k[0] == a)][:, 0])
    # Deterministic.
    again = compute_matrices(predict, x, y, noises=noises, profile="cifar")
    assert all(np.array_equal(again[k], m[k]) for k in m)
    path = tmp_path / matrix_filename("ab" * 32, "cifar", 32, 8)
    save_matrices_npz(path, m)
    loaded = load_matrices_npz(path)
    assert all(np.array_equal(loaded[k], m[k]) for k in m)
