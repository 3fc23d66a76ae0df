# The image of the cluster examples in configs/cluster/ (KubeRay RayJob, `ray up`): Python 3.11,
# Ray pinned to the version those files name, torch and this project.
#
#   docker build -t ghcr.io/your-org/stream-monitor:ray2.60.0-gpu .
#   docker build -t ghcr.io/your-org/stream-monitor:ray2.60.0-cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# GPU variant (default): torch and torchvision from PyPI, whose Linux wheels carry their own CUDA
# libraries; a node needs only the NVIDIA driver and the container toolkit (`--gpus all`; the
# DLAMI of ray_up_aws.yaml and KubeRay's GPU nodes have both). CPU variant: the same from PyTorch's
# CPU wheel index, about 1.5 GB smaller, for CPU-only clusters (`--gpus-per-run 0`).
# Ray's version must equal the cluster's everywhere (head, workers, the job's driver): change
# RAY_VERSION here together with rayVersion in kuberay_rayjob.yaml and the pin in ray_up_aws.yaml
# (tests/stream_monitor/test_dockerfile.py checks that they agree).
FROM python:3.11-slim-bookworm

ARG RAY_VERSION=2.60.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

# wget: KubeRay's health probes call it inside the Ray containers; rsync and openssh-client: Ray's
# cluster launcher syncs files and reaches the nodes with them; tini reaps the Ray processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget rsync openssh-client tini \
    && rm -rf /var/lib/apt/lists/*

# Ray's images run as the user `ray` (uid 1000) with its home as the working directory; KubeRay's
# and the launcher's commands assume a writable home.
RUN useradd --create-home --uid 1000 --shell /bin/bash ray
ENV PATH=/home/ray/.local/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE

# torch first and on its own layer: the largest and the least often changed.
RUN pip install --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
        "torch>=2.4" "torchvision>=0.19" \
    && pip install "ray[default]==${RAY_VERSION}"

COPY --chown=ray:ray . /opt/stream-monitor
RUN pip install /opt/stream-monitor \
    && python -c "import ray, stream_monitor; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

USER ray
WORKDIR /home/ray
ENTRYPOINT ["tini", "--"]
CMD ["stream-monitor", "--help"]
