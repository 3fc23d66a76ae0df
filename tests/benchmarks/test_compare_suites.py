"""benchmarks/compare_suites.py: two releases' suite results, from suite or replay CSVs."""

import csv
import importlib.util
import sys
from pathlib import Path

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_BENCHMARKS))  # compare_suites imports suite_summary as its neighbour

import suite_summary  # noqa: E402

_PATH = _BENCHMARKS / "compare_suites.py"
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


def test_the_goals_table_says_when_a_release_has_no_interval(tmp_path):
    rows = [{"case": c, "adapter": "rdumb", "target": "source", "estimator": "headline", "mae": m, "worst": w,
             "coverage": "", "windows": "7"} for c, m, w in (("no-shift", "87.0", "88.0"), ("ccc", "2.0", "3.0"))]
    line = next(r for r in suite_summary.table(suite_summary.headline_rows(write(tmp_path / "s.csv", rows), "replayed"))
                if r.startswith("| rdumb | source"))
    assert line == "| rdumb | source | 2 | 44.5 | 88.0 | 1/2 | 1/2 | 0/2 | no interval |"
