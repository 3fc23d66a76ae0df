"""How a Ray run starts, without starting Ray: the start-up timeout's advice, the runtime env
beside a Ray Job's, which Ray `init_ray` joins or starts, and its `error:` lines."""

import json

import pytest
import ray

from stream_monitor.config import load_config
from stream_monitor.runtime import actors
from stream_monitor.runtime.actors import (JOB_CONFIG_ENV, RayStartError, init_ray, project_runtime_env,
                                           start_timeout_message)
from stream_monitor.runtime.workers import AdapterWorker, SidekickWorker, StreamWorker


def test_the_timeout_says_how_to_raise_it_and_leaves_gpus_out_when_none_were_asked():
    message = start_timeout_message(120, ["stream-0", "adapter"], {"adapter": 0.0, "stream-0": 0.0}, {"CPU": 2})
    assert "GPU" not in message and "--num-gpus" not in message
    with pytest.raises(RayStartError, match=r"the Ray actors stream-0, adapter did not start within "
                                            r"runtime.start_timeout_s = 120 s\. On a busy machine give them longer, "
                                            r"e\.g\. --set runtime\.start_timeout_s=600\.$"):
        raise RayStartError(message)


def test_the_timeout_names_the_gpus_asked_for():
    message = start_timeout_message(900, ["adapter"], {"adapter": 0.75, "probe": 0.25}, {"CPU": 2})
    with pytest.raises(RayStartError, match=r"start_timeout_s=3600\. They ask for GPUs \(adapter 0\.75, probe 0\.25\) "
                                            r"and the cluster has 0: if it has none free, use --num-gpus 0"):
        raise RayStartError(message)


def test_the_runtime_env_leaves_a_ray_jobs_own_variables_to_it():
    assert project_runtime_env({}) == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    assert project_runtime_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {"env_vars": {"OMP_WAIT_POLICY": "ACTIVE"}}
    job = {"runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "ACTIVE", "X": "1"}, "working_dir": "."}}
    assert project_runtime_env({JOB_CONFIG_ENV: json.dumps(job)}) == {}


@pytest.fixture
def calls(monkeypatch):
    """ray.init recorded instead of run; RAY_ADDRESS unset unless a test sets it."""
    seen = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs))
    return seen


def test_a_local_ray_binds_to_loopback_with_no_dashboard(calls):
    assert init_ray(load_config()) is True
    (kwargs,) = calls
    assert kwargs["address"] == "local" and kwargs["include_dashboard"] is False
    assert "_node_ip_address" not in kwargs  # Ray would turn a loopback one into the outward IP


def test_another_ray_host_is_the_nodes_address(calls):
    init_ray(load_config(None, ["runtime.ray_host=10.1.2.3"]))
    assert calls[0]["_node_ip_address"] == "10.1.2.3"


def test_an_unspecified_ray_host_is_a_clear_error(calls):
    with pytest.raises(RayStartError, match=r"could not start or join a local Ray bound to 0\.0\.0\.0 "
                                            r"\(runtime\.ray_host\): ValueError: runtime\.ray_host is an address"):
        init_ray(load_config(None, ["runtime.ray_host=0.0.0.0"]))


def test_ray_address_is_joined_as_inside_a_ray_job(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert init_ray(load_config()) is True  # connected here, so disconnected at the end
    (kwargs,) = calls
    assert kwargs["address"] == "127.0.0.1:6379" and "num_cpus" not in kwargs


def test_an_auth_failure_is_an_error_line(monkeypatch):
    def refuse(**kwargs):
        raise ray.exceptions.AuthenticationError("Token mismatch")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(RayStartError, match=r"the Ray cluster at 10\.0\.0\.1:6379 \(runtime\.address\) refused this "
                                            r"driver's token: Token mismatch"):
        init_ray(load_config(None, ["runtime.address=10.0.0.1:6379"]))


def test_an_unreachable_cluster_says_what_to_do(monkeypatch):
    def unreachable(**kwargs):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", unreachable)
    with pytest.raises(RayStartError, match=r"could not reach the Ray cluster at auto \(runtime\.address\): Could not "
                                            r"find any running Ray instance\. To fix: start it \(`ray start --head`\)"):
        init_ray(load_config(None, ["runtime.address=auto"]))


def test_a_failed_init_is_kept_for_ping_and_repr_stays_safe():
    shell = actors.StreamShell(load_config(None, ["source.kind=imagefolder", "source.data=/nonexistent/folder"]))
    assert repr(shell) == "StreamWorker(not started)"
    with pytest.raises(FileNotFoundError, match="Image folder '/nonexistent/folder' does not exist"):
        shell.ping()
    for cls, name in ((AdapterWorker, "AdapterWorker"), (SidekickWorker, "SidekickWorker"),
                      (StreamWorker, "StreamWorker")):
        assert repr(cls.__new__(cls)) == f"{name}(not started)"
