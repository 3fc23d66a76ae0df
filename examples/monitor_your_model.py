"""Monitor your own model: a torchvision ResNet-18, a plain Python generator of batches, and two adapters.

    python examples/monitor_your_model.py [--images 4096] [--out runs/examples]

Runs on a CPU in about a minute. The model is randomly initialised (`resnet18(num_classes=10)`)
and the images are synthetic, 32x32, one colour pattern per class under noise that grows along the
stream, so the figures only show the mechanics: probes every few steps, every estimator's reading,
the truth beside them because the batches carry labels, and, with no calibration for this model,
no headline estimate and a warning that says so (docs/python-api.md). Replace `resnet18` and
`synthetic_batches` with your own model and data loader.

The second run monitors the same stream with `EntropyNorm`, an adapter written below: any object
with step / snapshot / reset / state_dict (and load_state_dict to resume) is one.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator

import torch
import torchvision
from torch import nn

from stream_monitor import Monitor, MonitorResult, ProbeReport

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def synthetic_batches(images: int = 4096, batch_size: int = 64,
                      seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches: float [0, 1] (N, 3, 32, 32), a colour and stripe per class, noise rising to 0.5."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(10, 3, 1, 1, generator=generator)
    stripes = (torch.arange(32).view(1, 1, 32) % torch.arange(2, 12).view(10, 1, 1) == 0).float()
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        labels = torch.randint(0, 10, (n,), generator=generator)
        clean = 0.6 * colours[labels] + 0.4 * stripes[labels].unsqueeze(1)
        noise = 0.5 * start / images * torch.randn(n, 3, 32, 32, generator=generator)
        yield (clean + noise).clamp(0, 1), labels


class EntropyNorm:
    """A Tent-like adapter written from scratch (Wang et al., ICLR 2021): entropy minimisation on the
    BatchNorm affine parameters, with test-batch statistics. It subclasses nothing: the monitor
    needs only step / snapshot / reset / state_dict / load_state_dict."""

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        self.model = copy.deepcopy(model).train()
        self.model.requires_grad_(False)
        self.params = {}
        for name, module in self.model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                module.track_running_stats, module.running_mean, module.running_var = False, None, None
                for kind in ("weight", "bias"):
                    param = getattr(module, kind)
                    param.requires_grad_(True)
                    self.params[f"{name}.{kind}"] = param
        self.optimizer = torch.optim.SGD(self.params.values(), lr=lr, momentum=0.9)
        self.initial = self.state_dict()

    def step(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return logits.detach()  # the logits that served the predictions, from before the update

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().clone() for name, param in self.params.items()}

    def reset(self) -> None:
        self.load_state_dict(self.initial)

    def state_dict(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # a random initialisation, the same in both runs
    return torchvision.models.resnet18(num_classes=10)


def monitor_registered(out: str, images: int = 4096, batch_size: int = 64, probe_every: int = 8,
                       probe_size: int = 256, callbacks=()) -> MonitorResult:
    """ResNet-18 adapted by the registered `tent`, on the generator."""
    monitor = Monitor(make_model(), adapter="tent", mean=MEAN, std=STD, batch_size=batch_size,
                      probe_every=probe_every, probe_size=probe_size, out=out, callbacks=callbacks)
    return monitor.run(synthetic_batches(images, batch_size), stream_name="synthetic")


def monitor_custom(out: str, images: int = 4096, batch_size: int = 64, probe_every: int = 8,
                   probe_size: int = 256, callbacks=()) -> MonitorResult:
    """The same stream with the `EntropyNorm` adapter class above."""
    monitor = Monitor(make_model(), adapter=EntropyNorm, mean=MEAN, std=STD, batch_size=batch_size,
                      probe_every=probe_every, probe_size=probe_size, out=out, callbacks=callbacks)
    return monitor.run(synthetic_batches(images, batch_size), stream_name="synthetic")


class PrintProbes:
    """A callback: one line per probe, as the run goes."""

    def on_probe(self, report: ProbeReport) -> None:
        served = report.reading("average-confidence")
        cot = report.reading("cot")
        true = "n/a" if report.true_online_accuracy is None else f"{report.true_online_accuracy:5.1f}%"
        print(f"  step {report.step:4d}  images {report.window_start:5d}-{report.window_stop:5d}  "
              f"flips {report.flips:4d}/{report.probe_size}  raw average-confidence {served.value:5.1f}%  "
              f"raw COT {cot.value:5.1f}%  true online {true}  headline {report.online_accuracy}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    runs = (("registered adapter 'tent'", monitor_registered), ("custom adapter EntropyNorm", monitor_custom))
    for label, monitor in runs:
        print(f"{label}:")
        result = monitor(args.out, args.images, callbacks=[PrintProbes()])
        last = result.last
        print(f"  {result.status}: {result.images} images in {result.seconds:.1f} s, {len(result.probes)} probes, "
              f"run directory {result.run_dir}")
        if last is not None and not last.calibrated:
            print(f"  note: {last.warnings[-1]}")


if __name__ == "__main__":
    main()
