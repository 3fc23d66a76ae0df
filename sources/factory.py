"""Open a stream by kind: `ccc` (embedded or official shards) or `imagefolder`."""

from __future__ import annotations

from pathlib import Path

from stream_monitor.registry import unknown_name_message

from .base import StreamSource
from .ccc import CCCSpec

SOURCE_KINDS = {
    "ccc": "CCC stream: the embedded glyph domain by default; official shards with --data DIR|URL",
    "imagefolder": "a plain ImageFolder, uncorrupted (Entropy Enigma's --data mode); needs --data DIR",
    "heldout": "one calibration domain of the embedded base: --stream clean or CORRUPTION:SEVERITY "
               "with a held-out corruption (what `stream-monitor calibrate` runs on)",
}
HELD_OUT_LENGTH = 1 << 20  # images per calibration domain
DEFAULT_STREAM = CCCSpec().name  # CCC-Medium, speed 1000, seed 43


def open_source(kind: str = "ccc", stream: str | None = None, data: str | Path | None = None, model=None,
                crop: bool = True, device: str = "cpu") -> StreamSource:
    """The stream a run reads. `model` (a `SourceModel`) sets image size and the embedded matrix."""
    if kind not in SOURCE_KINDS:
        raise ValueError(unknown_name_message("source", kind, SOURCE_KINDS))
    if kind == "imagefolder":
        if data is None:
            raise ValueError("--source imagefolder needs --data DIR, a folder of class sub-folders of images.")
        from .imagefolder import ImageFolderSource

        size = model.image_size if model else 224
        return ImageFolderSource(data, image_size=size, resize=model.resize_size if model else 256)
    if kind == "heldout":
        from .heldout import HeldOutDomainSource

        if model is not None and model.num_classes != 10:
            raise ValueError("--source heldout renders the embedded glyph domain, for the embedded model only.")
        return HeldOutDomainSource(stream or "clean", HELD_OUT_LENGTH, crop=crop)
    spec = CCCSpec.parse(stream or DEFAULT_STREAM)
    if data is not None:
        from .shards import CCCShardSource

        return CCCShardSource(data, spec.name, device=device)
    if model is None or model.num_classes != 10:
        raise ValueError(
            "The embedded CCC stream is rendered for the embedded model (10 classes); use "
            "--model embedded, or pass --data DIR|URL with official CCC shards for ImageNet models."
        )
    from .accuracy_matrix import embedded_matrices
    from .embedded_ccc import EmbeddedCCCSource

    return EmbeddedCCCSource(spec, embedded_matrices(model), image_size=model.image_size, crop=crop)
