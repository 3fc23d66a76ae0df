"""A run on Ray exports its metrics through the node's Ray metrics agent, as `ray_stream_monitor_*`
with the run's labels, every gauge there while the run goes on (docs/metrics.md)."""

import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.config import load_config
from stream_monitor.metrics.prometheus import FAMILIES, LABELS, MetricKind, exposed_name
from stream_monitor.runtime.runner import run
from tests.conftest import RAY_START_TIMEOUT_S, RAY_TEST_TIMEOUT_S

pytestmark = [pytest.mark.ray, pytest.mark.timeout(RAY_TEST_TIMEOUT_S)]

# long enough for Ray to export a probe's estimate (its report interval is 10 s)
RUN = ["runtime.max_images=6400", "adapter.name=rdumb", "probe.every=4", "probe.size=128", "runtime.threads=1",
       f"runtime.start_timeout_s={RAY_START_TIMEOUT_S}"]
AGENT_WAIT_S = 60  # after the run: what the driver recorded last reaches the agent within one interval


class AgentScraper:
    """An observer that reads the node agent's endpoint every 2 s in a thread while the run goes on, until
    this run's estimate is there; the samples of this run then are in `samples`."""

    def __init__(self) -> None:
        self.run_id, self.samples = None, {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._scrape, daemon=True)

    def on_start(self, info):
        self.run_id = info.run_id
        self._thread.start()

    def _scrape(self):
        import ray

        port = ray._private.worker.global_worker.node.metrics_export_port
        while not self._done.wait(2.0):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name.startswith("ray_stream_monitor_") and s.labels.get("run") == self.run_id}
            if "ray_stream_monitor_estimated_source_accuracy_ratio" in samples:
                self.samples = samples
                return

    def on_step(self, row):
        pass

    def on_probe(self, row):
        pass

    def on_event(self, row):
        pass

    def close(self):
        self._thread.join(timeout=AGENT_WAIT_S)  # a fast run may end before Ray's first export
        self._done.set()
        self._thread.join()




def test_a_ray_run_exports_through_rays_metrics_agent(ray_local, tmp_path):
    scrape = AgentScraper()
    outcome = run(load_config(None, RUN), tmp_path / "run", extra_observers=[scrape])
    assert outcome.status == "finished"
    assert scrape.samples, "no ray_stream_monitor_* series of this run at the node's metrics agent"
    for family in FAMILIES:
        name = exposed_name(family, ray=True)
        if family.optional or (family.kind == MetricKind.COUNTER and family.name != "stream_monitor_images"):
            continue  # interval bounds need an interval; Ray's counters appear with their first increment
        assert name in scrape.samples, name
        assert set(LABELS) <= set(scrape.samples[name].labels)
    assert scrape.samples["ray_stream_monitor_collapse_warnings"].value == 0
    assert 0.0 <= scrape.samples["ray_stream_monitor_estimated_source_accuracy_ratio"].value <= 1.0
    assert scrape.samples["ray_stream_monitor_images_total"].labels["adapter"] == "rdumb"
