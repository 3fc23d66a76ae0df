"""`bench` on a multi-node Ray cluster simulated on this machine, with a node removed mid-run.

Two worker nodes of one CPU each (the head takes no tasks) run three jobs. Once a job has written a
checkpoint, its node is removed and a fresh node joins: Ray retries the lost task elsewhere, the
retry resumes the run directory, and the finished run's rows equal those of an uninterrupted run.
"""

import os
import threading
import time

import pytest

from stream_monitor.bench import OUTCOME_FILE, PROGRESS_FILE, live_rows, plan, read_json, run_local, run_on_ray
from stream_monitor.metrics.sink import read_table
from tests.conftest import RAY_TEST_TIMEOUT_S

pytestmark = pytest.mark.timeout(RAY_TEST_TIMEOUT_S)

SMALL = ["runtime.max_images=2560", "probe.every=4", "probe.size=128", "runtime.threads=1",
         "runtime.checkpoint_every=4"]
STREAM = "baseline_20_transition+speed_1000_seed_43"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20,
                                                            "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def first_checkpointed_job(jobs, out, timeout=RAY_TEST_TIMEOUT_S / 2):
    """The first job seen with a checkpoint on disk, not yet finished, and the Ray node running it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in jobs:
            run_dir = out / job.name
            progress = read_json(run_dir / PROGRESS_FILE) or {}
            if ((run_dir / "checkpoint.pt").exists() and progress.get("ray_node")
                    and not (run_dir / OUTCOME_FILE).exists()):
                return job, progress
        time.sleep(0.05)
    raise AssertionError("no job wrote a checkpoint in time")


def test_a_removed_node_costs_a_retry_that_resumes_its_run_to_the_same_rows(cluster, tmp_path, tables):
    jobs = plan([STREAM], ["source", "tent", "rdumb"], overrides=SMALL)
    out = tmp_path / "bench"
    out.mkdir()
    result = {}
    driver = threading.Thread(target=lambda: result.update(rows=run_on_ray(jobs, out, num_cpus=1, max_retries=3)))
    driver.start()

    started = time.monotonic()
    victim, progress = first_checkpointed_job(jobs, out)
    print(f"checkpoint seen after {time.monotonic() - started:.1f} s")
    node = next(n for n in cluster.worker_nodes if n.node_id == progress["ray_node"])
    cluster.remove_node(node)
    cluster.add_node(**NODE)
    driver.join(timeout=RAY_TEST_TIMEOUT_S / 2)
    assert not driver.is_alive(), "the bench did not finish after the node loss"
    print(f"bench done after {time.monotonic() - started:.1f} s")

    rows = {row["adapter"]: row for row in result["rows"]}
    assert [rows[j.adapter]["status"] for j in jobs] == ["finished"] * 3
    assert all(rows[j.adapter]["images"] == 2560 for j in jobs)
    lost = rows[victim.adapter]
    assert lost["attempts"] >= 2, lost
    run_dir = out / victim.name
    assert read_json(run_dir / PROGRESS_FILE)["ray_node"] != progress["ray_node"]  # it finished elsewhere
    assert "resume" in [e["kind"] for e in read_table(run_dir, "events").to_pylist()]
    assert [r["status"] for r in live_rows(jobs, out)] == ["finished"] * 3

    # The same job, uninterrupted and in this process: the retried run lost and duplicated nothing.
    reference = tmp_path / "reference"
    reference.mkdir()
    run_local([victim], reference)
    assert tables(run_dir) == tables(reference / victim.name)
