"""Step time of every adapter next to a minimal hand-written Tent step, same model and batch, one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/adapter_step_time.py                  # embedded, CPU
    python benchmarks/adapter_step_time.py --model resnet50 --device cuda [--precision bf16]
    python benchmarks/adapter_step_time.py --methods tent,cotta:copy_workers=1,cotta   # one option changed
    python benchmarks/adapter_step_time.py --methods tent --aetta 10   # + AETTA's dropout passes on a batch

Rounds interleave the variants (each round runs every variant for `--steps` steps, in turn) and
the table shows the median over rounds of the mean step time, so background load hits every
variant alike. The minimal Tent step is the textbook loop: forward, mean softmax entropy,
zero_grad, backward, SGD step, with the model configured as Tent does. The goal is our `tent`
within 1.10x of it: the contract (statistics kept as tensors, snapshots on demand) must cost
nothing per step. On the embedded model the batch is the first 64 images of CCC-Medium; on
torchvision models it is random pixels (no ImageNet data is needed to time a step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from stream_monitor.adapters import ADAPTERS  # noqa: E402
from stream_monitor.adapters.base import entropy  # noqa: E402
from stream_monitor.adapters.tent import configure_norm_adaptation  # noqa: E402
from stream_monitor.adaptation import PRECISIONS, make_adapter  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402


class MinimalTent:
    """The shortest correct Tent step, as a baseline for the framework's overhead."""

    def __init__(self, module: torch.nn.Module, lr: float = 2.5e-4) -> None:
        import copy

        self.model = configure_norm_adaptation(copy.deepcopy(module))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        loss = entropy(logits).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logits.detach()


class AETTAPasses:
    """AETTA's dropout passes on one batch (estimation.aetta_forwards of them), as the adapter
    worker runs them on every estimation.aetta_every-th batch: their cost per batch is this row's
    time divided by aetta_every."""

    def __init__(self, adapter, forwards: int) -> None:
        from stream_monitor.estimation.aetta import DropoutDisagreement

        self.adapter, self.passes = adapter, DropoutDisagreement(forwards=forwards)
        self.predictions: torch.Tensor | None = None  # the worker has the step's; not part of the cost

    def step(self, x: torch.Tensor) -> None:
        model = self.adapter.serving_model()
        if self.predictions is None:
            with torch.no_grad():
                self.predictions = model(x).argmax(1)
        self.passes(model, x, self.predictions)


def first_batch(model, batch_size: int) -> torch.Tensor:
    if model.name.startswith("embedded"):
        from stream_monitor.sources.accuracy_matrix import embedded_matrices
        from stream_monitor.sources.ccc import CCCSpec
        from stream_monitor.sources.embedded_ccc import EmbeddedCCCSource

        source = EmbeddedCCCSource(CCCSpec(20, 1000, 43), embedded_matrices(model))
        return torch.from_numpy(next(iter(source.read(0, batch_size, batch_size))).images)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch_size, 3, model.image_size, model.image_size), generator=g, dtype=torch.uint8)


def parse_variant(spec: str) -> tuple[str, dict]:
    """`name` or `name:key=value:key=value` (values as Python literals): a method with options changed."""
    import ast

    name, *options = spec.split(":")
    pairs = [option.split("=", 1) for option in options]
    return name, {key: ast.literal_eval(value) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--methods", default=",".join(ADAPTERS.names()))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--aetta", type=int, default=0, metavar="FORWARDS",
                        help="also time AETTA's FORWARDS dropout passes on the first method's model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    pixels = first_batch(model, args.batch_size)
    x = model.normalise(pixels)
    variants = {"minimal tent": MinimalTent(model.module)}
    for spec in args.methods.split(","):
        name, options = parse_variant(spec)
        variants[spec] = make_adapter(name, model, lambda n: pixels, args.precision, **options)
    if args.aetta:
        first = variants[args.methods.split(",")[0]]
        variants[f"aetta {args.aetta} passes"] = AETTAPasses(first, args.aetta)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for step in variants.values():  # warm-up: allocator, cuDNN autotuning, lazy inits
        for _ in range(3):
            step.step(x)
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                variant.step(x)
            sync()
            times[name].append((time.perf_counter() - started) / args.steps)
    base = statistics.median(times["minimal tent"])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"{model.short_id}, batch {args.batch_size}, {device}, {args.precision}; "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"{'method':<24}{'ms/step':>10}{'img/s':>10}{'x minimal tent':>16}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24}{1000 * median:10.2f}{args.batch_size / median:10,.0f}{median / base:16.2f}")


if __name__ == "__main__":
    main()
