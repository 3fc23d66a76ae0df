"""End to end on CCC-format JPEG shards (decode + adapt + probe) against the reference's loader.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/shard_throughput.py --model resnet18 --images 1280   # CPU
    python benchmarks/shard_throughput.py --model resnet50 --device cuda --images 64000 [--shards /data/CCC]

Three figures from one invocation, on the same shards, model and adapter (Tent, batch 64):

- **reference loader**: oripress/CCC `eval.py`'s pipeline, in the training process: webdataset
  `.decode("pil")`, `ToTensor` + `Normalize`, `DataLoader(batch_size=64, num_workers=0)`, then
  the adapter step (research note enigma_ccc.md 3.2: single-process decoding);
- **stream-monitor**: `stream-monitor run` on the shards: `source.num_actors` source actors
  decode slices in parallel with torchvision's batched `decode_jpeg` (on the GPU with
  `--decode-device cuda`), uint8 batches to the adapter actor, the probe actor beside it,
  Parquet metrics; the rate is the steady state between the first and last step rows;
- **adapter ceiling**: `AdapterWorker.step` alone on batches decoded beforehand.

`--shards DIR` uses existing CCC shards (the official ones: DIR/<stream>/serial_*.tar).
Otherwise CCC-format shards (224 px JPEG, quality 85, CCC's keys and `info`) are written from the
embedded CCC stream, upscaled: smoother than photographs, so they decode faster than real CCC
images do, which favours the reference loader. Prints a table and appends a row (git SHA, device)
to bench-out/shard_throughput.csv and .parquet.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _record import git_sha, record  # noqa: E402
from run_throughput import adapter_only_rate  # noqa: E402

STREAM = "baseline_20_transition+speed_1000_seed_43"


def write_embedded_shards(out: Path, images: int, size: int = 224) -> Path:
    """`images` of the embedded CCC-Medium stream as CCC-format shards of `size` px JPEGs."""
    from torchvision.io import encode_jpeg

    from stream_monitor.sources.accuracy_matrix import embedded_matrices
    from stream_monitor.sources.ccc import CCCSpec
    from stream_monitor.sources.embedded_ccc import EmbeddedCCCSource
    from stream_monitor.sources.generate import ShardSample, write_ccc_shards
    from stream_monitor.sources.shards import CCCInfo, format_info
    from stream_monitor.models import load_model

    embedded = load_model("embedded")
    source = EmbeddedCCCSource(CCCSpec.parse(STREAM), embedded_matrices(embedded), crop=True)
    samples = []
    for batch in source.read(0, images, 256):
        big = torch.nn.functional.interpolate(torch.from_numpy(batch.images).float(), size=(size, size),
                                              mode="bilinear", align_corners=False).round().clamp(0, 255)
        for k, image in enumerate(big.to(torch.uint8)):
            info = format_info(CCCInfo("n00000000", f"glyph_{batch.indices[k]}.png", str(batch.noise_a[k]),
                                       float(batch.severity_a[k]), str(batch.noise_b[k]), float(batch.severity_b[k])))
            samples.append(ShardSample(bytes(encode_jpeg(image, quality=85).numpy()), int(batch.labels[k]), info))
    write_ccc_shards(samples, out, STREAM, shard_size=25_000)
    return out


def reference_loader(shards: Path, stream: str, images: int, mean, std, batch_size: int):
    """oripress/CCC eval.py's loader: webdataset + PIL decode + ToTensor/Normalize, num_workers=0."""
    import webdataset as wds
    from torchvision import transforms

    urls = sorted(str(p) for p in (shards / stream).glob("serial_*.tar"))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
               .to_tuple("input.jpg", "output.cls").map_tuple(transform, lambda c: c).slice(images))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)


def time_reference(adapter, loader, device: str) -> float:
    """Images per second of the reference loop (first batch excluded: warm-up)."""
    seen, started = 0, None
    for k, (x, _) in enumerate(loader):
        adapter.step(x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
        if k == 0:
            sync(device)
            started = time.perf_counter()
        else:
            seen += len(x)
    sync(device)
    return seen / (time.perf_counter() - started)


def time_decode(batches) -> float:
    """Images per second of a batch iterator alone (decode only, nothing adapts)."""
    started, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch.images)
    return seen / (time.perf_counter() - started)


def time_pipeline(config, run_dir: Path) -> tuple[float, float, int]:
    """Steady-state and with-start-up img/s of `stream-monitor run`, and the images it adapted."""
    from stream_monitor.metrics.sink import read_table
    from stream_monitor.runtime.runner import run

    started = time.perf_counter()
    outcome = run(config, run_dir)
    wall = time.perf_counter() - started
    if outcome.status != "finished":
        raise SystemExit(f"the run did not finish: {outcome.status} {outcome.error}")
    steps = read_table(run_dir, "steps")
    times, counts = steps.column("wall_time").to_numpy(), steps.column("images").to_numpy()
    return counts[1:].sum() / (times[-1] - times[0]), outcome.images / wall, outcome.images


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision model (list models)")
    parser.add_argument("--weights", default=None, help="a state_dict file; default: torchvision's, or random")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode-device", default="cpu", help="where source actors decode (cpu, or cuda: nvjpeg, each actor a source.num_gpus share)")
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--stream", default=STREAM)
    parser.add_argument("--source-actors", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="adapter threads (CPU)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    from stream_monitor.adaptation import make_adapter
    from stream_monitor.config import load_config
    from stream_monitor.models import load_model
    from stream_monitor.runtime.workers import StreamWorker

    work = Path(tempfile.mkdtemp(prefix="sm-shards-"))
    shards = args.shards
    if shards is None:
        started = time.perf_counter()
        shards = write_embedded_shards(work / "ccc", args.images + 64)
        print(f"wrote {args.images + 64:,} CCC-format shard images in {time.perf_counter() - started:.0f} s")
    overrides = [f"source.data={str(shards)!r}", f"source.stream={args.stream!r}", f"model.name={args.model!r}",
                 "adapter.name=tent", f"adapter.precision={args.precision}", f"runtime.device={args.device}",
                 f"runtime.max_images={args.images}", f"runtime.threads={args.threads}", "dashboard.enabled=False",
                 f"source.num_actors={args.source_actors}", f"source.decode_device={args.decode_device}",
                 *args.overrides]
    if args.weights:
        overrides.append(f"model.weights={args.weights!r}")
    config = load_config(None, overrides)
    torch.set_num_threads(args.threads)

    model = load_model(args.model, weights=args.weights, device=args.device)
    adapter = make_adapter("tent", model, None, args.precision)
    loader = reference_loader(shards, args.stream, args.images, model.mean, model.std, config.source.batch_size)
    reference = time_reference(adapter, loader, args.device)
    reference_decode = time_decode(reference_loader(shards, args.stream, args.images, model.mean, model.std,
                                                    config.source.batch_size))
    from stream_monitor.sources.shards import CCCShardSource

    shard_source = CCCShardSource(shards, args.stream, device=args.decode_device)
    ours_decode = time_decode(shard_source.read(0, args.images, config.source.batch_size))

    items = StreamWorker(config, 1).read(0, min(10 * config.source.batch_size, args.images))
    ceiling = adapter_only_rate(config, items[0::2], args.threads)
    steady, with_startup, adapted = time_pipeline(config, work / "run")
    ceiling = statistics.mean([ceiling, adapter_only_rate(config, items[0::2], args.threads)])

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} adapter threads")
    print(f"{args.model} Tent {args.precision}, {adapted:,} images of {args.stream} "
          f"({'given shards' if args.shards else 'embedded stream as CCC shards'}), {device}")
    rows = [("decode only: reference (PIL + ToTensor)", reference_decode),
            (f"decode only: one source actor (decode_jpeg, {args.decode_device})", ours_decode),
            ("reference loader (PIL, num_workers=0)", reference),
            (f"stream-monitor run, {args.source_actors} source actor(s)", steady),
            ("  with Ray start-up", with_startup), ("adapter ceiling (pre-decoded)", ceiling)]
    for name, rate in rows:
        print(f"  {name:<50}{rate:10,.1f} img/s")
    print(f"  {'stream-monitor / reference loader':<50}{steady / reference:10.2f}x")
    print(f"  {'stream-monitor / adapter ceiling':<50}{steady / ceiling:10.2f}")
    record({"git_sha": git_sha(), "device": device, "model": args.model, "precision": args.precision,
            "images": adapted, "source_actors": args.source_actors, "given_shards": args.shards is not None,
            "reference_decode_img_s": reference_decode, "source_decode_img_s": ours_decode,
            "decode_device": args.decode_device, "reference_img_s": reference, "pipeline_img_s": steady, "pipeline_with_startup_img_s": with_startup,
            "ceiling_img_s": ceiling}, Path("bench-out/shard_throughput"))


if __name__ == "__main__":
    main()
