"""The single writer of a run's Parquet tables, and the resume-time clean-up of what a crash left.

Layout: `run_dir/<table>/part-00000.parquet, part-00001.parquet, ...`. A part is written in
`run_dir/.inflight/<table>/.part-00003.parquet.tmp` and renamed into the table folder only once its footer is
written, so a table folder holds complete files only, even while the run is going: readers that take every file of
a folder (polars, pandas, pyarrow.dataset) or a glob (duckdb) all open it. `.inflight` is inside the run directory,
so the rename stays on one filesystem and is atomic.

Crash contract with the run loop: the loop calls `ParquetSink.roll()` just before it writes a checkpoint, so every
row up to the checkpoint sits in closed parts. On resume, `recover(run_dir, last_step)` drops the unclosed parts and
the rows past the checkpoint, and the new sink appends parts numbered after the existing ones.

Parts carry page checksums and are read with verification, so flipped bytes in a part are an
unreadable part (quarantined by `recover`, which says which steps it held) instead of wrong values.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..runtime.observer import RunInfo
from .schema import RUN_COLUMNS, SCHEMA_VERSION, TABLES

logger = logging.getLogger(__name__)

_PART = re.compile(r"^part-(\d+)\.parquet$")
_TMP_PART = re.compile(r"^\.part-(\d+)\.parquet\.tmp$")
QUARANTINE = "quarantine"
#: Where open parts are written; outside the table folders, which readers scan whole.
INFLIGHT = ".inflight"
#: Tables with at most one row per step: a lost part's steps lie strictly between its neighbours'.
_ONE_ROW_PER_STEP = ("steps", "probes")


def _part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def _tmp_name(number: int) -> str:
    return f".{_part_name(number)}.tmp"


def _schema(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; valid tables: {', '.join(TABLES)}") from None


def _closed_parts(folder: Path) -> list[tuple[int, Path]]:
    """Closed parts of a table folder, in part order (numeric, so part-100000 sorts after part-99999)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PART.match(p.name))]
    return sorted(found)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically put a finished file in place; fsync first because a checkpoint will rely on it surviving."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_value(table: str, field: pa.Field, value: Any) -> None:
    problem = None
    if value is None:
        if not field.nullable:
            problem = "the column is required (non-nullable)"
    elif isinstance(value, bool) and (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
        problem = "a bool is not a number here"
    elif pa.types.is_integer(field.type) and not isinstance(value, numbers.Integral):
        problem = "not an integer"  # pyarrow would silently truncate 1.5 to 1
    else:
        try:
            pa.array([value], type=field.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
            problem = str(e)
    if problem:
        raise ValueError(f"{table}.{field.name} ({field.type}): bad value {_describe(value)}: {problem}")


def check_row(table: str, row: dict[str, Any]) -> None:
    """Raise ValueError if `row` has columns `table` lacks, or values its schema cannot hold; missing keys = null."""
    schema = _schema(table)
    extra = [key for key in row if schema.get_field_index(key) < 0]
    if extra:
        raise ValueError(f"{table}: unknown column(s) {', '.join(map(repr, extra))}; valid: {', '.join(schema.names)}")
    for field in schema:
        _check_value(table, field, row.get(field.name))


def _utc(unix_seconds: float) -> datetime:
    return datetime.fromtimestamp(unix_seconds, tz=timezone.utc)


class _Observer:
    """RunObserver plumbing shared by the sinks: routing, row checks, the run columns and the closed state.

    `run_id` names the run until `on_start` brings its RunInfo; `wall_clock` stamps `time` on rows without a
    `wall_time` (estimates).
    """

    def __init__(self, run_id: str, wall_clock: Callable[[], float] = time.time) -> None:
        self.info: RunInfo | None = None
        self._closed = False
        self._run_id, self._wall_clock = run_id, wall_clock

    def on_start(self, info: RunInfo) -> None:
        self.info = info

    def on_step(self, row: dict[str, Any]) -> None:
        self._accept("steps", row)

    def on_probe(self, row: dict[str, Any]) -> None:
        self._accept("probes", row)

    def on_event(self, row: dict[str, Any]) -> None:
        self._accept("events", row)

    def on_estimate(self, row: dict[str, Any]) -> None:
        self._accept("estimates", row)

    def _accept(self, table: str, row: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; cannot write to {table}")
        row = self._with_run_columns(row)
        # Checked per row so a bad value is blamed on the call that made it, not on a later flush.
        check_row(table, row)
        self._write(table, row)

    def _with_run_columns(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` with `run_id` and `time` filled where null, so the loop's rows need not carry them."""
        if all(row.get(name) is not None for name in RUN_COLUMNS):
            return row
        row = dict(row)  # the same dict goes to the run's other observers
        if row.get("run_id") is None:
            row["run_id"] = self.info.run_id if self.info is not None else self._run_id
        if row.get("time") is None:
            wall = row.get("wall_time")
            # A bad wall_time is left for check_row to name; the row must not fail here first.
            usable = isinstance(wall, numbers.Real) and not isinstance(wall, bool) and math.isfinite(wall)
            row["time"] = _utc(wall if usable else self._wall_clock())
        return row

    def _write(self, table: str, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True


class _TableWriter:
    """One table's buffer and open part."""

    def __init__(self, name: str, folder: Path, inflight: Path, clock: Callable[[], float]) -> None:
        self.name, self.folder, self.inflight, self.clock = name, folder, inflight, clock
        self.schema = TABLES[name]
        self.cols: dict[str, list[Any]] = {n: [] for n in self.schema.names}
        self.buffered = 0
        self.buffer_since = 0.0
        self.writer: pq.ParquetWriter | None = None
        self.part_rows = 0       # rows of the open part, buffered ones included
        self.part_since = 0.0    # clock time of the open part's first row
        folder.mkdir(parents=True, exist_ok=True)
        inflight.mkdir(parents=True, exist_ok=True)
        # Skip past leftover temp parts as well (and those of versions that wrote them in the table folder), so an
        # un-recovered crash can never be overwritten.
        used = [int(m.group(1)) for p in [*folder.iterdir(), *inflight.iterdir()]
                if (m := _PART.match(p.name) or _TMP_PART.match(p.name))]
        self.next_part = max(used, default=-1) + 1
        self.part = -1

    def append(self, row: dict[str, Any]) -> None:
        now = self.clock()
        if self.part_rows == 0:
            self.part_since = now
        if self.buffered == 0:
            self.buffer_since = now
        for name, values in self.cols.items():
            values.append(row.get(name))
        self.buffered += 1
        self.part_rows += 1

    def due(self, rows_per_part: int, seconds_per_part: float, flush_rows: int, flush_seconds: float) -> None:
        """Flush or close the open part if a size or age limit is reached."""
        now = self.clock()
        if self.part_rows and (self.part_rows >= rows_per_part or now - self.part_since >= seconds_per_part):
            self.close_part()
        elif self.buffered and (self.buffered >= flush_rows or now - self.buffer_since >= flush_seconds):
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        try:
            batch = pa.RecordBatch.from_pydict(self.cols, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
            # Rows are checked on arrival, so this means a check is missing; say where the batch was going.
            raise ValueError(f"{self.name}: cannot build a batch of {self.buffered} rows: {e}") from e
        if self.writer is None:
            self.part, self.next_part = self.next_part, self.next_part + 1
            self.writer = pq.ParquetWriter(self.inflight / _tmp_name(self.part), self.schema, write_page_checksum=True)
        self.writer.write_batch(batch)
        for values in self.cols.values():
            values.clear()
        self.buffered = 0

    def close_part(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            _publish(self.inflight / _tmp_name(self.part), self.folder / _part_name(self.part))
        self.part_rows = 0


class ParquetSink(_Observer):
    """RunObserver that writes `steps`, `probes` and `events` as rolling Parquet parts under `run_dir`.

    A part closes at `rows_per_part` rows, `seconds_per_part` after its first row, on `roll()` and on `close()`.
    Buffered rows go to the open part every `flush_rows` rows or `flush_seconds`, so memory stays bounded.
    Limits are checked for every table on every write: a quiet table's part still closes on time.
    """

    flush_rows = 1_000
    flush_seconds = 1.0

    def __init__(self, run_dir: str | os.PathLike[str], rows_per_part: int = 10_000, seconds_per_part: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(Path(run_dir).name, wall_clock)  # a run's id is its directory's name
        if rows_per_part < 1 or seconds_per_part <= 0:
            raise ValueError(f"rows_per_part must be >= 1 and seconds_per_part > 0, got {rows_per_part}, "
                             f"{seconds_per_part}")
        self.run_dir = Path(run_dir)
        self.rows_per_part, self.seconds_per_part = rows_per_part, seconds_per_part
        self._tables = {name: _TableWriter(name, self.run_dir / name, self.run_dir / INFLIGHT / name, clock)
                        for name in TABLES}

    def _write(self, table: str, row: dict[str, Any]) -> None:
        self._tables[table].append(row)
        for writer in self._tables.values():
            writer.due(self.rows_per_part, self.seconds_per_part, self.flush_rows, self.flush_seconds)

    def roll(self) -> None:
        """Close every open part now, so all rows so far are in closed parts (call before a checkpoint).

        A no-op after close(), which already closed everything.
        """
        if self._closed:
            return
        for writer in self._tables.values():
            writer.close_part()

    def close(self) -> None:
        """Close all parts; idempotent. Every table is attempted even if one fails; the first error is raised."""
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        for writer in self._tables.values():
            try:
                writer.close_part()
            except BaseException as e:  # keep closing the others; they may hold the rows that matter
                first = first or e
        if first is not None:
            raise first

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemorySink(_Observer):
    """RunObserver that keeps rows in lists per table, with every column present (for tests)."""

    def __init__(self, run_id: str = "memory", wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(run_id, wall_clock)
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}

    def _write(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append({name: row.get(name) for name in TABLES[table].names})

    def to_table(self, name: str) -> pa.Table:
        """The rows of table `name` so far, with its explicit schema."""
        schema = _schema(name)
        return pa.Table.from_pylist(self.rows[name], schema=schema)


def read_table(run_dir: str | os.PathLike[str], table: str) -> pa.Table:
    """All closed parts of `table` concatenated in part order; an empty table with the schema when there are none."""
    schema = _schema(table)
    parts = []
    for _, path in _closed_parts(Path(run_dir) / table):
        try:
            part = _read_part(path)
        except (pa.ArrowException, OSError) as e:
            raise OSError(f"{path}: unreadable part ({e}); recover() quarantines such parts") from e
        parts.append(_checked(part, schema, path))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _checked(part: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """`part` if it has the columns of this version's schema, else a clear error (a run directory
    of another version is read by that version: `rundir.FORMAT`)."""
    if part.schema.names != schema.names:
        missing = [n for n in schema.names if n not in part.schema.names]
        extra = [n for n in part.schema.names if n not in schema.names]
        raise ValueError(f"{path} was written by another version of stream-monitor (columns missing: "
                         f"{', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'}); this version "
                         f"writes schema version {SCHEMA_VERSION}. Read the run with the version that wrote it.")
    # an earlier schema version of the same columns may differ in nullability (8 made the flips nullable)
    return part if part.schema.equals(schema) else part.cast(schema)


def _read_part(path: Path) -> pa.Table:
    return pq.ParquetFile(path, page_checksum_verification=True).read()


def quarantine(run_dir: Path, path: Path, name: str, reason: str) -> Path:
    """Move a damaged file to `run_dir/quarantine/name` (kept for inspection, never deleted); the new path."""
    folder = Path(run_dir) / QUARANTINE
    folder.mkdir(exist_ok=True)
    target = folder / name
    n = 1
    while target.exists():  # a second resume may quarantine a file of the same name again
        target = folder / f"{name}.{n}"
        n += 1
    shutil.move(path, target)
    logger.warning("quarantined %s -> %s: %s", path, target, reason)
    return target


@dataclass
class PartInfo:
    """One closed part: its rows and step range, or why it cannot be read.

    For an unreadable part, `rows` and the step range come from its footer when that survived, else
    the steps from its neighbours (`last_step` None: it was the table's last part) and `rows` is None.
    """

    table: str
    path: Path
    rows: int | None
    first_step: int | None
    last_step: int | None
    problem: str | None = None

    @property
    def number(self) -> int:
        return int(_PART.match(self.path.name).group(1))

    def steps(self) -> str:
        last = "the end" if self.last_step is None else f"{self.last_step:,}"
        return f"steps {self.first_step:,} to {last}"


def scan_parts(run_dir: str | os.PathLike[str]) -> list[PartInfo]:
    """Every closed part of every table, read once with checksums verified; nothing is changed."""
    found: list[PartInfo] = []
    for table, schema in TABLES.items():
        infos = [_inspect(table, schema, path) for _, path in _closed_parts(Path(run_dir) / table)]
        for k, info in enumerate(infos):
            if info.problem is None or info.first_step is not None:
                continue
            # Rows are written in step order, so a lost part's steps lie between its readable neighbours'.
            gap = 1 if table in _ONE_ROW_PER_STEP else 0
            before = [p.last_step for p in infos[:k] if p.last_step is not None]
            after = [p.first_step for p in infos[k + 1:] if p.first_step is not None]
            info.first_step = (before[-1] if before else 0) + gap  # steps count from 1, events from 0
            info.last_step = after[0] - gap if after else None
            if table == "steps" and info.last_step is not None:  # one row per adapter step
                info.rows = info.last_step - info.first_step + 1
        found += infos
    return found


def _inspect(table: str, schema: pa.Schema, path: Path) -> PartInfo:
    try:
        data = _read_part(path)
    except (pa.ArrowException, OSError) as e:
        rows, first, last = _footer(path)
        return PartInfo(table, path, rows, first, last, f"unreadable ({' '.join(str(e).split())})")
    if not data.schema.equals(schema):
        return PartInfo(table, path, data.num_rows, None, None, f"schema differs from the {table} schema")
    bounds = pc.min_max(data["step"])
    return PartInfo(table, path, data.num_rows, bounds["min"].as_py(), bounds["max"].as_py())


def _footer(path: Path) -> tuple[int | None, int | None, int | None]:
    """Rows and step range from a damaged part's footer, when the footer itself is intact."""
    try:
        meta = pq.ParquetFile(path).metadata
        column = meta.schema.names.index("step")
        stats = [meta.row_group(g).column(column).statistics for g in range(meta.num_row_groups)]
        if meta.num_row_groups == 0 or not all(s is not None and s.has_min_max for s in stats):
            return meta.num_rows, None, None
        return meta.num_rows, min(s.min for s in stats), max(s.max for s in stats)
    except (pa.ArrowException, OSError, ValueError):
        return None, None, None


def recover(run_dir: str | os.PathLike[str], last_step: int, parts: list[PartInfo] | None = None) -> dict[str, int]:
    """Make the tables agree with a checkpoint at `last_step`, before a resumed run opens its sink.

    Deletes leftover temp parts in `.inflight` and, from older versions, in the table folders (their rows all
    follow the last checkpoint, since the loop rolls before each one), removes rows with `step > last_step` from
    closed parts (atomic rewrite; a part left empty is deleted), and moves parts that cannot be read to
    `run_dir/quarantine/` with a logged warning. `parts`: a `scan_parts` of the
    directory made just before (the runner's, which chose the checkpoint from it), else one is made here. Returns
    rows removed per table; rows of deleted temp parts are not counted (an unclosed part has no footer to count
    them from).
    """
    root = Path(run_dir)
    parts = scan_parts(root) if parts is None else parts
    removed: dict[str, int] = {table: 0 for table in TABLES}
    for table in TABLES:
        for folder in (root / table, root / INFLIGHT / table):
            if folder.is_dir():
                for path in folder.iterdir():
                    if _TMP_PART.match(path.name):
                        path.unlink()
    for part in parts:
        if part.problem is not None:
            quarantine(root, part.path, f"{part.table}-{part.path.name}", part.problem)
            continue
        if part.last_step is None or part.last_step <= last_step:
            continue
        if part.first_step > last_step:
            removed[part.table] += part.rows
            part.path.unlink()
            continue
        data = _read_part(part.path)
        keep = pc.less_equal(data["step"], last_step)
        removed[part.table] += data.num_rows - (pc.sum(keep).as_py() or 0)
        # Same temp name and place as the sink's: a crash mid-rewrite leaves a .tmp the next recover() deletes.
        tmp = root / INFLIGHT / part.table / _tmp_name(part.number)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data.filter(keep), tmp, write_page_checksum=True)
        _publish(tmp, part.path)
    return removed
