"""Run `stream-monitor run` of whatever checkout is on PYTHONPATH on one of the suite's rendered streams.

    PYTHONPATH=CHECKOUT python benchmarks/_suite_run.py STREAM_DIR -- run --source imagefolder --data STREAM_DIR ...
    PYTHONPATH=CHECKOUT python benchmarks/_suite_run.py - -- run --stream CCC_STREAM ...

The suite's own streams (`suite_streams.py`) are arrays that no release knows how to open. The
CLI accepts `--source imagefolder --data DIR` for any folder; in this process (`--no-ray`: every
worker runs here) the stream worker's `open_source` is wrapped so that this one folder opens as
the array stream, in stream order. Only the CLI, `sources.base.Batch` and the stream worker's
`open_source` name are used, so the release under test runs unchanged otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


class ArrayStream:
    """A rendered suite stream served in stream order (`sources.base.StreamSource`)."""

    num_classes = 10
    image_size = 32

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.labels = np.load(self.folder / "labels.npy")
        self.family = np.load(self.folder / "family.npy")
        self.severity = np.load(self.folder / "severity.npy")
        self.name = f"suite/{self.folder.name}"

    @property
    def length(self) -> int:
        return len(self.labels)

    def read(self, start: int, stop: int, batch_size: int = 64):
        from stream_monitor.sources.base import Batch

        stop = min(stop, self.length)
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            n = hi - lo
            yield Batch(indices=np.arange(lo, hi, dtype=np.int64), images=np.ascontiguousarray(self.images[lo:hi]),
                        labels=self.labels[lo:hi].copy(), noise_a=self.family[lo:hi].astype(str),
                        severity_a=self.severity[lo:hi].astype(np.float32), noise_b=np.full(n, ""),
                        severity_b=np.zeros(n, np.float32))


def _serve_arrays(folder: Path) -> None:
    """Make the checkout under test open `folder` as the rendered arrays. Releases differ in where the
    stream is opened: before the Python API the stream worker imported `open_source` itself
    (`runtime.workers`), since then `runtime.components` reads it from the factory module at call time,
    and the CLI checks an image folder's classes (`check_folder_classes`) before the run."""
    import importlib

    try:
        factory = importlib.import_module("stream_monitor.sources.factory")
    except ImportError:  # releases before the stream_monitor.sources namespace
        factory = importlib.import_module("sources.factory")
    from stream_monitor.runtime import workers

    opened = factory.open_source

    def open_source(kind, stream=None, data=None, *rest, **kwargs):
        if data is not None and Path(data).resolve() == folder:
            return ArrayStream(folder)
        return opened(kind, stream, data, *rest, **kwargs)

    factory.open_source = open_source
    if hasattr(workers, "open_source"):
        workers.open_source = open_source
    checked = getattr(factory, "check_folder_classes", None)
    if checked is not None:
        def check_folder_classes(data, *rest, **kwargs):
            if data is not None and Path(data).resolve() == folder:
                return None  # the arrays carry the model's own class indices
            return checked(data, *rest, **kwargs)

        factory.check_folder_classes = check_folder_classes


def main() -> None:
    args = sys.argv[sys.argv.index("--") + 1:]
    if sys.argv[1] != "-":  # "-": a stream the CLI opens itself
        _serve_arrays(Path(sys.argv[1]).resolve())
    import stream_monitor

    print(f"stream_monitor from {Path(stream_monitor.__file__).parent}", file=sys.stderr)
    from stream_monitor.cli import main as cli

    sys.argv = ["stream-monitor", *args]
    cli()


if __name__ == "__main__":
    main()
