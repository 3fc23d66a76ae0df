"""The shipped Prometheus scrape config and Grafana dashboard (configs/prometheus, configs/grafana) ask only
for series and labels this version exports, under the name each exporter gives them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream_monitor.metrics.prometheus import FAMILIES, LABELS, RAY_PREFIX, exposed_name

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DASHBOARD = json.loads((CONFIGS / "grafana" / "stream_monitor.json").read_text())
VARIABLES = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
EXPORTERS = [option["value"] for option in VARIABLES["exporter"]["options"]]


def queries() -> list[str]:
    """Every PromQL text of the dashboard: panel targets and the variables' label_values."""
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    return exprs + [v["definition"] for v in VARIABLES.values() if v["type"] == "query"]


def expand(expr: str, exporter: str) -> str:
    return expr.replace("${exporter}", exporter)


def metric_names(expr: str) -> set[str]:
    """Series names: an identifier before a `{` selector, or label_values' first argument."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) | \
        set(re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,", expr))


def label_names(expr: str) -> set[str]:
    """Labels in selectors, in `by (...)` groupings and as label_values' second argument."""
    names = set()
    for selector in re.findall(r"\{([^}]*)\}", expr):
        names |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector))
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        names |= {name.strip() for name in grouping.split(",") if name.strip()}
    names |= set(re.findall(r"label_values\([^,]+,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)", expr))
    return names


def test_the_dashboard_offers_both_exporters():
    assert sorted(EXPORTERS) == ["ray_stream_monitor", "stream_monitor"]
    assert VARIABLES["datasource"]["query"] == "prometheus"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_every_series_the_dashboard_queries_is_exported_under_that_name(exporter):
    ray = exporter.startswith(RAY_PREFIX)
    exported = {exposed_name(family, ray=ray) for family in FAMILIES}
    used = set()
    for expr in queries():
        text = expand(expr, exporter)
        assert "$exporter" not in text and "${" not in text.replace("${__", ""), text
        names = metric_names(text)
        assert names, f"no series in {text!r}"
        assert names <= exported, f"{sorted(names - exported)} in {text!r}; exported: {sorted(exported)}"
        used |= names
    # The headline numbers are all on the dashboard.
    for name in ("images_total", "images_per_second", "collapse_warnings", "estimated_online_accuracy_ratio",
                 "estimated_source_accuracy_ratio"):
        assert f"{exporter}_{name}" in used


def test_every_label_the_dashboard_uses_exists():
    for expr in queries():
        assert label_names(expr) <= set(LABELS), expr
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"])) <= set(LABELS)
    for name in LABELS:
        assert f"label_values(${{exporter}}_images_total, {name})" == VARIABLES[name]["definition"]


def test_accuracy_panels_are_ratios():
    for panel in DASHBOARD["panels"]:
        if any("accuracy" in t["expr"] for t in panel["targets"]):
            assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
            assert (panel["fieldConfig"]["defaults"]["min"], panel["fieldConfig"]["defaults"]["max"]) == (0, 1)


def test_the_scrape_config_reads_a_run_endpoint_and_rays_service_discovery():
    config = yaml.safe_load((CONFIGS / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["stream-monitor"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    # the file Ray's head writes (ray/_private/metrics_agent.py: PrometheusServiceDiscoveryWriter)
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus' checker) is not installed")
def test_promtool_accepts_the_scrape_config():
    result = subprocess.run(["promtool", "check", "config", str(CONFIGS / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_parsers_here_find_what_they_should():
    expr = 'sum by (run, adapter) (rate(x_total{run=~"$run", model!="m"}[1m]))'
    assert metric_names(expr) == {"x_total"}
    assert label_names(expr) == {"run", "adapter", "model"}
