"""The `stream-monitor` command line (typer)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="stream-monitor",
    help="Live, label-free monitoring of continual test-time adaptation on CCC-style streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

LIST_WHAT = ("sources", "streams", "corruptions", "models")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def run(
    source: Annotated[str, typer.Option(help="Stream kind: ccc or imagefolder.")] = "ccc",
    stream: Annotated[Optional[str], typer.Option(help="CCC stream name (default CCC-Medium, speed 1000, seed 43).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Official CCC shards (DIR or URL) or an ImageFolder DIR.")] = None,
    model: Annotated[str, typer.Option(help="`embedded` or a torchvision classifier name.")] = "embedded",
    weights: Annotated[Optional[Path], typer.Option(help="Weights file (torch state dict).")] = None,
    adapter: Annotated[str, typer.Option(help="TTA method: source (no adaptation), norm, tent, eta, eata, rdumb, sar, cotta, lcotta, em-inf.")] = "source",
    lr: Annotated[Optional[float], typer.Option(help="Adapter learning rate (default: the method's).")] = None,
    max_images: Annotated[int, typer.Option(help="Stop after this many images.")] = 50_000,
    start: Annotated[int, typer.Option(help="First stream position.")] = 0,
    batch_size: Annotated[int, typer.Option()] = 64,
    window: Annotated[int, typer.Option(help="Images per reported window.")] = 5000,
    crop: Annotated[bool, typer.Option(help="CCC's random resized crop + flip (embedded stream).")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="fp32, or bf16 autocast for the adapter (GPU).")] = "fp32",
    reset_every: Annotated[Optional[int], typer.Option(help="Reset the adapter to the source model every N steps.")] = None,
    restore_prob: Annotated[Optional[float], typer.Option(help="Stochastic restore: per step, each adapted weight "
                                                          "returns to its source value with this probability.")] = None,
) -> None:
    """Adapt on the stream and report the served predictions' accuracy per window.

    Labels are used for scoring only; the adapter never sees them.
    """
    from sources.factory import open_source

    from .adaptation import make_adapter
    from .models import WeightsError, load_model
    from .source_eval import evaluate_source

    import torch

    from adapters import ADAPTERS

    from .registry import UnknownNameError

    try:
        ADAPTERS.get(adapter)  # an unknown name fails before any model or data is loaded
        bundle = load_model(model, weights, device)
        src = open_source(source, stream, data, bundle, crop=crop, device=device)
    except (ValueError, FileNotFoundError, WeightsError, UnknownNameError) as error:
        _fail(str(error))

    def first_images(n: int) -> torch.Tensor:
        return torch.cat([torch.from_numpy(b.images) for b in src.read(start, min(src.length, start + n), batch_size)])

    try:
        method = make_adapter(adapter, bundle, first_images, precision, lr=lr, reset_every=reset_every,
                              restore_prob=restore_prob)
    except ValueError as error:
        _fail(str(error))
    stop = min(src.length, start + max_images)
    console.print(f"[bold]stream-monitor[/] {src.name}  model {bundle.short_id}  adapter {adapter}  "
                  f"images [{start:,}, {stop:,}) of {src.length:,}  device {device}")
    if bundle.name == "embedded_resnet20":
        console.print("[dim]Embedded glyph domain and model (not ImageNet): see README, 'The embedded default'.[/]")

    def show(w, result) -> None:
        skipped = f"  skipped {w.skipped}" if w.skipped else ""
        console.print(f"{w.start:>9,}-{w.stop:<9,} acc {w.accuracy:5.1f}%  {w.pair:<32} "
                      f"{result.images_per_second:,.0f} img/s{skipped}", highlight=False)

    result = evaluate_source(src, bundle, start, stop, batch_size, window, on_window=show,
                             predict=lambda images: method.step(bundle.normalise(images)).logits)
    table = Table(title="Summary", show_header=False)
    rows = {
        "stream": src.name, "model": bundle.short_id, "adapter": adapter, "images": f"{result.images:,}",
        "skipped": f"{sum(w.skipped for w in result.windows):,}", "accuracy": f"{result.accuracy:.2f}%",
        "throughput": f"{result.images_per_second:,.0f} img/s", "wall time": f"{result.seconds:.1f} s",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


@app.command("list")
def list_(what: Annotated[str, typer.Argument(help=f"One of: {', '.join(LIST_WHAT)}.")] = "sources") -> None:
    """List sources, CCC streams, corruptions or models."""
    from sources.ccc import NOISE_POOLS, all_stream_names
    from sources.corruptions import HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS
    from sources.factory import SOURCE_KINDS

    from .models import model_names
    from .registry import unknown_name_message

    if what == "sources":
        for name, text in SOURCE_KINDS.items():
            console.print(f"{name:<12} {text}")
    elif what == "streams":
        for name in all_stream_names():
            console.print(name)
    elif what == "corruptions":
        for name in STREAM_CORRUPTIONS:
            pools = [str(b) for b, pool in sorted(NOISE_POOLS.items()) if name in pool]
            console.print(f"{name:<16} stream   baselines {','.join(pools) or '-'}")
        for name in HELD_OUT_CORRUPTIONS:
            console.print(f"{name:<16} held-out (calibration only)")
    elif what == "models":
        console.print("\n".join(model_names()))
    else:
        _fail(unknown_name_message("list", what, LIST_WHAT))


@app.command()
def generate(
    imagenet_val: Annotated[Path, typer.Option(help="ImageNet validation set in class folders.")],
    out: Annotated[Path, typer.Option(help="Where the stream folder of shards is written.")],
    matrix: Annotated[Path, typer.Option(help="CCC's ccc_accuracy_matrix.pickle, or our .npz.")],
    stream: Annotated[str, typer.Option(help="CCC stream name.")] = "baseline_20_transition+speed_1000_seed_43",
    max_images: Annotated[Optional[int], typer.Option(help="Stop early (default: the whole stream).")] = None,
) -> None:
    """Generate CCC webdataset shards locally from ImageNet val (resumable)."""
    from sources.ccc import CCCSpec, CCCWalk
    from sources.ccc_pickle import load_ccc_pickle, load_matrices_npz
    from sources.generate import generate_ccc_from_imagefolder

    try:
        spec = CCCSpec.parse(stream)
        if not matrix.exists():
            raise FileNotFoundError(f"Accuracy matrix {matrix} not found; pass CCC's ccc_accuracy_matrix.pickle.")
        matrices = load_matrices_npz(matrix) if matrix.suffix == ".npz" else load_ccc_pickle(matrix)
        walk = CCCWalk(spec, matrices, num_classes=1000)
        report = generate_ccc_from_imagefolder(
            imagenet_val, out, spec, walk, max_images=max_images,
            progress=lambda done, total: console.print(f"shards {done}/{total}"),
        )
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    console.print(report)


@app.command("train-embedded")
def train_embedded(
    out: Annotated[Path, typer.Option(help="Output folder for weights and card.")] = Path("embedded-model"),
    steps: Annotated[int, typer.Option()] = 3000,
) -> None:
    """Retrain the embedded source model (the shipped one was made with the defaults)."""
    from .train_embedded import train

    train(out, steps, 128, 0)


@app.command()
def matrix(images: Annotated[int, typer.Option(help="Calibration images per grid cell.")] = 64) -> None:
    """Compute (and cache) the embedded model's CCC accuracy matrix."""
    from sources.accuracy_matrix import embedded_matrices

    from .models import load_model

    embedded_matrices(load_model("embedded"), images)


def main() -> None:
    # Spinning OpenMP threads make small CPU steps 20-30x slower on a loaded machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
