"""The run on a real local Ray: same rows as in-process; a dead adapter actor leaves a resumable run."""

import pytest

from stream_monitor.config import load_config
from stream_monitor.metrics.sink import read_table
from stream_monitor.runtime.runner import run
from tests.conftest import RAY_START_TIMEOUT_S, RAY_TEST_TIMEOUT_S

pytestmark = pytest.mark.timeout(RAY_TEST_TIMEOUT_S)

SMALL = ["runtime.max_images=1920", "adapter.name=rdumb", "adapter.reset_every=12", "probe.every=4", "probe.size=128",
         "runtime.checkpoint_every=8", "runtime.threads=1", "source.chunk_batches=2", "source.num_actors=2",
         # the Duos sidekick actor and AETTA's dropout passes ride along: the same rows through Ray too
         "estimation.duo_model=embedded-small", "estimation.aetta_every=4", "estimation.aetta_forwards=2",
         f"runtime.start_timeout_s={RAY_START_TIMEOUT_S}"]
@pytest.fixture(scope="module")
def in_process(tmp_path_factory, tables):
    run_dir = tmp_path_factory.mktemp("local") / "run"
    outcome = run(load_config(None, [*SMALL, "runtime.use_ray=false"]), run_dir)
    assert outcome.status == "finished"
    return tables(run_dir)


def test_ray_run_writes_the_rows_of_the_in_process_run(ray_local, tmp_path, in_process, tables):
    outcome = run(load_config(None, SMALL), tmp_path / "run")
    assert outcome.status == "finished" and outcome.images == 1920
    got = tables(tmp_path / "run")
    assert len(got["steps"]) == 30 and len(got["probes"]) > 0
    assert got == in_process  # two source actors merged in stream order, the same adaptation bit for bit
    duo = [e for e in read_table(tmp_path / "run", "estimates").to_pylist()
           if e["estimator"] == "duo-agreement" and e["value"] is not None]
    assert duo and any(s["aetta_acc"] is not None for s in got["steps"])


class KillAdapterAt:
    """An observer that kills the adapter actor once the driver has seen step `step`."""

    def __init__(self, step: int) -> None:
        self.step, self.run_id = step, None

    def on_start(self, info):
        self.run_id = info.run_id

    def on_step(self, row):
        if row["step"] == self.step:
            import ray

            ray.kill(ray.get_actor(f"{self.run_id}/adapter"))

    def on_probe(self, row):
        pass

    def on_event(self, row):
        pass

    def close(self):
        pass


def test_a_dead_adapter_actor_leaves_a_run_that_resumes_to_the_same_rows(ray_local, tmp_path, in_process, tables):
    run_dir = tmp_path / "run"
    outcome = run(load_config(None, SMALL), run_dir, extra_observers=[KillAdapterAt(13)])
    assert outcome.status == "failed" and "adapter failed" in outcome.error
    events = read_table(run_dir, "events").to_pylist()
    assert events[-1]["kind"] == "error" and "--resume" in events[-1]["message"]
    resumed = run(load_config(run_dir / "config.yaml"), run_dir, resume=True)
    assert resumed.status == "finished"
    assert tables(run_dir) == in_process
