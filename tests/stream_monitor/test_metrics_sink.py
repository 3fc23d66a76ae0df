"""The Parquet sink: round trips, rolling parts, visibility to readers, errors, and crash recovery."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from stream_monitor.metrics.schema import EVENT_SCHEMA, PROBE_SCHEMA, RUN_COLUMNS, STEP_SCHEMA, TABLES
from stream_monitor.metrics.sink import INFLIGHT, MemorySink, ParquetSink, read_table, recover, scan_parts


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def step_row(step: int, **extra) -> dict:
    row = dict(step=step, start=64 * step, stop=64 * step + 64, images=63, skipped=1, wall_time=1e9 + step,
               mean_entropy=0.5 + step, update_skipped=step % 2 == 0, noise_a="fog", severity_a=2.5)
    row.update(extra)
    return row


def probe_row(step: int) -> dict:
    return dict(step=step, position=64 * step, wall_time=1e9 + step, cycle=0, cycle_step=step, probe_size=128,
                flips=step, weighted_flips=0.25 * step, est_source_method="linear", warning=False)


def event_row(step: int, kind: str = "reset") -> dict:
    return dict(step=step, wall_time=1e9 + step, kind=kind, origin="driver", message=f"{kind} at {step}")


def parts(run_dir, table: str = "steps") -> list[str]:
    return sorted(p.name for p in (run_dir / table).glob("part-*.parquet"))


def hidden(run_dir, table: str = "steps") -> list[str]:
    """Open parts: in `.inflight`, never in the table folder that readers scan."""
    assert not list((run_dir / table).glob(".*"))
    return sorted(p.name for p in (run_dir / INFLIGHT / table).glob(".part-*.tmp"))


def steps_of(run_dir) -> list[int]:
    return read_table(run_dir, "steps")["step"].to_pylist()


def test_round_trip_matches_rows_and_declared_schema(tmp_path):
    rows = {"steps": [step_row(s) for s in range(5)] + [step_row(5, noise_a=None, correct=40)],
            "probes": [probe_row(s) for s in range(3)], "events": [event_row(0, "start"), event_row(4)],
            "estimates": [{"step": s, "position": 64 * s, "cycle": 0, "cycle_step": s, "estimator": "atc-mc",
                           "feed": "served", "target": "online", "value": 50.0 + s, "extrapolated": False, "window_start": 0,
                           "window_stop": 64 * s} for s in range(2)]}
    wall = lambda: 1_700_000_000.5  # noqa: E731  (estimates have no wall_time: the sink stamps them)
    memory, sink = MemorySink(run_id=tmp_path.name, wall_clock=wall), ParquetSink(tmp_path, wall_clock=wall)
    for observer in (memory, sink):
        for row in rows["steps"]:
            observer.on_step(row)
        for row in rows["probes"]:
            observer.on_probe(row)
        for row in rows["events"]:
            observer.on_event(row)
        for row in rows["estimates"]:
            observer.on_estimate(row)
        observer.close()
    for name, schema in TABLES.items():
        table = read_table(tmp_path, name)
        assert table.schema.equals(schema, check_metadata=True)
        assert table.equals(memory.to_table(name))
        # the float values are exact in float32, so the comparison can be exact
        given = [c for c in schema.names if c not in RUN_COLUMNS]
        assert table.select(given).to_pylist() == [{col: row.get(col) for col in given} for row in rows[name]]
        assert set(table["run_id"].to_pylist()) == {tmp_path.name}
        # time is wall_time as a UTC timestamp; estimates (no wall_time) take the sink's wall clock
        walls = [row.get("wall_time", wall()) for row in rows[name]]
        assert table["time"].to_pylist() == [datetime.fromtimestamp(w, tz=timezone.utc) for w in walls]
    got = read_table(tmp_path, "steps").to_pylist()
    assert got[5]["noise_a"] is None and got[5]["correct"] == 40 and got[0]["loss"] is None
    assert got[0]["update_skipped"] is True and got[1]["update_skipped"] is False


def test_read_table_of_nothing_and_unknown_table(tmp_path):
    for name, schema in TABLES.items():
        empty = read_table(tmp_path / "absent", name)
        assert empty.num_rows == 0 and empty.schema.equals(schema, check_metadata=True)
    with pytest.raises(ValueError, match="steps, probes, events"):
        read_table(tmp_path, "step")
    with pytest.raises(ValueError, match="valid tables"):
        MemorySink().to_table("nope")


def test_rolls_by_rows(tmp_path):
    sink = ParquetSink(tmp_path, rows_per_part=3)
    for s in range(7):
        sink.on_step(step_row(s))
    assert parts(tmp_path) == ["part-00000.parquet", "part-00001.parquet"]
    sink.close()
    assert parts(tmp_path) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(tmp_path / "steps" / p).metadata.num_rows for p in parts(tmp_path)] == [3, 3, 1]
    assert steps_of(tmp_path) == list(range(7))


def test_rolls_by_time_for_every_table(tmp_path):
    clock = FakeClock()
    sink = ParquetSink(tmp_path, seconds_per_part=10.0, clock=clock)
    sink.on_event(event_row(0, "start"))
    for t in (0.0, 5.0, 9.9):
        clock.now = t
        sink.on_step(step_row(int(t)))
    assert parts(tmp_path) == [] and parts(tmp_path, "events") == []
    clock.now = 10.0
    sink.on_step(step_row(10))
    # the quiet events table is closed on time by a write to another table
    assert parts(tmp_path) == ["part-00000.parquet"] and parts(tmp_path, "events") == ["part-00000.parquet"]
    assert steps_of(tmp_path) == [0, 5, 9, 10]
    clock.now = 15.0
    sink.on_step(step_row(15))
    clock.now = 24.9
    sink.on_step(step_row(24))
    assert len(parts(tmp_path)) == 1  # the second part's clock started at its first row, t=15
    clock.now = 25.0
    sink.on_step(step_row(25))
    assert len(parts(tmp_path)) == 2 and steps_of(tmp_path) == [0, 5, 9, 10, 15, 24, 25]
    sink.close()


def test_flushes_bound_the_buffer_into_row_groups(tmp_path):
    clock = FakeClock()
    sink = ParquetSink(tmp_path, clock=clock)
    sink.flush_rows = 3
    for s in range(3):
        sink.on_step(step_row(s))
    clock.now = 0.2
    sink.on_step(step_row(3))
    clock.now = 1.2  # step 3 has waited a second
    sink.on_step(step_row(4))
    clock.now = 1.3
    sink.on_step(step_row(5))
    assert hidden(tmp_path) == [".part-00000.parquet.tmp"] and parts(tmp_path) == []
    sink.close()
    meta = pq.ParquetFile(tmp_path / "steps" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [3, 2, 1]
    assert steps_of(tmp_path) == list(range(6))


def test_parts_are_invisible_until_closed_and_readable_while_open(tmp_path):
    sink = ParquetSink(tmp_path)
    sink.flush_rows = 1  # data reaches the temp file, which must still not be seen
    for s in range(3):
        sink.on_step(step_row(s))
    assert parts(tmp_path) == [] and hidden(tmp_path) == [".part-00000.parquet.tmp"]
    assert ds.dataset(tmp_path / "steps", format="parquet").to_table().num_rows == 0
    sink.roll()
    assert parts(tmp_path) == ["part-00000.parquet"] and hidden(tmp_path) == []
    for s in range(3, 5):
        sink.on_step(step_row(s))
    assert hidden(tmp_path) == [".part-00001.parquet.tmp"]
    table = ds.dataset(tmp_path / "steps", format="parquet").to_table()
    assert sorted(table["step"].to_pylist()) == [0, 1, 2]
    assert read_table(tmp_path, "steps")["step"].to_pylist() == [0, 1, 2]
    sink.roll()
    sink.roll()  # nothing open: no empty part
    assert parts(tmp_path) == ["part-00000.parquet", "part-00001.parquet"]
    sink.close()


def test_unknown_columns_are_named(tmp_path):
    for sink in (ParquetSink(tmp_path), MemorySink()):
        with pytest.raises(ValueError, match=r"steps: unknown column\(s\) 'entropy', 'acc'; valid: step, start"):
            sink.on_step(step_row(0, entropy=1.0, acc=2.0))
        with pytest.raises(ValueError, match="events: unknown column.*'level'.*valid: step, wall_time, kind"):
            sink.on_event(dict(event_row(0), level="info"))
        sink.close()


@pytest.mark.parametrize(("table", "row", "message"), [
    ("steps", step_row(0, step_ms="fast"), r"steps\.step_ms \(float\): bad value 'fast'"),
    ("steps", step_row(0, images=1.5), r"steps\.images \(int32\): bad value 1\.5: not an integer"),
    ("steps", step_row(0, correct=True), r"steps\.correct \(int32\): bad value True"),
    ("steps", step_row(0, noise_b=3), r"steps\.noise_b \(string\): bad value 3"),
    ("steps", step_row(0, skipped=2**40), r"steps\.skipped \(int32\): bad value 1099511627776"),
    ("steps", step_row(0, update_skipped=1), r"steps\.update_skipped \(bool\): bad value 1"),
    ("steps", step_row(0, wall_time=None), r"steps\.wall_time \(double\): bad value None: .*required"),
    ("probes", {k: v for k, v in probe_row(0).items() if k != "cycle"}, r"probes\.cycle .*required"),
])
def test_bad_values_are_rejected_with_table_column_and_value(tmp_path, table, row, message):
    sink = ParquetSink(tmp_path)
    write = sink.on_step if table == "steps" else sink.on_probe
    with pytest.raises(ValueError, match=message):
        write(row)
    write(step_row(1) if table == "steps" else probe_row(1))  # the bad row left nothing behind
    sink.close()
    assert read_table(tmp_path, table)["step"].to_pylist() == [1]


def test_close_is_idempotent_and_final(tmp_path):
    for sink in (ParquetSink(tmp_path), MemorySink()):
        sink.on_step(step_row(0))
        sink.close()
        sink.close()
        for write, row in ((sink.on_step, step_row(1)), (sink.on_probe, probe_row(1)), (sink.on_event, event_row(1))):
            with pytest.raises(RuntimeError, match="closed"):
                write(row)
    sink = ParquetSink(tmp_path)
    sink.close()
    sink.roll()  # everything is already in closed parts
    assert steps_of(tmp_path) == [0]


def crashed_run(run_dir) -> ParquetSink:
    """A run that checkpointed at step 9, rolled again at step 12 without a checkpoint, then died mid-part."""
    sink = ParquetSink(run_dir)
    sink.flush_rows = 1
    for s in range(6):
        sink.on_step(step_row(s))
    sink.on_event(event_row(3))
    sink.roll()
    for s in range(6, 13):
        sink.on_step(step_row(s))
        sink.on_probe(probe_row(s))
    sink.on_event(event_row(9, "checkpoint"))
    sink.on_event(event_row(11))
    sink.roll()
    for s in range(13, 16):
        sink.on_step(step_row(s))
    sink.on_event(event_row(14))
    return sink  # never closed, as after kill -9


def test_recover_keeps_exactly_the_checkpointed_rows(tmp_path):
    abandoned = crashed_run(tmp_path)
    assert hidden(tmp_path) and hidden(tmp_path, "events")
    assert recover(tmp_path, last_step=9) == {"steps": 3, "probes": 3, "events": 1, "estimates": 0}
    for name in TABLES:
        assert hidden(tmp_path, name) == []
    assert steps_of(tmp_path) == list(range(10))
    assert read_table(tmp_path, "probes")["step"].to_pylist() == list(range(6, 10))
    assert read_table(tmp_path, "events")["step"].to_pylist() == [3, 9]
    assert read_table(tmp_path, "steps").schema.equals(STEP_SCHEMA, check_metadata=True)
    assert recover(tmp_path, last_step=9) == {"steps": 0, "probes": 0, "events": 0, "estimates": 0}
    assert recover(tmp_path, last_step=4) == {"steps": 5, "probes": 4, "events": 1, "estimates": 0}
    assert parts(tmp_path, "probes") == []  # a part left empty is deleted
    assert read_table(tmp_path, "probes").schema.equals(PROBE_SCHEMA, check_metadata=True)
    del abandoned


def test_resume_appends_after_the_highest_part(tmp_path):
    crashed_run(tmp_path)
    recover(tmp_path, last_step=9)
    before = parts(tmp_path)
    with ParquetSink(tmp_path) as sink:
        for s in range(10, 13):
            sink.on_step(step_row(s))
        sink.on_event(event_row(10, "resume"))
    after = parts(tmp_path)
    assert after[:len(before)] == before and after[len(before):] == ["part-00002.parquet"]
    assert steps_of(tmp_path) == list(range(13))
    assert read_table(tmp_path, "events")["kind"].to_pylist() == ["reset", "checkpoint", "resume"]
    assert read_table(tmp_path, "events").schema.equals(EVENT_SCHEMA, check_metadata=True)


def test_a_new_sink_never_reuses_an_unrecovered_temp_part(tmp_path):
    crashed_run(tmp_path)
    leftover = hidden(tmp_path)
    sink = ParquetSink(tmp_path)
    sink.on_step(step_row(20))
    sink.close()
    assert hidden(tmp_path) == leftover and parts(tmp_path)[-1] == "part-00003.parquet"


def test_recover_quarantines_a_corrupt_part(tmp_path, caplog):
    sink = ParquetSink(tmp_path, rows_per_part=2)
    for s in range(6):
        sink.on_step(step_row(s))
    sink.close()
    bad = tmp_path / "steps" / "part-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated: no footer
    with pytest.raises(OSError, match="part-00001.parquet: unreadable part"):
        read_table(tmp_path, "steps")
    with caplog.at_level(logging.WARNING, logger="stream_monitor.metrics.sink"):
        assert recover(tmp_path, last_step=100) == {"steps": 0, "probes": 0, "events": 0, "estimates": 0}
    assert "quarantined" in caplog.text and "part-00001.parquet" in caplog.text
    assert parts(tmp_path) == ["part-00000.parquet", "part-00002.parquet"]
    assert (tmp_path / "quarantine" / "steps-part-00001.parquet").stat().st_size == 40  # kept, not deleted
    assert steps_of(tmp_path) == [0, 1, 4, 5]


def test_scan_tells_the_steps_of_a_damaged_part(tmp_path):
    sink = ParquetSink(tmp_path, rows_per_part=3)
    for s in range(1, 10):
        sink.on_step(step_row(s))
    sink.close()
    folder = tmp_path / "steps"
    truncated = folder / "part-00001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:40])  # footer lost: steps from the neighbours
    flipped = folder / "part-00002.parquet"
    data = bytearray(flipped.read_bytes())
    data[16:48] = bytes(b ^ 0xFF for b in data[16:48])  # a data page: the footer still counts its rows
    flipped.write_bytes(bytes(data))
    found = {(p.path.name, p.rows, p.first_step, p.last_step, p.problem is None) for p in scan_parts(tmp_path)}
    assert found == {("part-00000.parquet", 3, 1, 3, True), ("part-00001.parquet", 3, 4, 6, False),
                     ("part-00002.parquet", 3, 7, 9, False)}
    truncated.unlink()
    with pytest.raises(OSError, match="part-00002.parquet: unreadable part"):  # never wrong values
        read_table(tmp_path, "steps")


def test_recover_of_an_empty_run_dir(tmp_path):
    assert recover(tmp_path / "never-started", last_step=0) == {"steps": 0, "probes": 0, "events": 0, "estimates": 0}


def test_memory_sink_keeps_rows_and_run_info(tmp_path):
    from stream_monitor.runtime.observer import RunInfo

    sink = MemorySink()
    info = RunInfo("r1", str(tmp_path), "s", "b", "m", "tent")
    sink.on_start(info)
    sink.on_step(step_row(0))
    sink.on_probe(probe_row(0))
    assert sink.info is info and sink.rows["steps"][0]["loss"] is None
    assert sink.to_table("probes").schema.equals(PROBE_SCHEMA, check_metadata=True)
    assert sink.to_table("events").num_rows == 0 and isinstance(sink.to_table("steps"), pa.Table)


def estimate_row(step: int) -> dict:
    return dict(step=step, position=64 * step, cycle=0, cycle_step=step, estimator="atc-mc", feed="served",
                target="online", value=50.0 + step, features=[0.5, 1.5])


def test_every_common_reader_opens_the_tables_while_a_part_is_open(tmp_path):
    """Closed parts plus an open one (rows written, footer not): each reader sees exactly the closed rows."""
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    run_dir = tmp_path / "run-1"
    sink = ParquetSink(run_dir, wall_clock=lambda: 1.7e9)
    sink.flush_rows = 1  # the open part has data on disk, not just in the buffer
    writes = {"steps": (sink.on_step, step_row), "probes": (sink.on_probe, probe_row),
              "events": (sink.on_event, event_row), "estimates": (sink.on_estimate, estimate_row)}
    for step in range(4):
        for write, row in writes.values():
            write(row(step))
        if step in (0, 1):
            sink.roll()  # parts 0 and 1 closed; steps 2 and 3 stay in the open part 2
    for table, schema in TABLES.items():
        folder = run_dir / table
        assert hidden(run_dir, table) == [".part-00002.parquet.tmp"]
        closed = ds.dataset(folder, format="parquet").to_table()
        assert sorted(closed["step"].to_pylist()) == [0, 1]
        assert closed.schema.equals(schema, check_metadata=True)  # units and table metadata travel with the files
        assert set(closed["run_id"].to_pylist()) == {"run-1"}
        assert closed["time"].type == pa.timestamp("us", tz="UTC")
        walls = [1e9 + s if table != "estimates" else 1.7e9 for s in closed["step"].to_pylist()]
        assert closed["time"].to_pylist() == [datetime.fromtimestamp(w, tz=timezone.utc) for w in walls]
        assert sorted(pd.read_parquet(folder)["step"]) == [0, 1]
        assert sorted(duckdb.sql(f"SELECT step FROM read_parquet('{folder}/*.parquet')").fetchall()) == [(0,), (1,)]
        for source in (folder, f"{folder}/*.parquet"):
            frame = pl.scan_parquet(source).select("step", "run_id", "time").collect()
            assert sorted(frame["step"].to_list()) == [0, 1] and set(frame["run_id"]) == {"run-1"}
    units = {f.name: f.metadata[b"unit"].decode() for f in pq.read_schema(run_dir / "steps" / "part-00000.parquet")
             if f.metadata and b"unit" in f.metadata}
    assert units["step_ms"] == "ms" and units["images"] == "images" and units["wall_time"] == "seconds"
    assert pq.read_schema(run_dir / "probes" / "part-00000.parquet").field("true_online_acc").metadata == {
        b"unit": b"percent"}
    sink.close()
    assert not list((run_dir / INFLIGHT).rglob("*.tmp"))
    assert sorted(pl.scan_parquet(run_dir / "steps").collect()["step"].to_list()) == [0, 1, 2, 3]


def test_recover_clears_the_inflight_parts_and_those_of_older_versions(tmp_path):
    sink = ParquetSink(tmp_path)
    sink.flush_rows = 1
    sink.on_step(step_row(1))
    sink.roll()
    sink.on_step(step_row(2))  # open, then the process dies
    (tmp_path / "steps" / ".part-00007.parquet.tmp").write_bytes(b"PAR1 an older version's open part")
    recover(tmp_path, last_step=1)
    assert not list((tmp_path / INFLIGHT).rglob("*.tmp"))
    assert not list((tmp_path / "steps").glob(".*")) and steps_of(tmp_path) == [1]
    with ParquetSink(tmp_path) as resumed:
        resumed.on_step(step_row(2))
    assert parts(tmp_path) == ["part-00000.parquet", "part-00001.parquet"] and steps_of(tmp_path) == [1, 2]
