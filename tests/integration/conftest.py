"""A real local Ray for the integration tests, shared by the module (start-up costs seconds)."""

import os

import pytest
import ray  # a hard dependency: a broken install fails these tests rather than skipping them


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20, runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    yield ray
    ray.shutdown()


TIMING = {"wall_time", "step_ms", "probe_ms"}


@pytest.fixture(scope="session")
def tables():
    """A run directory's step and probe rows without the timing columns: what must match bitwise."""
    from stream_monitor.metrics.sink import read_table

    def read(run_dir):
        out = {}
        for name in ("steps", "probes"):
            table = read_table(run_dir, name)
            out[name] = table.drop_columns([c for c in table.column_names if c in TIMING]).to_pylist()
        return out

    return read
