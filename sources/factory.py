"""Open a stream by kind: `ccc` (embedded or official shards) or `imagefolder`."""

from __future__ import annotations

from pathlib import Path

from stream_monitor.registry import unknown_name_message

from .base import StreamSource
from .ccc import CCCSpec

SOURCE_KINDS = {
    "ccc": "CCC stream: the embedded glyph domain by default; official shards with --data DIR|URL",
    "imagefolder": "a plain ImageFolder, uncorrupted (Entropy Enigma's --data mode), shuffled (source.seed) and "
                   "reshuffled for as many passes as --max-images asks; needs --data DIR (--class-map FILE when "
                   "its folders are not the model's classes)",
    "heldout": "one calibration domain: --stream clean or CORRUPTION:SEVERITY with a held-out corruption, "
               "on the embedded base, or on an ImageFolder with --data DIR (`stream-monitor calibrate --domains`)",
    "heldout-ccc": "a CCC stream of the embedded base walked over the four held-out corruptions, any seed "
                   "0-63 (`stream-monitor calibrate`'s default meta-set); --stream baseline_20_transition+speed_1000_seed_7",
}
HELD_OUT_LENGTH = 1 << 20  # images per calibration domain
DEFAULT_STREAM = CCCSpec().name  # CCC-Medium, speed 1000, seed 43


def check_source(kind: str, stream: str | None, data: str | Path | None, num_classes: int | None) -> None:
    """Raise ValueError, saying what to pass, for a source that cannot open; cheap, so a run can
    check before it starts any worker. `num_classes` is the model's (None: not known yet)."""
    if kind not in SOURCE_KINDS:
        raise ValueError(unknown_name_message("source", kind, SOURCE_KINDS))
    if kind == "imagefolder" and data is None:
        raise ValueError("--source imagefolder needs --data DIR, a folder of class sub-folders of images.")
    if kind == "heldout":
        from .heldout import parse_domain

        parse_domain(stream or "clean")
        if data is None and num_classes not in (None, 10):
            raise ValueError("--source heldout without --data renders the embedded glyph domain, for the embedded "
                             "model only; pass --data DIR (an ImageFolder of the model's classes) for other models.")
    if kind == "heldout-ccc":
        CCCSpec.parse(stream or DEFAULT_STREAM, pool="heldout")
        if data is not None or num_classes not in (None, 10):
            raise ValueError("--source heldout-ccc renders the embedded glyph domain, for the embedded model only "
                             "(and takes no --data).")
    if kind == "ccc":
        CCCSpec.parse(stream or DEFAULT_STREAM)
        if data is None and num_classes not in (None, 10):
            raise ValueError(
                "The embedded CCC stream is rendered for the embedded model (10 classes); use "
                "--model embedded, or pass --data DIR|URL with official CCC shards for ImageNet models."
            )


def open_source(kind: str = "ccc", stream: str | None = None, data: str | Path | None = None, model=None,
                crop: bool = True, device: str = "cpu", *, seed: int = 0, class_map: str | Path | None = None,
                images: int | None = None) -> StreamSource:
    """The stream a run reads. `model` (a `SourceModel`) sets image size, the embedded matrix and
    an image folder's classes. An image folder is shuffled by `seed` and goes over the folder as
    many times as `images` (the stream position a run stops at; None: once) needs.

    Raises:
        ValueError: the source cannot open (`check_source`), or a folder's classes do not fit the
            model (`sources.class_map.ClassMapError`).
    """
    check_source(kind, stream, data, model.num_classes if model is not None else None)
    if kind == "imagefolder":
        from .imagefolder import ImageFolderSource, index_image_folder

        classes, samples = index_image_folder(data)
        labels, num_classes = None, None
        if model is not None:
            labels, num_classes = folder_labels_for(classes, model.num_classes, model.class_names, class_map,
                                                    model.name), model.num_classes
        passes = max(1, -(-images // len(samples))) if images else 1
        return ImageFolderSource(data, image_size=model.image_size if model else 224,
                                 resize=model.resize_size if model else 256, shuffle_seed=seed, passes=passes,
                                 class_labels=labels, num_classes=num_classes)
    if kind == "heldout" and data is not None:
        from .heldout import HeldOutFolderSource

        return HeldOutFolderSource(data, stream or "clean", HELD_OUT_LENGTH, image_size=model.image_size if model else 224,
                                   resize=model.resize_size if model else 256, profile=corruption_profile(model))
    if kind == "heldout":
        from .heldout import HeldOutDomainSource

        return HeldOutDomainSource(stream or "clean", HELD_OUT_LENGTH, crop=crop)
    spec = CCCSpec.parse(stream or DEFAULT_STREAM, pool="heldout" if kind == "heldout-ccc" else "stream")
    if data is not None:
        from .shards import CCCShardSource

        return CCCShardSource(data, spec.name, device=device)
    if model is None:
        raise ValueError("The embedded CCC stream needs the embedded model (its accuracy matrix steers the path).")
    from .accuracy_matrix import embedded_matrices
    from .embedded_ccc import EmbeddedCCCSource

    return EmbeddedCCCSource(spec, embedded_matrices(model, pool=spec.pool), image_size=model.image_size, crop=crop)


def folder_labels_for(folders: list[str], num_classes: int, class_names, class_map: str | Path | None,
                      model: str) -> list[int]:
    """The model class of each class folder, from `class_map` (a file) or the model's own names."""
    from .class_map import folder_labels, load_class_map

    return folder_labels(folders, num_classes, class_names, load_class_map(class_map) if class_map else None, model)


def check_folder_classes(data: str | Path, model: str, weights: str | Path | None, class_map: str | Path | None) -> None:
    """Raise ValueError when the image folder `data` does not fit `model`'s classes; cheap (no
    model is built), so a run checks it before it creates its directory."""
    from stream_monitor.models import model_classes

    from .imagefolder import index_image_folder

    classes, _ = index_image_folder(data)
    known = model_classes(model, weights)
    folder_labels_for(classes, known.num_classes, known.names, class_map, model)


def stream_label(kind: str, stream: str | None, data: str | Path | None) -> str:
    """A short name of the stream a config runs, for its run directory: the CCC stream, or the
    image folder's name (a run directory named after the default CCC stream misleads)."""
    if kind == "imagefolder" and data is not None:
        label = f"imagefolder-{Path(str(data).rstrip('/')).name}"
    elif kind in ("heldout", "heldout-ccc"):
        label = f"{kind}-{stream or ('clean' if kind == 'heldout' else DEFAULT_STREAM)}"
        if data is not None:
            label += f"-{Path(str(data).rstrip('/')).name}"
    else:
        label = stream or DEFAULT_STREAM
    label = label.replace("_transition+", "_").replace("speed_", "s")
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in label)


def corruption_profile(model=None) -> str:
    """The corruption constants for a model's images: the embedded models' tuned ones, else
    ImageNet-C's (224 px)."""
    return "embedded" if model is not None and str(model.name).startswith("embedded") else "imagenet"
