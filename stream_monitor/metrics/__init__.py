"""Run metrics: explicit Arrow schemas, the single Parquet writer, and the live Prometheus export."""
