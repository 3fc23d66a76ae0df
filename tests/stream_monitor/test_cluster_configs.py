"""The example cluster configs in configs/cluster: Ray's own schema accepts the `ray up` file, and
the bench the KubeRay RayJob runs parses with this version's `bench` options (no cluster started)."""

import shlex
from pathlib import Path

import typer
import yaml
from ray.autoscaler._private import util

from stream_monitor.bench import plan
from stream_monitor.cli import app

CLUSTER = Path(__file__).resolve().parents[2] / "configs" / "cluster"


def test_the_ray_up_config_passes_the_cluster_launchers_schema():
    config = yaml.safe_load((CLUSTER / "ray_up_aws.yaml").read_text())
    util.validate_config(util.prepare_config(config))
    workers = config["available_node_types"]["gpu_worker"]["resources"]
    assert workers["GPU"] == 1 and config["available_node_types"]["head"]["resources"]["CPU"] == 0


def test_the_rayjob_runs_a_bench_this_cli_accepts():
    job = yaml.safe_load((CLUSTER / "kuberay_rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["stream-monitor", "bench"]
    bench = typer.main.get_command(app).commands["bench"]
    params = bench.make_context("bench", argv[2:]).params  # raises on an option this version lacks
    assert params["address"] == "auto" and params["gpus_per_run"] == 1
    jobs = plan(params["streams"].split(","), params["adapters"].split(","))
    assert len(jobs) == 27 * 3  # the 27 CCC streams x 3 methods
    # Every pod mounts the shared volume the run directories live on.
    spec = job["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        mounts = {m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]}
        assert str(params["out"]) in mounts
