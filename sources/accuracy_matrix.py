"""CCC's accuracy matrix for a source model: accuracy (%) for every ordered corruption pair.

`matrix[(a, b)][i, j]` is the source model's accuracy on a fixed calibration set with corruption
`a` at severity i/4 followed by `b` at severity j/4 (the 21x21 grid of oripress/CCC's
`ccc_accuracy_matrix.pickle`, which was measured for ResNet-50 on 5,000 ImageNet validation
images). As in the reference, the calibration images are neither cropped nor JPEG-compressed.

The embedded stream computes its own matrix for its model, and caches it keyed by the model's
checksum, the constants profile and the image count: first in the package's shipped assets, then
in the user cache (`$STREAM_MONITOR_CACHE`, default `~/.cache/stream-monitor`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .ccc import GRID, GRID_STEP
from .ccc_pickle import load_matrices_npz, save_matrices_npz
from .corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS, get_corruption
from .glyphs import VAL, GlyphDomain
from .seeding import mix_seed

Matrices = dict[tuple[str, str], np.ndarray]
SHIPPED = Path(__file__).resolve().parent / "assets"
DEFAULT_IMAGES = 48


def cache_dir() -> Path:
    return Path(os.environ.get("STREAM_MONITOR_CACHE", Path.home() / ".cache" / "stream-monitor"))


#: The corruptions each walk pool needs matrices for (sources.ccc.POOLS).
POOL_NOISES = {"stream": STREAM_CORRUPTIONS, "heldout": HELD_OUT_CORRUPTIONS}


def matrix_filename(model_sha256: str, profile: str, image_size: int, images: int, pool: str = "stream") -> str:
    """Cache key: the model, and the corruption constants, so retuning a table invalidates it."""
    kind = "ccc_matrix" if pool == "stream" else f"ccc_matrix_{pool}"
    return f"{kind}_{model_sha256[:16]}_{profile}-{constants_digest(profile)}_{image_size}px_n{images}.npz"


def constants_digest(profile: str) -> str:
    """A short hash of every corruption's constants table for `profile`."""
    digest = hashlib.sha256()
    for name in CORRUPTIONS.names():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(get_corruption(name).levels[profile], dtype=np.float64).tobytes())
    return digest.hexdigest()[:8]


def compute_matrices(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    noises: Sequence[str] = STREAM_CORRUPTIONS,
    profile: str = "embedded",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Matrices:
    """Accuracy matrices for all ordered pairs of `noises` on uint8 `images`.

    `predict` maps a uint8 batch to logits. The first corruption's output at each severity is
    computed once and shared by every partner; the rows and columns at severity 0 (a single
    corruption) are shared by all pairs.
    """
    clean = images.float() / 255.0
    n = len(images)
    single = {name: _single_curve(predict, clean, labels, name, profile, seed) for name in noises}
    matrices: Matrices = {}
    done, total = 0, len(noises) * (len(noises) - 1)
    for a in noises:
        first = get_corruption(a)
        stages = []
        for i in range(1, GRID):
            g = torch.Generator().manual_seed(mix_seed(seed, 1, _id(a), i))
            stages.append(_quantise(first(clean, i * GRID_STEP, g, profile)))
        for b in noises:
            if a == b:
                continue
            second = get_corruption(b)
            matrix = np.zeros((GRID, GRID))
            matrix[:, 0] = single[a]
            matrix[0, :] = single[b]
            for i, x_a in enumerate(stages, start=1):
                batch = []
                for j in range(1, GRID):
                    g = torch.Generator().manual_seed(mix_seed(seed, 2, _id(a), i, _id(b), j))
                    batch.append(second(x_a, j * GRID_STEP, g, profile))
                correct = _correct(predict, torch.cat(batch), labels.repeat(GRID - 1))
                matrix[i, 1:] = 100.0 * correct.view(GRID - 1, n).float().mean(1).numpy()
            matrices[a, b] = matrix
            done += 1
            if progress:
                progress(done, total)
    return matrices


def _single_curve(predict, clean, labels, name, profile, seed) -> np.ndarray:
    corruption = get_corruption(name)
    batches = [clean]
    for s in range(1, GRID):
        g = torch.Generator().manual_seed(mix_seed(seed, 0, _id(name), s))
        batches.append(corruption(clean, s * GRID_STEP, g, profile))
    correct = _correct(predict, torch.cat(batches), labels.repeat(GRID))
    return 100.0 * correct.view(GRID, len(clean)).float().mean(1).numpy()


def _id(name: str) -> int:
    """A stable number per corruption name, so results do not depend on list order."""
    return zlib.crc32(name.encode())


def _correct(predict, images: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    out = []
    for lo in range(0, len(images), chunk):
        x = (images[lo:lo + chunk].clamp(0, 1) * 255).round().to(torch.uint8)
        out.append(predict(x).argmax(1).cpu() == labels[lo:lo + chunk])
    return torch.cat(out)


def _quantise(images: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits between the two corruptions, as the reference saves an image in between."""
    return (images * 255).round() / 255


def embedded_matrices(model, images: int = DEFAULT_IMAGES, profile: str = "embedded", compute: bool = True,
                      verbose: bool = True, pool: str = "stream") -> Matrices:
    """The embedded model's matrices for a walk pool: shipped asset, else user cache, else
    computed and cached."""
    name = matrix_filename(model.sha256, profile, model.image_size, images, pool)
    for directory in (SHIPPED, cache_dir()):
        if (directory / name).exists():
            return load_matrices_npz(directory / name)
    if not compute:
        raise FileNotFoundError(
            f"No CCC accuracy matrix for {model.short_id} ({name}); compute it with "
            f"`python -m sources.accuracy_matrix` (about half an hour on 2 CPU cores)."
        )
    domain = GlyphDomain(seed=0, image_size=model.image_size)
    x, y = domain.render_range(VAL.start, VAL.start + images)
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        if verbose and (done % 14 == 0 or done == total):
            print(f"accuracy matrix: {done}/{total} pairs, {time.perf_counter() - started:.0f}s", flush=True)

    matrices = compute_matrices(model.predict, x, y, noises=POOL_NOISES[pool], profile=profile, progress=report)
    path = cache_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_matrices_npz(path, matrices)
    path.with_suffix(".json").write_text(json.dumps({
        "model": model.short_id, "model_sha256": model.sha256, "profile": profile, "images": images, "pool": pool,
        "image_size": model.image_size, "calibration": f"GlyphDomain(seed=0) VAL[{VAL.start}, +{images})",
        "seconds": round(time.perf_counter() - started),
    }, indent=2) + "\n")
    return matrices


def main() -> None:
    import argparse

    from stream_monitor.models import load_model

    parser = argparse.ArgumentParser(description="Compute the embedded model's CCC accuracy matrix.")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--pool", default="stream", choices=sorted(POOL_NOISES),
                        help="stream: CCC's 15 corruptions; heldout: the four calibration corruptions")
    args = parser.parse_args()
    model = load_model("embedded")
    embedded_matrices(model, args.images, args.profile, pool=args.pool)
    print(cache_dir() / matrix_filename(model.sha256, args.profile, model.image_size, args.images, args.pool))


if __name__ == "__main__":
    main()
