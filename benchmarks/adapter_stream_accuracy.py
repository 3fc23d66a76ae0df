"""Online accuracy of every adapter along an embedded CCC stream, in windows, next to the frozen model.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/adapter_stream_accuracy.py --methods source,tent,eta,rdumb \
        --images 300000 --out bench-out/adapters          # adapt, one result file per method
    python benchmarks/adapter_stream_accuracy.py --report --out bench-out/adapters [--window 25000]

The stream (default CCC-Medium: baseline 20, seed 43, speed 1000, with CCC's crop + flip) is
rendered once into `--out/stream_<name>_<images>.npz` and then replayed to every method, so methods
run in separate invocations (or in parallel) see identical pixels. Each method serves predictions
and adapts batch by batch (batch 64, the references' size); labels only score the served
predictions. EATA takes its Fisher from the first 2,000 stream images, as oripress/CCC's eval does.
Per method the result file keeps the per-image hits and the per-step statistics (samples used,
skipped steps, mean entropy), so the report can cut any window size afterwards.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stream_monitor.adapters import ADAPTERS  # noqa: E402
from stream_monitor.sources.accuracy_matrix import embedded_matrices  # noqa: E402
from stream_monitor.sources.ccc import CCCSpec  # noqa: E402
from stream_monitor.sources.embedded_ccc import EmbeddedCCCSource  # noqa: E402
from stream_monitor.adaptation import make_adapter  # noqa: E402
from stream_monitor.models import load_model  # noqa: E402

def stream_arrays(out: Path, spec: CCCSpec, images: int, crop: bool, model) -> tuple[np.ndarray, np.ndarray]:
    """The first `images` of the stream as uint8 NCHW + labels, rendered once and cached in `out`."""
    path = out / f"stream_{spec.name}_{'crop' if crop else 'nocrop'}_{images}.npz"
    if path.exists():
        with np.load(path) as data:
            return data["images"], data["labels"]
    source = EmbeddedCCCSource(spec, embedded_matrices(model), crop=crop)
    started = time.perf_counter()
    parts, labels = [], []
    for batch in source.read(0, images, 1024):
        parts.append(batch.images)
        labels.append(batch.labels)
    pixels, labels = np.concatenate(parts), np.concatenate(labels)
    print(f"rendered {len(pixels):,} images of {spec.name} in {time.perf_counter() - started:.0f} s", flush=True)
    np.savez(path, images=pixels, labels=labels)
    return pixels, labels


def adapt(method: str, model, pixels: np.ndarray, labels: np.ndarray, batch_size: int, lr: float | None,
          checkpoint: Path | None = None, checkpoint_every: int = 200) -> dict:
    """Serve and adapt batch by batch; with `checkpoint`, resumable every `checkpoint_every` steps.

    The checkpoint holds the adapter's full `state_dict()` (bit-exact continuation, a contract every
    adapter is tested for) with the hits and statistics so far, written atomically, so a killed or
    interrupted run (CoTTA needs hours on 2 cores) continues where it stopped with the same result.
    """
    adapter = make_adapter(method, model, lambda n: torch.from_numpy(pixels[:n]), lr=lr)
    hits = np.zeros(len(pixels), dtype=bool)
    stats: dict[str, list[float]] = {}
    start, spent = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        if saved["images"] != len(pixels) or saved["batch_size"] != batch_size or saved["lr"] != lr:
            raise SystemExit(f"{checkpoint} was made for another run (images, batch size or lr differ): "
                             "delete it to start this method over")
        adapter.load_state_dict(saved["adapter"])
        start, spent, stats = saved["position"], saved["seconds"], saved["stats"]
        hits[:start] = saved["hits"][:start]
        print(f"  {method:<8}resumed at image {start:,}", flush=True)
    started = time.perf_counter() - spent
    for lo in range(start, len(pixels), batch_size):
        result = adapter.step(model.normalise(torch.from_numpy(pixels[lo:lo + batch_size])))
        hits[lo:lo + batch_size] = result.logits.argmax(1).numpy() == labels[lo:lo + batch_size]
        for key, value in result.stats().as_dict().items():
            stats.setdefault(key, []).append(value)
        step = lo // batch_size
        if step % 500 == 0:
            print(f"  {method:<8}{lo:>9,}  acc so far {100 * hits[:lo + batch_size].mean():5.1f}%  "
                  f"{(lo + batch_size - start) / (time.perf_counter() - started - spent):6,.0f} img/s", flush=True)
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            partial = checkpoint.with_suffix(".tmp")
            torch.save({"adapter": adapter.state_dict(), "position": lo + batch_size, "hits": hits,
                        "stats": stats, "seconds": time.perf_counter() - started, "images": len(pixels),
                        "batch_size": batch_size, "lr": lr}, partial)
            partial.replace(checkpoint)
    return {"hits": hits, "seconds": time.perf_counter() - started, **{k: np.asarray(v) for k, v in stats.items()}}


def report(out: Path, window: int) -> None:
    results = {p.stem.removeprefix("method_"): dict(np.load(p)) for p in sorted(out.glob("method_*.npz"))}
    if not results:
        raise SystemExit(f"no method_*.npz in {out}: run with --methods first")
    order = [m for m in ADAPTERS.names() if m in results]
    order = (["source"] if "source" in order else []) + [m for m in order if m != "source"]
    n = max(len(r["hits"]) for r in results.values())

    def cell(m: str, lo: int, hi: int) -> str:
        # A method run on a shorter prefix (--limit) shows only the windows it covered in full.
        hits = results[m]["hits"]
        return f"{100 * hits[lo:hi].mean():8.1f}" if len(hits) >= hi else f"{'-':>8}"

    print(f"{'images':>17}" + "".join(f"{m:>8}" for m in order))
    for lo in range(0, n, window):
        hi = min(lo + window, n)
        print(f"{lo:>8,}-{hi:<8,}" + "".join(cell(m, lo, hi) for m in order))
    print(f"{'all covered':>17}" + "".join(f"{100 * results[m]['hits'].mean():8.1f}" for m in order))
    if "source" in results:
        src = results["source"]["hits"]
        print(f"{'source, same':>17}" + "".join(f"{100 * src[:len(results[m]['hits'])].mean():8.1f}" for m in order))
        worse = []
        for m in order:
            hits = results[m]["hits"]
            wins = [hits[lo:lo + window].mean() < src[lo:lo + window].mean()
                    for lo in range(0, min(len(hits), len(src)) - window + 1, window)]
            worse.append(f"{sum(wins)}/{len(wins)}")
        print(f"{'windows < source':>17}" + "".join(f"{w:>8}" for w in worse))
    print(f"{'samples used %':>17}" + "".join(
        f"{100 * results[m]['num_used'].sum() / len(results[m]['hits']):8.1f}" for m in order))
    print(f"{'steps skipped %':>17}" + "".join(f"{100 * results[m]['skipped'].mean():8.1f}" for m in order))
    print(f"{'img/s':>17}" + "".join(f"{len(results[m]['hits']) / float(results[m]['seconds']):8.0f}" for m in order))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="source,norm,tent,eta,eata,rdumb",
                        help=f"comma-separated, from: {', '.join(ADAPTERS.names())}")
    parser.add_argument("--images", type=int, default=300_000)
    parser.add_argument("--baseline", type=int, default=20)
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--speed", type=int, default=1000)
    parser.add_argument("--no-crop", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="adapt on only the first N images of the stream")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="override every method's learning rate")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bench-out/adapters"))
    parser.add_argument("--report", action="store_true", help="only print the table of what --out holds")
    parser.add_argument("--window", type=int, default=25_000)
    parser.add_argument("--checkpoint-every", type=int, default=200,
                        help="steps between resumable checkpoints in --out (0: none)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(args.out, args.window)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = [ADAPTERS.get(m) and m for m in args.methods.split(",")]  # unknown names fail early
    model = load_model("embedded")
    spec = CCCSpec(args.baseline, args.speed, args.seed)
    pixels, labels = stream_arrays(args.out, spec, args.images, not args.no_crop, model)
    print(f"{spec.name}: {len(pixels):,} images, model {model.short_id}, {args.threads} threads", flush=True)
    for method in methods:
        checkpoint = args.out / f"partial_{method}.pt" if args.checkpoint_every else None
        result = adapt(method, model, pixels[:args.limit], labels[:args.limit], args.batch_size, args.lr,
                       checkpoint, args.checkpoint_every)
        np.savez(args.out / f"method_{method}.npz", **result)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        print(f"{method}: {100 * result['hits'].mean():.2f}% in {result['seconds']:.0f} s", flush=True)
    report(args.out, args.window)


if __name__ == "__main__":
    main()
