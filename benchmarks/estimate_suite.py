"""The held-out evaluation suite of the label-free estimates (DESIGN.md 6; issue 25).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/estimate_suite.py --jobs 2               # this checkout
    python benchmarks/estimate_suite.py --repo /work/wt-prev --images 13000 --jobs 1     # an older one

Every case runs with the rdumb, tent and source adapters (`stream-monitor run --no-ray
--no-dashboard --set runtime.threads=1`, the embedded default model, its shipped calibrations),
and each run is scored per target (source, online) for the headline and for every estimator in
its estimates table: MAE, bias, worst window, interval coverage and out-of-support rate
(`suite_scoring.py`; n/a where the release writes no such column). Rows go to
benchmarks/results/estimate_suite_<SHA>.csv and .parquet as each run finishes (one row per probe
window and target in estimate_suite_<SHA>_windows.csv and .parquet); a second call
skips the (case, adapter, images) already there, so an interrupted suite resumes where it stopped.

Cases (`CASES`): unseen CCC streams (seeds 44 and 45, speeds 2000 and 5000, none used while the
estimators were developed, which watched seed 43 at speed 1000), and the suite's own streams
(`suite_streams.py`, rendered once under --work and served to any checkout by `_suite_run.py`):
no shift, clean drifting into contrast, clean and corrupted blocks by turns, and two shift
families neither CCC nor the calibration uses (posterize, sharpen).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from suite_scoring import TARGETS, estimator_scores, headline_scores, read_columns, window_rows  # noqa: E402

#: rdumb and tent ship calibrations of their own; eata has none (its online headline is the frozen
#: file's rule for such adapters, fitted on no EATA window); source serves the frozen model itself
ADAPTERS = ("rdumb", "tent", "eata", "source")


@dataclass(frozen=True)
class Case:
    """One stream of the suite: a CCC stream name, or one of the suite's own kinds."""

    name: str
    ccc: str | None = None   # an embedded CCC stream (`--stream`)
    kind: str | None = None  # a suite stream (suite_streams.KINDS)


def _ccc(baseline: int, speed: int, seed: int) -> Case:
    return Case(f"ccc-b{baseline}-s{speed}-seed{seed}", ccc=f"baseline_{baseline}_transition+speed_{speed}_seed_{seed}")


#: In the order a suite runs them (a partial table holds the first ones).
CASES: tuple[Case, ...] = (
    Case("no-shift", kind="clean"),
    *(_ccc(b, 2000, 44) for b in (40, 20, 0)),
    *(_ccc(b, 5000, 45) for b in (40, 20, 0)),
    _ccc(20, 5000, 44),
    Case("novel-posterize", kind="posterize"),
    Case("novel-sharpen", kind="sharpen"),
    Case("drift-into-contrast", kind="drift"),
    Case("mixed-clean-corrupted", kind="mixed"),
)


def git_sha(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"--repo {repo} is not a git checkout ({out.stderr.strip()}); pass the folder of a "
                         f"stream-monitor checkout, e.g. one made with `git worktree add --detach DIR SHA`.")
    return out.stdout.strip()


def stream_folder(case: Case, images: int, streams: Path) -> Path:
    """The case's rendered stream, rendered on first use (a lock keeps parallel runs from rendering it twice)."""
    import fcntl

    from suite_streams import render

    streams.mkdir(parents=True, exist_ok=True)
    with open(streams / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return render(case.kind, images, streams / f"{case.kind}-{images}")


def run_case(case: Case, adapter: str, repo: Path, images: int, streams: Path, runs: Path, sha: str,
             keep: bool) -> tuple[list[dict], list[dict]]:
    """Run one (case, adapter) with the checkout at `repo` and score it: the suite's rows, and one
    row per probe window and target (`suite_scoring.window_rows`)."""
    out = runs / f"{case.name}-{adapter}-{images}"
    shutil.rmtree(out, ignore_errors=True)  # a run that was cut off starts again
    out.mkdir(parents=True)
    if case.kind:
        folder = stream_folder(case, images, streams)
        source = ["--source", "imagefolder", "--data", str(folder)]
    else:
        folder, source = "-", ["--stream", case.ccc]
    command = [sys.executable, str(HERE / "_suite_run.py"), str(folder), "--", "run", *source, "--adapter", adapter,
               "--max-images", str(images), "--no-ray", "--no-dashboard", "--out", str(out),
               "--set", "runtime.threads=1", "--set", "runtime.use_ray=false", "--set", "dashboard.enabled=false"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    with open(out / "suite.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=repo)
    seconds = time.perf_counter() - started
    run_dirs = [p for p in out.iterdir() if p.is_dir()]
    if done.returncode or len(run_dirs) != 1:
        raise RuntimeError(f"{case.name} with {adapter} failed (exit {done.returncode}); see {out / 'suite.log'}")
    probes, estimates = read_columns(run_dirs[0], "probes"), read_columns(run_dirs[0], "estimates")
    base = {"sha": sha, "case": case.name, "adapter": adapter, "images": images, "run_seconds": round(seconds, 1)}
    rows, windows = [], []
    if probes:
        windows = [{**base, **w} for w in window_rows(probes)]
        for target, (s, methods) in headline_scores(probes).items():
            rows.append({**base, "target": target, "estimator": "headline", "methods": methods, **s.row()})
        if estimates:
            for (target, key), s in estimator_scores(probes, estimates).items():
                rows.append({**base, "target": target, "estimator": key, "methods": "", **s.row()})
    if not keep:
        shutil.rmtree(run_dirs[0], ignore_errors=True)
    return rows or [{**base, "target": "", "estimator": "no probe window", "methods": ""}], windows


def append(rows: list[dict], stem: Path) -> None:
    """Add rows to STEM.csv and rewrite STEM.parquet with all of them."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    csv_path = stem.with_suffix(".csv")
    if csv_path.exists():
        table = pa.concat_tables([pa_csv.read_csv(csv_path), table], promote_options="permissive")
    pa_csv.write_csv(table, csv_path)
    pq.write_table(table, stem.with_suffix(".parquet"))


def finished(stem: Path) -> set[tuple[str, str, int]]:
    csv_path = stem.with_suffix(".csv")
    if not csv_path.exists():
        return set()
    import pyarrow.csv as pa_csv

    data = pa_csv.read_csv(csv_path).to_pydict()
    return set(zip(data["case"], data["adapter"], data["images"]))


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def table(stem: Path) -> str:
    """Markdown of a suite's CSV: per case and adapter, each headline's MAE / worst window /
    coverage / out-of-support rate; then each estimator's MAE averaged over the cases it read."""
    import pyarrow.csv as pa_csv

    rows = pa_csv.read_csv(stem.with_suffix(".csv")).to_pylist()
    head = {(r["case"], r["adapter"], r["target"]): r for r in rows if r["estimator"] == "headline"}
    out = ["| case | adapter | images | source: MAE / worst / cov. / OOS (method) | online: MAE / worst / cov. / OOS (method) |",
           "|---|---|---|---|---|"]
    for case in CASES:
        for adapter in ADAPTERS:
            cells = []
            for target in TARGETS:
                r = head.get((case.name, adapter, target))
                cells.append("not run" if r is None else
                             f"{_fmt(r['mae'])} / {_fmt(r['worst'])} / {_fmt(r['coverage'], 2)} / "
                             f"{_fmt(r['out_of_support'], 2)} ({r['methods'] or '-'})")
            if any(c != "not run" for c in cells):
                images = next(r["images"] for r in rows if r["case"] == case.name and r["adapter"] == adapter)
                out.append(f"| {case.name} | {adapter} | {images:,} | {cells[0]} | {cells[1]} |")
    out += ["", "| estimator (target) | " + " | ".join(f"{a}: mean MAE (cases)" for a in ADAPTERS) + " |",
            "|---|" + "---|" * len(ADAPTERS)]
    keys = sorted({(r["estimator"], r["target"]) for r in rows if r["estimator"] not in ("headline", "no probe window")})
    for estimator, target in [("headline", t) for t in TARGETS] + keys:
        cells = []
        for adapter in ADAPTERS:
            maes = [r["mae"] for r in rows if r["estimator"] == estimator and r["target"] == target
                    and r["adapter"] == adapter and r["mae"] is not None]
            cells.append(f"{sum(maes) / len(maes):.1f} ({len(maes)})" if maes else "n/a")
        out.append(f"| {estimator} ({target}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout to run (default: this one)")
    parser.add_argument("--images", type=int, default=50_000, help="images per run (default 50,000)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument("--adapters", default=",".join(ADAPTERS))
    parser.add_argument("--out", type=Path, help="result stem (default benchmarks/results/estimate_suite_<SHA>)")
    parser.add_argument("--work", type=Path, default=Path("bench-out/estimate_suite"),
                        help="rendered streams and run directories")
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's directory")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the results so far; run nothing")
    args = parser.parse_args()
    repo = args.repo.resolve()
    if args.table:
        print(table((args.out or HERE / "results" / f"estimate_suite_{git_sha(repo)}").with_suffix("")))
        return
    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.cases.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(by_name)}")
    adapters = args.adapters.split(",")
    if args.images < 6_400 or args.jobs < 1:
        raise SystemExit("--images must be at least 6,400 (one probe window) and --jobs at least 1")
    sha = git_sha(repo)
    stem = (args.out or HERE / "results" / f"estimate_suite_{sha}").with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    done = finished(stem)
    todo = [(by_name[n], a) for n in args.cases.split(",") for a in adapters if (n, a, args.images) not in done]
    print(f"{len(todo)} runs to do of {len(args.cases.split(',')) * len(adapters)} ({sha}, {args.images:,} images, "
          f"{args.jobs} job(s), {platform.node()}, {os.cpu_count()} cores)", flush=True)
    work = args.work.resolve()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_case, case, adapter, repo, args.images, work / "streams", work / "runs" / sha, sha,
                               args.keep_runs): (case.name, adapter) for case, adapter in todo}
        for future in as_completed(futures):
            name, adapter = futures[future]
            try:
                rows, windows = future.result()
            except RuntimeError as error:
                print(f"FAILED {error}", flush=True)
                continue
            if windows:  # before the case's rows: a case whose rows are written is done
                append(windows, stem.with_name(stem.name + "_windows"))
            append([{**r, "machine": f"{platform.node()} ({os.cpu_count()} cores)"} for r in rows], stem)
            head = {r["target"]: r.get("mae") for r in rows if r["estimator"] == "headline"}
            print(f"{name} {adapter}: headline MAE " + ", ".join(
                f"{t} {'n/a' if head.get(t) is None else f'{head[t]:.2f}'}" for t in TARGETS), flush=True)


if __name__ == "__main__":
    main()
