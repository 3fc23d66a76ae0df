"""Result rows for the benchmark scripts: one CSV and one Parquet file per benchmark, every row
tagged with the git SHA it was measured at."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_sha() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def record(row: dict, stem: Path) -> None:
    """Append `row` to STEM.csv and rewrite STEM.parquet with every row so far."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    stem.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([row])
    csv_path = stem.with_suffix(".csv")
    if csv_path.exists():
        # the earlier rows' columns are read as the new row types them: CSV inference alone reads a
        # text column whose earlier values all look numeric ("107.0") as numbers, which will not concat
        types = pa_csv.ConvertOptions(column_types={f.name: f.type for f in table.schema if f.type != pa.null()})
        earlier = pa_csv.read_csv(csv_path, convert_options=types)
        table = pa.concat_tables([earlier, table], promote_options="permissive")
    pa_csv.write_csv(table, csv_path)
    pq.write_table(table, stem.with_suffix(".parquet"))
