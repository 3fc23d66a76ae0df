"""CCC's accuracy matrices: read the official pickle safely once, keep them as ``.npz``.

oripress/CCC ``generate.py`` (Press et al., NeurIPS 2023) downloads ``ccc_accuracy_matrix.pickle``
and loads it with ``pickle.load``: a dict ``"n1_<noise A>_n2_<noise B>" -> 21x21 array`` of
ResNet-50 accuracy (%) with noise A at severity i/4 then noise B at severity j/4. Unpickling a
downloaded file can run arbitrary code, so `load_ccc_pickle` uses a restricted unpickler that
resolves only the globals such a file needs, and refuses everything else before it is called:

- ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
  ``numpy.ndarray`` and ``numpy.dtype`` (protocols 0-4, numpy 1.x / 2.x);
- ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (protocol 5);
- ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar`` (numpy scalars);
- ``_codecs.encode`` (how protocol 2 stores the raw bytes of an array);
- ``builtins.dict`` and ``collections.OrderedDict`` (the container).

The matrices are then stored in our own format, ``.npz`` with keys ``<noise A>__<noise B>``,
read back with ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MATRIX_SHAPE = (21, 21)
_KEY = re.compile(r"^n1_(.+)_n2_(.+)$")


def _numpy_global(module: str, name: str):
    """The numpy object behind a module path of numpy 1.x or 2.x (numpy.core moved to numpy._core)."""
    import importlib

    for candidate in (module, module.replace("numpy.core.", "numpy._core."), module.replace("numpy._core.", "numpy.core.")):
        if candidate.startswith("numpy.core.") and hasattr(np, "_core"):
            continue  # numpy 2: numpy.core is a deprecated alias of numpy._core
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy here has no {module}.{name}")


_ALLOWED: dict[tuple[str, str], object] = {
    ("builtins", "dict"): dict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_ALLOWED_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _MatrixUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; anything else raises before it can run."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if (module, name) in _ALLOWED_NUMPY:
            return _numpy_global(module, name)
        if (module, name) == ("_codecs", "encode"):
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a CCC accuracy-matrix pickle holds only a "
            "dict of numpy float arrays, so this file is not one (or has been tampered with). "
            "Allowed: " + ", ".join(f"{m}.{n}" for m, n in sorted({*_ALLOWED, *_ALLOWED_NUMPY, ("_codecs", "encode")}))
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids in a CCC accuracy-matrix pickle")


def load_ccc_pickle(source: str | Path | bytes) -> dict[tuple[str, str], np.ndarray]:
    """The official ``ccc_accuracy_matrix.pickle`` as ``{(noise_a, noise_b): (21, 21) float64}``.

    `source` is a path or the file's bytes. Raises ``pickle.UnpicklingError`` for a file that
    needs anything beyond a dict of numpy arrays, ValueError for unexpected keys or shapes.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    obj = _MatrixUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, Mapping):
        raise ValueError(f"CCC accuracy-matrix pickle holds a {type(obj).__name__}, expected a dict")
    matrices: dict[tuple[str, str], np.ndarray] = {}
    for key, value in obj.items():
        match = _KEY.match(key) if isinstance(key, str) else None
        if match is None:
            raise ValueError(f"unexpected key {key!r} in the CCC accuracy-matrix pickle; expected 'n1_<noise>_n2_<noise>'")
        matrices[match.group(1), match.group(2)] = _check_matrix(value, repr(key))
    return matrices


def _check_matrix(value, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.shape != MATRIX_SHAPE:
        raise ValueError(f"{where}: expected a {MATRIX_SHAPE} numeric matrix, got {array.dtype} {array.shape}")
    return array.astype(np.float64)


def save_matrices_npz(path: str | Path, matrices: Mapping[tuple[str, str], np.ndarray]) -> Path:
    """Write ``{(a, b): matrix}`` as ``.npz`` with keys ``a__b`` (no pickle inside)."""
    arrays = {}
    for (a, b), matrix in matrices.items():
        if "__" in a or "__" in b:
            raise ValueError(f"noise names may not contain '__': {a!r}, {b!r}")
        arrays[f"{a}__{b}"] = _check_matrix(matrix, f"({a!r}, {b!r})")
    path = Path(path)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def load_matrices_npz(path: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Read matrices written by `save_matrices_npz` (``allow_pickle=False``)."""
    matrices = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            a, sep, b = key.partition("__")
            if not sep or not a or not b:
                raise ValueError(f"{path}: unexpected key {key!r}; expected '<noise A>__<noise B>'")
            matrices[a, b] = _check_matrix(npz[key], f"{path}:{key}")
    return matrices
