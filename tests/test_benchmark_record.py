"""benchmarks/_record.py: rows accumulate in CSV and Parquet, new columns are kept."""

import importlib.util
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

_SPEC = importlib.util.spec_from_file_location(
    "_record", Path(__file__).resolve().parents[1] / "benchmarks" / "_record.py")
_record = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_record)


def test_rows_accumulate_in_csv_and_parquet(tmp_path):
    stem = tmp_path / "out" / "bench"
    _record.record({"git_sha": "abc", "img_s": 10.5}, stem)
    _record.record({"git_sha": "def", "img_s": 12.0, "device": "cpu"}, stem)
    parquet = pq.read_table(stem.with_suffix(".parquet")).to_pylist()
    assert parquet == [{"git_sha": "abc", "img_s": 10.5, "device": None},
                       {"git_sha": "def", "img_s": 12.0, "device": "cpu"}]
    assert pa_csv.read_csv(stem.with_suffix(".csv")).num_rows == 2


def test_a_text_column_whose_earlier_values_look_numeric_still_accumulates(tmp_path):
    stem = tmp_path / "bench"
    _record.record({"variant": "default", "runs": "107.0"}, stem)  # one run: reads back as a number
    _record.record({"variant": "default", "runs": "98.1;107.0"}, stem)
    assert [r["runs"] for r in pq.read_table(stem.with_suffix(".parquet")).to_pylist()] == ["107.0", "98.1;107.0"]
