"""Run metrics: explicit Arrow schemas and the single Parquet writer."""
