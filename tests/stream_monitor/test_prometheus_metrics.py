"""The Prometheus metrics: families, the observer's updates, the --metrics-port endpoint (no Ray)."""

from __future__ import annotations

import math
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from stream_monitor.cli import app
from stream_monitor.config import ConfigError, MetricsConfig, load_config
from stream_monitor.metrics.prometheus import (EST_ONLINE_LOWER, FAMILIES, IMAGES, LABELS, RATE, MetricKind,
                                               MetricLabels, MetricsObserver, MetricsPortError,
                                               PrometheusClientExporter, exposed_name, metrics_observer, serve)
from stream_monitor.runtime.observer import RunInfo

runner = CliRunner()


def info(run_id: str = "run-1", has_labels: bool = True) -> RunInfo:
    return RunInfo(run_id=run_id, run_dir=f"/tmp/{run_id}", stream="embedded/baseline_20_transition+speed_1000_seed_43",
                   base="embedded glyphs (not ImageNet)", model="embedded_resnet20 c95a8913", adapter="rdumb",
                   has_labels=has_labels)


def labels(run_id: str = "run-1") -> dict[str, str]:
    return MetricLabels.of(info(run_id)).as_dict()


def observed(run_id: str = "run-1", has_labels: bool = True) -> tuple[MetricsObserver, CollectorRegistry]:
    exporter = PrometheusClientExporter()
    observer = MetricsObserver([exporter])
    observer.on_start(info(run_id, has_labels))
    return observer, exporter.registry


def value(registry: CollectorRegistry, name: str, run_id: str = "run-1") -> float | None:
    return registry.get_sample_value(name, labels(run_id))


def step(wall_time: float, images: int = 64, skipped: int = 0) -> dict:
    return {"images": images, "skipped": skipped, "wall_time": wall_time}


def test_names_carry_their_units_and_the_exporters_suffixes():
    names = [exposed_name(f) for f in FAMILIES]
    assert len(set(names)) == len(names)
    for family in FAMILIES:
        assert family.name.startswith("stream_monitor_")
        if "accuracy" in family.name:
            assert family.name.endswith("_ratio") and family.kind == MetricKind.GAUGE
    assert exposed_name(IMAGES) == "stream_monitor_images_total"
    assert exposed_name(IMAGES, ray=True) == "ray_stream_monitor_images_total"
    assert exposed_name(RATE, ray=True) == "ray_stream_monitor_images_per_second"
    assert LABELS == ("run", "adapter", "stream", "model")


def test_every_series_exists_from_the_start_with_its_labels():
    _, registry = observed()
    for family in FAMILIES:
        got = value(registry, exposed_name(family))
        if family.optional:
            assert got is None, family.name  # an interval bound only once an estimate has one
        elif family.kind == MetricKind.COUNTER or family.name.endswith(("_warnings", "_per_second")):
            assert got == 0.0, family.name
        else:
            assert math.isnan(got), family.name  # no estimate yet: a gap, not 0 % accuracy
    sample = registry.get_sample_value("stream_monitor_collapse_warnings",
                                       {"run": "run-1", "adapter": "rdumb", "model": "embedded_resnet20 c95a8913",
                                        "stream": "embedded/baseline_20_transition+speed_1000_seed_43"})
    assert sample == 0.0


def test_an_unlabelled_stream_has_no_truth_series():
    _, registry = observed(has_labels=False)
    assert value(registry, "stream_monitor_true_online_accuracy_ratio") is None
    assert math.isnan(value(registry, "stream_monitor_estimated_online_accuracy_ratio"))


def test_steps_count_images_and_give_the_rate_over_the_window():
    observer, registry = observed()
    observer.on_step(step(100.0))
    assert value(registry, "stream_monitor_images_per_second") == 0.0  # one step spans no time yet
    observer.on_step(step(101.0, images=60, skipped=4))
    observer.on_step(step(102.0))
    assert value(registry, "stream_monitor_images_total") == 64 + 60 + 64
    assert value(registry, "stream_monitor_skipped_images_total") == 4
    assert value(registry, "stream_monitor_images_per_second") == pytest.approx((60 + 64) / 2.0)
    observer.on_step(step(120.0))  # the earlier steps fall out of the 10 s window
    observer.on_step(step(120.5))
    assert value(registry, "stream_monitor_images_per_second") == pytest.approx(64 / 0.5)


def test_probe_percentages_become_ratios_and_intervals_appear_when_present():
    # the interval and support columns are probe schema 6's (est_*_lo, est_*_hi, est_*_out_of_support)
    observer, registry = observed()
    observer.on_probe({"est_online_acc": 61.5, "est_source_acc": 40.0, "true_online_acc": 58.0,
                       "true_source_acc": None})
    assert value(registry, "stream_monitor_estimated_online_accuracy_ratio") == pytest.approx(0.615)
    assert value(registry, "stream_monitor_estimated_source_accuracy_ratio") == pytest.approx(0.40)
    assert value(registry, "stream_monitor_true_online_accuracy_ratio") == pytest.approx(0.58)
    assert math.isnan(value(registry, "stream_monitor_true_source_accuracy_ratio"))
    assert value(registry, exposed_name(EST_ONLINE_LOWER)) is None
    observer.on_probe({"est_online_acc": 55.0, "est_online_lo": 50.0, "est_online_hi": 59.0,
                       "est_online_out_of_support": True, "est_source_out_of_support": False})
    assert value(registry, "stream_monitor_estimated_online_accuracy_lower_ratio") == pytest.approx(0.50)
    assert value(registry, "stream_monitor_estimated_online_accuracy_upper_ratio") == pytest.approx(0.59)
    assert value(registry, "stream_monitor_estimated_online_out_of_support") == 1.0
    assert value(registry, "stream_monitor_estimated_source_out_of_support") == 0.0
    assert value(registry, "stream_monitor_estimated_source_accuracy_lower_ratio") is None  # no interval there
    observer.on_probe({"est_online_acc": None})  # not computable on this window: no stale value
    assert math.isnan(value(registry, "stream_monitor_estimated_online_accuracy_ratio"))


def test_warnings_count_the_active_detectors_and_resets_count():
    observer, registry = observed()
    observer.on_event({"kind": "warning", "origin": "risk"})
    observer.on_event({"kind": "warning", "origin": "entropy"})
    observer.on_event({"kind": "warning", "origin": "risk"})  # the same detector again
    assert value(registry, "stream_monitor_collapse_warnings") == 2
    observer.on_event({"kind": "clear", "origin": "risk"})
    observer.on_event({"kind": "checkpoint", "origin": "driver"})
    assert value(registry, "stream_monitor_collapse_warnings") == 1
    observer.on_event({"kind": "reset", "origin": "adapter"})
    assert value(registry, "stream_monitor_resets_total") == 1


def test_runs_of_one_process_share_the_endpoint_with_their_own_labels():
    exporter = PrometheusClientExporter()
    first, second = MetricsObserver([exporter]), MetricsObserver([exporter])
    first.on_start(info("job-a"))
    second.on_start(info("job-b"))
    first.on_step(step(1.0, images=10))
    assert exporter.registry.get_sample_value("stream_monitor_images_total", labels("job-a")) == 10
    assert exporter.registry.get_sample_value("stream_monitor_images_total", labels("job-b")) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}


def test_serve_is_one_endpoint_per_address_and_a_busy_port_is_a_clear_error():
    port = free_port()
    assert serve("127.0.0.1", port) is serve("127.0.0.1", port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(MetricsPortError, match=r"cannot listen on 127.0.0.1:\d+ .*Pick a free port"):
            serve("127.0.0.1", busy.getsockname()[1])


def test_metrics_observer_follows_the_config():
    assert metrics_observer(MetricsConfig()) is None  # no port, and no Ray in this process
    port = free_port()
    observer = metrics_observer(MetricsConfig(port=port))
    assert [type(e) for e in observer.exporters] == [PrometheusClientExporter]
    with pytest.raises(ConfigError, match=r"metrics.port must be a TCP port in 1..65535"):
        load_config(None, ["metrics.port=70000"])


def test_a_local_run_serves_its_metrics_on_metrics_port(tmp_path):
    port = free_port()
    result = runner.invoke(app, ["run", "--no-ray", "--no-dashboard", "--out", str(tmp_path / "runs"),
                                 "--set", "probe.size=64", "--set", "probe.every=2", "--max-images", "192",
                                 "--metrics-port", str(port)])
    assert result.exit_code == 0, result.output
    assert f"metrics: http://127.0.0.1:{port}/metrics" in result.output
    samples = scrape(port)  # the endpoint keeps the finished run's last values
    images = samples["stream_monitor_images_total"]
    assert images.value == 192 and images.labels["adapter"] == "rdumb"
    assert set(images.labels) == set(LABELS)
    assert 0.0 <= samples["stream_monitor_estimated_source_accuracy_ratio"].value <= 1.0


def test_a_busy_metrics_port_fails_before_the_run_directory_exists(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = runner.invoke(app, ["run", "--no-ray", "--no-dashboard", "--out", str(tmp_path / "runs"),
                                     "--metrics-port", str(busy.getsockname()[1])])
    assert result.exit_code == 2
    assert "cannot listen on" in result.output and "Pick a free port" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("cluster", [["--address", "auto"], ["--submit", "http://127.0.0.1:8265"]])
def test_bench_on_a_cluster_points_metrics_to_the_clusters_agents(tmp_path, cluster):
    result = runner.invoke(app, ["bench", *cluster, "--metrics-port", "9464", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2
    assert "ray start --metrics-export-port" in result.output and "leave out --metrics-port" in result.output
    assert not (tmp_path / "bench").exists()


def test_bench_refuses_a_bad_metrics_port_before_anything_runs(tmp_path):
    result = runner.invoke(app, ["bench", "--no-ray", "--metrics-port", "70000", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2
    assert "metrics.port must be a TCP port in 1..65535" in result.output
    assert not (tmp_path / "bench").exists()
