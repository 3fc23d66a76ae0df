"""The Dockerfile and the cluster examples that run its image agree on Ray's version (a Ray cluster
refuses a driver or node of another version) and on the project's torch requirements."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CLUSTER = ROOT / "configs" / "cluster"


def build_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"no ARG {name}=... in the Dockerfile"
    return match.group(1)


RAY_VERSION = build_arg("RAY_VERSION")


def images(node: object) -> list[str]:
    """Every `image:` value in a parsed YAML document."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + \
            [i for v in node.values() for i in images(v)]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def test_the_dockerfile_pins_ray_and_installs_the_project():
    assert re.fullmatch(r"\d+\.\d+\.\d+", RAY_VERSION)
    assert '"ray[default]==${RAY_VERSION}"' in DOCKERFILE
    assert re.search(r"^FROM python:3\.11", DOCKERFILE, re.MULTILINE)  # setup.cfg's python_requires
    assert "pip install /opt/stream-monitor" in DOCKERFILE and "COPY" in DOCKERFILE
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE  # the CPU variant is documented


def test_the_torch_requirements_are_setup_cfgs():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    required = {line.split(">=")[0].split("[")[0]: line for line in setup["options"]["install_requires"].split()}
    for package in ("torch", "torchvision"):
        assert f'"{required[package]}"' in DOCKERFILE, f"{package}: setup.cfg says {required[package]}"


def test_the_kuberay_job_names_the_same_ray_and_this_image():
    job = yaml.safe_load((CLUSTER / "kuberay_rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    tags = images(job)
    assert tags and all(tag.endswith(f":ray{RAY_VERSION}-gpu") for tag in tags), tags


def test_the_ray_up_cluster_runs_this_image():
    config = yaml.safe_load((CLUSTER / "ray_up_aws.yaml").read_text())
    assert config["docker"]["image"].endswith(f":ray{RAY_VERSION}-gpu")
    assert f'ray[default]=={RAY_VERSION}' in (CLUSTER / "ray_up_aws.yaml").read_text()  # for the submitting machine


def test_the_installed_ray_is_the_pinned_one():
    # A driver of another version cannot join the image's cluster: bump the pins with Ray.
    assert ray.__version__ == RAY_VERSION, (f"Ray {ray.__version__} here, {RAY_VERSION} in the Dockerfile and "
                                            f"configs/cluster: update RAY_VERSION, rayVersion and the image tags")
