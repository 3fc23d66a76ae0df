"""A real local Ray for the integration tests, shared by the module (start-up costs seconds)."""

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20, runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    yield ray
    ray.shutdown()
