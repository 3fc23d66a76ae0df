"""A real local Ray for the integration tests, shared by the module (start-up costs seconds)."""

import os

import pytest
import ray  # a hard dependency: a broken install fails these tests rather than skipping them

from stream_monitor.metrics.schema import RUN_COLUMNS


@pytest.fixture(scope="module")
def ray_local():
    """A Ray of the module's own, on loopback and ports Ray picks: never another Ray of this machine
    (plain ray.init() joins one), never a fixed port another Ray may hold."""
    from stream_monitor.runtime.actors import start_local_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    start_local_ray("127.0.0.1", num_cpus=2, num_gpus=0, log_to_driver=False, object_store_memory=200 * 2**20,
                    runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    yield ray
    ray.shutdown()


# when a row was written and by which run directory: never equal between two runs of one stream
TIMING = {"wall_time", "step_ms", "probe_ms", *RUN_COLUMNS}


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
