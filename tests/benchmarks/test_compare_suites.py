"""benchmarks/compare_suites.py: two releases' suite results, from suite or replay CSVs."""

import csv
import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_suites.py"
_SPEC = importlib.util.spec_from_file_location("compare_suites", _PATH)
compare = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare)


def write(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_headlines_read_a_suite_csv_and_the_replayed_rows_of_a_replay_csv(tmp_path, capsys, monkeypatch):
    suite = write(tmp_path / "estimate_suite_aaa.csv", [
        {"case": "no-shift", "adapter": "rdumb", "target": "source", "estimator": "headline", "mae": "87.0",
         "worst": "88.0", "coverage": ""},
        {"case": "no-shift", "adapter": "rdumb", "target": "source", "estimator": "frozen/cot", "mae": "3.0",
         "worst": "4.0", "coverage": ""}])
    replay = write(tmp_path / "estimate_suite_replay_bbb.csv", [
        {"case": "no-shift", "adapter": "rdumb", "target": "source", "kind": "recorded", "mae": "9.0", "worst": "9.0",
         "coverage": "0"},
        {"case": "no-shift", "adapter": "rdumb", "target": "source", "kind": "replayed", "mae": "0.6", "worst": "1.4",
         "coverage": "1"}])
    assert compare.headlines(suite)[("no-shift", "rdumb", "source")]["mae"] == "87.0"
    assert compare.headlines(replay)[("no-shift", "rdumb", "source")]["mae"] == "0.6"

    monkeypatch.setattr("sys.argv", ["compare_suites.py", str(suite), str(replay)])
    compare.main()
    out = capsys.readouterr().out
    assert "| no-shift | rdumb | 87.0 | 0.6 (in) | n/a | n/a |" in out
    assert "| rdumb | source | 1 | 87.0 | 0.6 | 88.0 | 1.4 |" in out and "mean error, aaa" in out
