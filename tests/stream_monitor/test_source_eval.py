"""Windowed source accuracy on a hand-made stream whose right answers are known."""

import numpy as np
import torch
from torch import nn

from stream_monitor.sources.base import Batch
from stream_monitor.models import SourceModel
from stream_monitor.source_eval import evaluate_source


class PixelClassifier(nn.Module):
    """Predicts class k when the image's first pixel is k (a model whose answers we know)."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 10).float()


class ListSource:
    name, num_classes, image_size = "list", 10, 4

    def __init__(self, labels, shown):
        self.labels, self.shown = np.asarray(labels), np.asarray(shown)

    @property
    def length(self):
        return len(self.labels)

    def read(self, start, stop, batch_size=64):
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            images = np.zeros((hi - lo, 3, 4, 4), np.uint8)
            images[:, 0, 0, 0] = self.shown[lo:hi]
            n = hi - lo
            yield Batch(np.arange(lo, hi), images, self.labels[lo:hi], np.array(["fog"] * n),
                        np.ones(n, np.float32), np.array(["snow"] * n), np.zeros(n, np.float32))


def model():
    return SourceModel("pixel", PixelClassifier(), 10, 4, 4, (0.0,) * 3, (1 / 255,) * 3, "test", "0" * 64)


def test_windows_count_hits_per_stream_position():
    labels = np.arange(250) % 10
    shown = labels.copy()
    shown[100:150] = (shown[100:150] + 1) % 10  # window 2 (100-199) is half wrong
    result = evaluate_source(ListSource(labels, shown), model(), 0, 250, batch_size=32, window=100)
    assert [(w.start, w.stop, w.seen) for w in result.windows] == [(0, 100, 100), (100, 200, 100), (200, 250, 50)]
    assert [w.accuracy for w in result.windows] == [100.0, 50.0, 100.0]
    assert result.accuracy == 200 / 250 * 100
    assert result.windows[0].pair == "fog -> snow"


def test_start_mid_window_aligns_to_window_grid():
    labels = np.zeros(300, int)
    result = evaluate_source(ListSource(labels, labels), model(), 150, 300, batch_size=64, window=100)
    assert [(w.start, w.stop) for w in result.windows] == [(150, 200), (200, 300)]
