"""The official pre-generated CCC streams: webdataset shards, from a local folder or over HTTP.

CCC (Press et al., "RDumb: A simple approach that questions our progress in continual test-time
adaptation", NeurIPS 2023; code: oripress/CCC) publishes 27 streams,
``baseline_{0|20|40}_transition+speed_{1000|2000|5000}_seed_{43|44|45}`` (baseline 0/20/40 =
CCC-Hard/Medium/Easy). Each stream is a folder of webdataset tars ``serial_00000.tar``,
``serial_00001.tar``, ... Shard ``s`` holds ``ceil(25000 / speed) * speed`` images under the keys
``sample_0``, ``sample_1``, ... (``generate.py``: ``IMGS_PER + IMGS_PER % speed``), so image ``i``
of shard ``s`` is stream position ``s * shard_size + i``. Every sample has three members:

- ``input.jpg``: the corrupted 224x224 image, JPEG quality 85;
- ``output.cls``: the ImageNet class index as ASCII digits (index into the sorted wnid folders);
- ``info``: ``++dir++<wnid>++name++<file>++n1++<noise A>++s1++<sev A>++n2++<noise B>++s2++<sev B>``.

``CCCShardSource`` serves any slice ``[start, stop)`` of such a stream as `Batch`es of uint8 NCHW
images, opening only the shards that overlap the slice. CCC's own loader (``eval.py``) decodes
with PIL in a single process and ignores ``info``; here JPEGs are decoded in batches with
``torchvision.io.decode_jpeg`` (on the CPU by default, or a CUDA device) and ``info`` becomes the
per-image corruption columns.

Bad input loses nothing silently, and no member's bytes, name or label is trusted:

- a sample whose JPEG is empty or does not decode, whose header declares another size than
  ``image_size`` (checked before decoding, so a hostile header cannot make the decoder allocate
  gigabytes), which lacks a member, or whose label is not an integer in ``[0, num_classes)`` is
  left out of its batch, logged, and listed in ``Batch.skipped`` as
  ``"serial_00003.tar:sample_17: reason"``; ``Batch.indices`` says which positions the remaining
  rows hold, so labels and info stay aligned;
- a member is only read as a sample if its key is exactly ``sample_<i>`` with ``i`` inside the
  shard: a path (``../../sample_3``), a padded index (``sample_03``) or an index past the shard
  could otherwise stand in for a real position; such members are logged and ignored, and a
  position they leave empty is listed as not in the shard;
- a truncated or unreadable shard is logged as a warning naming the shard and the last key read;
  the positions it could not deliver are listed in ``skipped`` and the stream goes on with the next
  shard (remote shards are first re-opened ``retries`` times, resuming at the position reached,
  since the official server is known to reset connections, oripress/CCC issue #9).

Batches are cut by stream position: batch ``k`` of ``read(start, stop, b)`` covers positions
``[start + k*b, start + (k+1)*b)``, whatever was skipped inside it, so a corrupt image never
shifts the batch boundaries of the rest of the stream (reproducible, resumable runs). A window in
which nothing could be read is not yielded; its ``skipped`` entries move to the next batch (or to
a final empty batch, so they are never dropped).

Tar iteration uses webdataset's ``tariterators`` (``url_opener`` -> ``tar_file_expander`` ->
``group_by_keys``) with an exception handler. webdataset ends a shard silently when the tar is cut
at a header boundary (Python's ``tarfile`` treats a truncated header as end of archive), so
truncation is detected here by position: a shard that stops before delivering the positions asked
for is truncated, whether or not webdataset raised.
"""

from __future__ import annotations

import io
import logging
import math
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from webdataset import tariterators
from webdataset.gopen import gopen

from stream_monitor.registry import unknown_name_message

from .base import Batch
from .imagefolder import image_header
from .ccc import CUTOFF, IMAGES_PER_SHARD, STREAM_NAME
from .ccc import all_stream_names as ccc_stream_names
from .ccc import shard_size as ccc_shard_size
from .ccc import stream_length as ccc_stream_length

logger = logging.getLogger(__name__)

#: Where oripress/CCC streams the pre-generated shards from (``eval.get_webds_loader``).
OFFICIAL_CCC_URL = "https://mlcloud.uni-tuebingen.de:7443/datasets/CCC"

#: Images per shard before rounding up to a multiple of the speed (``generate.py``: IMGS_PER).
CCC_IMAGES_PER_SHARD = IMAGES_PER_SHARD
#: Images per stream (``generate.py``: cutoff); generation stops at the first full shard past it.
CCC_CUTOFF = CUTOFF
CCC_IMAGE_SIZE = 224
CCC_NUM_CLASSES = 1000

# No leading zeros and no directories: exactly one name per position, so no member can alias another.
_KEY_RE = re.compile(r"^sample_(0|[1-9][0-9]*)$")
_FIELDS = ("input.jpg", "output.cls")


def parse_stream_name(name: str, official_only: bool = True) -> tuple[int, int, int]:
    """(baseline, speed, seed) of a stream name; unknown names list the 27 valid ones.

    With ``official_only=False`` any well-formed ``baseline_<b>_transition+speed_<v>_seed_<s>`` is
    accepted (streams generated locally with other settings).
    """
    match = STREAM_NAME.match(name)
    if match is None or (official_only and name not in ccc_stream_names()):
        raise ValueError(unknown_name_message("CCC stream", name, ccc_stream_names()))
    baseline, speed, seed = (int(g) for g in match.groups())
    if speed <= 0:
        raise ValueError(f"CCC stream {name!r}: the transition speed must be positive")
    return baseline, speed, seed


def shard_filename(index: int) -> str:
    return f"serial_{index:05d}.tar"


# ----------------------------------------------------------------------------------------- info


@dataclass(frozen=True)
class CCCInfo:
    """CCC's per-image ``info``: the source file and the two corruptions with their severities."""

    dir: str
    name: str
    noise_a: str
    severity_a: float
    noise_b: str
    severity_b: float


def format_info(info: CCCInfo) -> str:
    """The ``info`` string exactly as oripress/CCC ``ApplyTransforms`` writes it (``str(float)``)."""
    return (
        f"++dir++{info.dir}++name++{info.name}++n1++{info.noise_a}++s1++{float(info.severity_a)}"
        f"++n2++{info.noise_b}++s2++{float(info.severity_b)}"
    )


def parse_info(text: str | bytes) -> CCCInfo:
    """Parse an ``info`` string; raises ValueError naming what is missing or malformed."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    parts = text.split("++")
    if len(parts) != 13 or parts[0] != "" or parts[1::2] != ["dir", "name", "n1", "s1", "n2", "s2"]:
        raise ValueError(
            f"malformed CCC info {text!r}; expected "
            "'++dir++<wnid>++name++<file>++n1++<noise>++s1++<sev>++n2++<noise>++s2++<sev>'"
        )
    fields = dict(zip(parts[1::2], parts[2::2]))
    try:
        sev_a, sev_b = float(fields["s1"]), float(fields["s2"])
    except ValueError:
        raise ValueError(f"malformed CCC info {text!r}: severities must be numbers") from None
    return CCCInfo(fields["dir"], fields["name"], fields["n1"], sev_a, fields["n2"], sev_b)


# --------------------------------------------------------------------------------- raw samples


@dataclass
class _Raw:
    """One stream position as read from a shard: either its members or why it is missing."""

    position: int
    where: str  # "serial_00003.tar:sample_17"
    sample: dict | None = None
    missing: str | None = None


def iter_shard(url: str) -> tuple[Iterator[dict], list[Exception]]:
    """Samples of one tar (path or URL) in file order, and a list that collects its read errors.

    webdataset's handler protocol: returning True keeps iterating after an error, so whatever
    precedes a damaged spot is still delivered; the errors are kept for the caller's report.
    """
    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:
        errors.append(exn)
        return True

    def samples() -> Iterator[dict]:
        try:
            stream = gopen(url, "rb")
        except Exception as exn:  # missing file, failed download
            errors.append(exn)
            return
        try:
            files = tariterators.tar_file_expander(
                [{"url": url, "stream": stream}], handler=handler, eof_value=None
            )
            yield from tariterators.group_by_keys(files, handler=handler)
        finally:
            try:
                stream.close()  # for a curl pipe this also checks curl's exit status
            except Exception as exn:
                errors.append(exn)

    return samples(), errors


def _shard_members(path: str | Path) -> dict[int, set[str]] | None:
    """{sample index: member extensions} of a local tar from its headers only; None if damaged.

    webdataset's iteration reads every member; this reads only the headers with the standard
    library's tarfile (random access), which is what makes scanning a 25,000-image shard cheap.
    Keys are held to the reader's rule (`_KEY_RE`), so what is counted is what `read` serves.
    """
    members: dict[int, set[str]] = {}
    try:
        file_size = Path(path).stat().st_size
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = tariterators.base_plus_ext(member.name)
                match = _KEY_RE.match(key or "")
                if match is None:
                    continue
                members.setdefault(int(match.group(1)), set()).add(ext)
                if member.offset_data + member.size > file_size:
                    return None
    except (tarfile.TarError, OSError):
        return None
    return members


def count_shard_samples(path: str | Path) -> int:
    """Number of complete samples (all of input.jpg, output.cls, info) in a local tar, -1 if damaged.

    What resumable generation checks before keeping a shard; a shard's size in stream positions
    is `count_shard_positions`, since an incomplete sample still holds its position.
    """
    members = _shard_members(path)
    if members is None:
        return -1
    needed = {"input.jpg", "output.cls", "info"}
    return sum(1 for exts in members.values() if needed <= exts)


def count_shard_positions(path: str | Path) -> int:
    """Stream positions a local tar spans (highest ``sample_<i>`` + 1, whatever members it has),
    -1 if damaged.

    A sample lacking a member is still a position (skipped and reported when read); counting only
    complete samples would shrink the shard size and shift every later position of the stream.
    """
    members = _shard_members(path)
    if members is None:
        return -1
    return max(members, default=-1) + 1


# -------------------------------------------------------------------------------------- batches


class _Batcher:
    """Cuts consecutive positions into position-aligned batches and decodes them."""

    def __init__(self, start: int, stop: int, batch_size: int, image_size: int, device: str,
                 num_classes: int) -> None:
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.image_size, self.device, self.num_classes = image_size, device, num_classes
        self.window = 0
        self.pending: list[_Raw] = []
        self.carried: list[str] = []

    def add(self, raw: _Raw) -> Iterator[Batch]:
        window = (raw.position - self.start) // self.batch_size
        if window != self.window:
            yield from self._flush()
            self.window = window
        self.pending.append(raw)

    def finish(self) -> Iterator[Batch]:
        yield from self._flush()
        if self.carried:
            yield self._build([], [], self.carried)
            self.carried = []

    def _flush(self) -> Iterator[Batch]:
        if not self.pending:
            return
        raws, self.pending = self.pending, []
        skipped: list[str] = []
        rows: list[tuple[_Raw, int, CCCInfo | None, torch.Tensor]] = []
        for raw in raws:
            if raw.missing is not None:
                skipped.append(f"{raw.where}: {raw.missing}")
                continue
            sample = raw.sample or {}
            reason = self._invalid(sample)
            if reason is not None:
                logger.warning("CCC shard sample %s skipped: %s", raw.where, reason)
                skipped.append(f"{raw.where}: {reason}")
                continue
            label = int(sample["output.cls"].decode("ascii").strip())
            info = None
            if "info" in sample:
                try:
                    info = parse_info(sample["info"])
                except (ValueError, UnicodeDecodeError) as exn:
                    logger.warning("CCC shard sample %s: %s; corruption columns left empty", raw.where, exn)
            else:
                logger.warning("CCC shard sample %s has no info member; corruption columns left empty", raw.where)
            data = torch.frombuffer(bytearray(sample["input.jpg"]), dtype=torch.uint8)
            rows.append((raw, label, info, data))

        images = self._decode([r[3] for r in rows], [r[0].where for r in rows], skipped)
        kept = [(row, img) for row, img in zip(rows, images) if img is not None]
        if not kept:
            self.carried.extend(skipped)
            return
        skipped = self.carried + skipped
        self.carried = []
        yield self._build([r for r, _ in kept], [i for _, i in kept], skipped)

    def _invalid(self, sample: dict) -> str | None:
        """Why a sample cannot be served (None if it can), from its label and JPEG header only.

        A missing or out-of-range label is never served as a class: it would be scored against a
        class the model cannot output and bias the true accuracy. The header size is checked
        before decoding, so a JPEG claiming a huge size is never handed to the decoder.
        """
        lacking = [f for f in _FIELDS if f not in sample]
        if lacking:
            return f"sample has no {' or '.join(lacking)} member"
        cls = sample["output.cls"]
        try:
            label = int(cls.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return f"output.cls is not an integer class index: {cls[:20]!r}"
        if not 0 <= label < self.num_classes:
            return f"output.cls {label} is outside the class range [0, {self.num_classes})"
        jpeg = sample["input.jpg"]
        if not jpeg:
            return "input.jpg is empty (0 bytes)"
        try:
            fmt, width, height = image_header(io.BytesIO(jpeg))
        except RuntimeError as exn:
            return f"corrupt JPEG ({exn})"
        if fmt != "JPEG":
            return f"input.jpg is not a JPEG (its header reads {fmt})"
        want = (3, self.image_size, self.image_size)
        if (3, height, width) != want:
            return f"image is {(3, height, width)}, expected {want} (pass image_size= to read other sizes)"
        return None

    def _decode(self, datas: list[torch.Tensor], wheres: list[str], skipped: list[str]) -> list:
        if not datas:
            return []
        try:
            decoded = list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device))
        except (RuntimeError, ValueError):  # at least one is corrupt: find which, one by one
            decoded = []
            for data, where in zip(datas, wheres):
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                except (RuntimeError, ValueError) as exn:
                    reason = f"corrupt JPEG ({_short(exn)})"
                    logger.warning("CCC shard sample %s skipped: %s", where, reason)
                    skipped.append(f"{where}: {reason}")
                    decoded.append(None)
        want = (3, self.image_size, self.image_size)
        for k, (img, where) in enumerate(zip(decoded, wheres)):
            if img is not None and tuple(img.shape) != want:
                reason = f"image is {tuple(img.shape)}, expected {want} (pass image_size= to read other sizes)"
                logger.warning("CCC shard sample %s skipped: %s", where, reason)
                skipped.append(f"{where}: {reason}")
                decoded[k] = None
        return decoded

    def _build(self, rows: list, images: list[torch.Tensor], skipped: list[str]) -> Batch:
        infos = [r[2] for r in rows]
        return Batch(
            indices=np.array([r[0].position for r in rows], dtype=np.int64),
            images=(torch.stack(images).cpu().numpy() if images
                    else np.zeros((0, 3, self.image_size, self.image_size), np.uint8)),
            labels=np.array([r[1] for r in rows], dtype=np.int64),
            noise_a=np.array([i.noise_a if i else "" for i in infos], dtype=str),
            severity_a=np.array([i.severity_a if i else np.nan for i in infos], dtype=np.float32),
            noise_b=np.array([i.noise_b if i else "" for i in infos], dtype=str),
            severity_b=np.array([i.severity_b if i else np.nan for i in infos], dtype=np.float32),
            skipped=list(skipped),
        )


def _short(exn: Exception) -> str:
    """A one-line reason: torchvision's decoder message without its source path, or the error type
    and first argument (webdataset appends stream objects to ``args``)."""
    if isinstance(exn, OSError) and exn.strerror:
        return f"{type(exn).__name__}: {exn.strerror}"
    first = str(exn.args[0]) if exn.args else ""
    if "decode_jpeg" in first:
        return first.split(", ")[-1]
    return f"{type(exn).__name__}: {first}" if first else type(exn).__name__


# --------------------------------------------------------------------------------------- source


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class CCCShardSource:
    """A CCC stream read from webdataset shards (`StreamSource`).

    Args:
        location: a local folder holding one sub-folder per stream, or an http(s) base URL
            (``OFFICIAL_CCC_URL`` for the official server).
        stream_name: e.g. ``"baseline_20_transition+speed_1000_seed_44"`` (CCC-Medium). For a URL
            only the 27 official names are accepted; a local folder may also hold streams
            generated with other speeds or seeds under the same naming scheme.
        image_size: side of the stored images (224 for CCC); other sizes are skipped as bad input.
        device: where ``decode_jpeg`` runs ("cpu", or "cuda" for nvjpeg); batches come back as numpy.
        shard_size: images per shard; default ``ceil(25000 / speed) * speed`` as in CCC, or, for a
            local folder with two or more shards, the positions ``serial_00000.tar`` spans.
        retries: times a remote shard that breaks off is re-opened (resuming where it stopped).
        num_classes: 1000 (ImageNet) unless the shards were generated from another folder.

    ``length``: for a URL, the official length (7,500,000 images for speeds 1000 and 5000,
    289 x 26,000 = 7,514,000 for speed 2000). For a local folder, what is actually there: the
    contiguous shards ``serial_00000..`` present, the last one counted sample by sample, capped at
    the official length. A partial local copy (a subset download, or a generation still running)
    is then a shorter stream rather than millions of "missing" images; a warning says so.
    """

    num_classes = CCC_NUM_CLASSES

    def __init__(
        self,
        location: str | Path,
        stream_name: str,
        image_size: int = CCC_IMAGE_SIZE,
        device: str | torch.device = "cpu",
        shard_size: int | None = None,
        retries: int = 2,
        num_classes: int = CCC_NUM_CLASSES,
    ) -> None:
        location = str(location)
        self.remote = _is_url(location)
        self.location = location.rstrip("/") if self.remote else location
        self.stream_name = stream_name
        self.name = stream_name
        self.image_size = int(image_size)
        self.device = str(device)
        self.retries = int(retries) if self.remote else 0
        self.num_classes = int(num_classes)

        if self.remote:
            _, speed, _ = parse_stream_name(stream_name, official_only=True)
            self.shard_size = int(shard_size or ccc_shard_size(speed))
            self.stream_dir = f"{self.location}/{stream_name}"
            self._length = ccc_stream_length(speed)
        else:
            self.stream_dir = str(self._find_local_stream(Path(location), stream_name))
            _, speed, _ = parse_stream_name(stream_name, official_only=False)
            self.shard_size, self._length = self._scan_local(Path(self.stream_dir), speed, shard_size)

    # -- discovery ------------------------------------------------------------------------------

    @staticmethod
    def _find_local_stream(root: Path, stream_name: str) -> Path:
        hint = (
            f"Generate it from an ImageNet validation folder with `stream-monitor generate --imagenet-val DIR "
            f"--out {root} --matrix ccc_accuracy_matrix.pickle --stream {stream_name}`, or stream the "
            f"official shards with --data {OFFICIAL_CCC_URL}"
        )
        if not root.is_dir():
            raise FileNotFoundError(f"CCC shard folder {str(root)!r} does not exist. {hint}.")
        if STREAM_NAME.match(stream_name) is None:
            parse_stream_name(stream_name)  # raises with the valid names
        candidates = [root / stream_name]
        # oripress/CCC generate.py parses --baseline as a float, so its folders read "baseline_20.0_...".
        candidates.append(root / re.sub(r"^baseline_(\d+)_", r"baseline_\1.0_", stream_name))
        for folder in candidates:
            if folder.is_dir():
                if folder != candidates[0]:
                    logger.info("CCC stream %s read from %s (oripress/CCC's float-baseline name)", stream_name, folder)
                return folder
        if stream_name not in ccc_stream_names():
            raise FileNotFoundError(unknown_name_message("CCC stream", stream_name, ccc_stream_names()))
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and STREAM_NAME.match(p.name.replace(".0_", "_", 1)))
        found = f" Streams found there: {', '.join(present)}." if present else " It holds no CCC stream folders."
        raise FileNotFoundError(
            f"No folder {stream_name!r} in the CCC shard folder {str(root)!r}.{found} {hint}."
        )

    def _scan_local(self, folder: Path, speed: int, shard_size: int | None) -> tuple[int, int]:
        """(shard size, length) of a local stream: the contiguous shards present from serial_00000.

        Unless given, the shard size is read off serial_00000.tar when a second shard exists (so
        streams generated with another shard size read correctly), else CCC's default.
        """
        count = 0
        while (folder / shard_filename(count)).is_file():
            count += 1
        if count == 0:
            raise FileNotFoundError(
                f"CCC stream folder {str(folder)!r} holds no {shard_filename(0)}; is the generation "
                "still running? Generate it with `stream-monitor generate --imagenet-val DIR --out "
                f"{folder.parent} --matrix ccc_accuracy_matrix.pickle --stream {self.stream_name}`, or "
                f"stream the official shards with --data {OFFICIAL_CCC_URL}."
            )
        size = int(shard_size) if shard_size else ccc_shard_size(speed)
        if not shard_size and count > 1:
            first = count_shard_positions(folder / shard_filename(0))
            if first > 0 and first != size:
                logger.info("CCC stream %s: %d images per shard (read off %s)", self.stream_name, first,
                            shard_filename(0))
                size = first
        last = count_shard_positions(folder / shard_filename(count - 1))
        last = size if last < 0 else min(last, size)  # a damaged last shard is reported on read
        nominal = ccc_stream_length(speed)
        length = min(nominal, (count - 1) * size + last)
        if length < nominal:
            logger.warning(
                "CCC stream %s in %s holds %d of the official %d images (%d shards); the stream is "
                "that much shorter", self.stream_name, folder, length, nominal, count,
            )
        return size, length

    # -- reading --------------------------------------------------------------------------------

    @property
    def length(self) -> int:
        return self._length

    def shard_url(self, index: int) -> str:
        return f"{self.stream_dir}/{shard_filename(index)}"

    def read(self, start: int, stop: int, batch_size: int = 64) -> Iterator[Batch]:
        """Batches covering positions [start, stop), cut every `batch_size` positions.

        Only the shards overlapping the slice are opened. A tar has no index, so a slice that
        starts inside a shard still streams (but does not decode) that shard's earlier samples.
        """
        if not 0 <= start <= stop <= self.length:
            raise ValueError(
                f"slice [{start}, {stop}) is outside the stream {self.stream_name!r} of {self.length} images"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        batcher = _Batcher(start, stop, batch_size, self.image_size, self.device, self.num_classes)
        size = self.shard_size
        for shard in range(start // size, math.ceil(stop / size)):
            lo, hi = max(start, shard * size), min(stop, (shard + 1) * size)
            for raw in self._read_shard(shard, lo, hi):
                yield from batcher.add(raw)
        yield from batcher.finish()

    def _read_shard(self, shard: int, lo: int, hi: int) -> Iterator[_Raw]:
        """Every position of [lo, hi) in order, each read or marked missing."""
        base = shard * self.shard_size
        fname = shard_filename(shard)
        url = self.shard_url(shard)
        expected = lo
        attempt = 0
        while True:
            samples, errors = iter_shard(url)
            last_key = None
            previous = -1  # within this pass: re-opening legitimately re-reads earlier positions
            for sample in samples:
                key = sample.get("__key__", "")
                match = _KEY_RE.match(key)
                if match is None or int(match.group(1)) >= self.shard_size:
                    logger.warning("CCC shard %s: ignoring sample %r (keys are sample_0..sample_%d)",
                                   fname, key, self.shard_size - 1)
                    continue
                last_key = key
                pos = base + int(match.group(1))
                if pos <= previous:
                    logger.warning("CCC shard %s: ignoring %r, a duplicate or out-of-order key", fname, key)
                    continue
                previous = pos
                if pos < expected:
                    continue
                if pos >= hi:
                    break
                for gap in range(expected, pos):
                    yield _Raw(gap, f"{fname}:sample_{gap - base}", missing="not in the shard")
                yield _Raw(pos, f"{fname}:{key}", sample=sample)
                expected = pos + 1
            samples.close()
            if expected >= hi:
                return
            reason = _short(errors[-1]) if errors else "the tar ended early"
            if attempt < self.retries:
                attempt += 1
                logger.warning(
                    "CCC shard %s broke off at position %d (%s); re-opening (attempt %d of %d)",
                    url, expected, reason, attempt, self.retries,
                )
                continue
            logger.warning(
                "CCC shard %s is truncated or unreadable (%s): last key read %s, stream position %d; "
                "positions %d..%d (%d images) are skipped; continuing with the next shard",
                url, reason, last_key or "none", expected, expected, hi - 1, hi - expected,
            )
            for p in range(expected, hi):
                yield _Raw(p, f"{fname}:sample_{p - base}", missing=f"shard truncated or unreadable ({reason})")
            return

    def __repr__(self) -> str:
        return f"CCCShardSource({self.stream_dir!r}, length={self.length}, shard_size={self.shard_size})"
