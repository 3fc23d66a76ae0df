"""Train the embedded source model on freshly rendered glyph images.

    python -m stream_monitor.train_embedded --out stream_monitor/assets              # the source model
    python -m stream_monitor.train_embedded --depth 8 --out stream_monitor/assets    # the Duos sidekick

Every step renders a new batch from the domain's TRAIN range (no image is seen twice), so there
is no dataset to store. Half the images go through CCC's own RandomResizedCrop + flip, so the
model meets the stream's crops the way ImageNet models meet theirs, while clean accuracy stays
high. SGD with Nesterov momentum and a one-cycle schedule. The weights are written with their
recipe, seed, validation accuracy and sha256 beside them (`embedded_resnet{depth}.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stream_monitor.sources.augment import random_resized_crop_flip
from stream_monitor.sources.glyphs import TRAIN, VAL, GlyphDomain

from .models.embedded import CifarResNet
from .models.normalisation import EMBEDDED_MEAN, EMBEDDED_STD

RECIPE = {
    "architecture": "CifarResNet(depth=20, widths=(16, 32, 64))",
    "domain": "GlyphDomain(seed=0, image_size=32)",
    "steps": 3000,
    "batch_size": 128,
    "optimizer": "SGD(lr=OneCycle(max 0.2), momentum=0.9, nesterov=True, weight_decay=5e-4)",
    "augmentation": "p=0.5 RandomResizedCrop(32, scale=(0.08, 1)) + HorizontalFlip, as CCC",
    "seed": 0,
}


def evaluate(model: torch.nn.Module, domain: GlyphDomain, start: int, count: int, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for lo in range(start, start + count, batch):
            x, y = domain.render_range(lo, min(lo + batch, start + count))
            correct += (model(normalise(x)).argmax(1) == y).sum().item()
    return 100.0 * correct / count


def normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    mean = torch.tensor(EMBEDDED_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(EMBEDDED_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def train(out_dir: Path, steps: int, batch_size: int, seed: int, log_every: int = 100, depth: int = 20) -> dict:
    torch.manual_seed(seed)
    domain = GlyphDomain(seed=0, image_size=32)
    model = CifarResNet(depth=depth).to(memory_format=torch.channels_last)
    name = f"embedded_resnet{depth}"
    optimiser = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.2, total_steps=steps, pct_start=0.15)
    rng = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(steps):
        model.train()
        x, y = domain.render_range(TRAIN.start + step * batch_size, TRAIN.start + (step + 1) * batch_size)
        cropped = random_resized_crop_flip(x, rng, 32)
        use_crop = (torch.rand(len(x), generator=rng) < 0.5)[:, None, None, None]
        x = torch.where(use_crop, cropped, x.float() / 255.0)
        loss = F.cross_entropy(model(normalise(x)), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} lr {schedule.get_last_lr()[0]:.4f} "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
    accuracy = evaluate(model, domain, VAL.start, 10_000)
    print(f"clean validation accuracy {accuracy:.2f}% on 10,000 images", flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = {
        "name": name,
        "weights": weights.name,
        "sha256": digest,
        "val_accuracy": round(accuracy, 2),
        "val_images": 10_000,
        "recipe": {**RECIPE, "architecture": f"CifarResNet(depth={depth}, widths=(16, 32, 64))", "steps": steps,
                   "batch_size": batch_size, "seed": seed},
        "trained_with": {"torch": torch.__version__, "python": platform.python_version(),
                         "seconds": round(time.perf_counter() - started)},
        "mean": list(EMBEDDED_MEAN),
        "std": list(EMBEDDED_STD),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {weights} sha256 {digest}")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "assets")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--seed", type=int, default=RECIPE["seed"])
    parser.add_argument("--depth", type=int, default=20, help="6n + 2: 20 for the source model, 8 for the sidekick")
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.batch_size, args.seed, depth=args.depth)


if __name__ == "__main__":
    main()
