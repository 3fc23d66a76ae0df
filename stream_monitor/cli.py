"""The `stream-monitor` command line (typer).

Each command imports what it runs inside its own body: `stream-monitor --help`, `list` and a
mistyped flag then answer without loading torch, Ray or scikit-learn.

Output follows the usual conventions: `--json` prints one JSON document on stdout (everything
else goes to stderr); away from a terminal (a pipe, a job log) the output is plain: no live
display, one line per update, no wrapping at 80 columns. Exit codes are in `EXIT_CODES`.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import DEFAULT_MAX_IMAGES

#: What `stream-monitor` exits with; 130 is the shell's code for a stop by Ctrl-C (128 + SIGINT).
EXIT_CODES = {0: "finished", 1: "a run or bench failed (resume it with the same command or --resume)",
              2: "bad usage, config or input (nothing was started)",
              130: "stopped by Ctrl-C or SIGTERM after a checkpoint (resume with --resume)"}
EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."
#: Console width away from a terminal when COLUMNS is not set: a job log has no width to wrap at.
PLAIN_WIDTH = 240

app = typer.Typer(
    name="stream-monitor",
    help="Live, label-free monitoring of continual test-time adaptation on CCC-style streams.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def make_console(stderr: bool = False) -> Console:
    """Rich's console for stdout (or stderr): as rich makes it on a terminal; elsewhere as wide as
    COLUMNS says, else `PLAIN_WIDTH`, without soft wrapping (rich would wrap a job log at 80)."""
    terminal = Console(stderr=stderr)
    if terminal.is_terminal:
        return terminal
    columns = os.environ.get("COLUMNS", "")
    return Console(stderr=stderr, width=int(columns) if columns.isdigit() else PLAIN_WIDTH, soft_wrap=True)


console = make_console()
err_console = make_console(stderr=True)


def _version(show: bool) -> None:
    if show:
        from . import __version__

        typer.echo(f"stream-monitor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Live, label-free monitoring of continual test-time adaptation on CCC-style streams."""
    global console, err_console
    # made per invocation: whether stdout is a terminal is known only now (a pipe, a test runner)
    console, err_console = make_console(), make_console(stderr=True)


def _emit_json(document: object) -> None:
    """The one JSON document of a `--json` command, on stdout."""
    typer.echo(json.dumps(document, default=str, allow_nan=False))


def _finite(value: object) -> object:
    """JSON has no NaN: None instead."""
    return None if isinstance(value, float) and value != value else value


JSON_HELP = "Print one JSON document on stdout (logs go to stderr)."

LIST_WHAT = ("sources", "adapters", "estimators", "detectors", "streams", "corruptions", "models")


def estimator_lines() -> list[str]:
    """`list estimators`: name, feeds -> target and what it is, from the estimator registry."""
    from .estimation import ESTIMATORS
    from .estimation.pipeline import ADAPTER_CALIBRATED, DERIVED, HEADLINE_ORDER
    from .estimation.readings import TARGET_OF

    lines = [f"{'estimator':<21} {'feed -> target':<34} what it is"]
    for info in ESTIMATORS.infos():
        reads = ", ".join(f"{feed} -> {TARGET_OF[feed]}" for feed in info.obj.feeds)
        lines.append(f"{info.name:<21} {reads:<34} {info.description}")
    for name, (feed, target, description) in DERIVED.items():
        lines.append(f"{name:<21} {f'{feed} -> {target}':<34} {description}")
    lines.append("headline: each target's first estimator with a value, in the order "
                 + "; ".join(f"{target}: {', '.join(order)}" for target, order in HEADLINE_ORDER.items())
                 + f"; online with an adapter calibration: {', '.join(ADAPTER_CALIBRATED)}")
    return lines


# Spelt out rather than read from ADAPTERS, which would import torch for every `--help`; a test
# keeps it equal to the registry's names.
ADAPTER_NAMES = ("source", "norm", "tent", "eta", "eata", "rdumb", "sar", "cotta", "lcotta", "em-inf")
ADAPTER_HELP = f"TTA method: {', '.join(ADAPTER_NAMES)} (source: no adaptation; see `list adapters`)."
METRICS_PORT_HELP = ("Serve the run's Prometheus metrics at 127.0.0.1:PORT/metrics (metrics.port; names in "
                     "docs/metrics.md). A run on Ray also exports them through Ray's metrics agent.")


def _fail(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@app.command()
def run(
    source: Annotated[Optional[str], typer.Option(help="Stream kind: ccc or imagefolder.")] = None,
    stream: Annotated[Optional[str], typer.Option(help="CCC stream name (default CCC-Medium, speed 1000, seed 43).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Official CCC shards (DIR or URL) or an ImageFolder DIR "
                                                "(shuffled by source.seed, reshuffled each pass).")] = None,
    class_map: Annotated[Optional[Path], typer.Option(help="An image folder's classes as the model's: a JSON or YAML "
                                                      "file of {folder name: model class index}.")] = None,
    model: Annotated[Optional[str], typer.Option(help="`embedded` or a torchvision classifier name.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Weights file (torch state dict).")] = None,
    adapter: Annotated[Optional[str], typer.Option(help=ADAPTER_HELP)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adapter learning rate (default: the method's).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML config file (see show-config).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one key: section.key=value "
                                                      "(repeatable), e.g. --set probe.every=100.")] = None,
    max_images: Annotated[Optional[int], typer.Option(help=f"Stop after this many images (default "
                                                      f"{DEFAULT_MAX_IMAGES:,}; 0: the whole stream, one pass of an "
                                                      "image folder; more than a folder holds: reshuffled passes).")
                          ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Parent folder of the run directory (default runs/).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a stopped or crashed run directory.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Join an existing Ray cluster (e.g. auto or HOST:6379; "
                                                   "default: RAY_ADDRESS when set).")] = None,
    ray_host: Annotated[Optional[str], typer.Option(help="The address a local Ray binds every socket to (default "
                                                    "127.0.0.1: off the network).")] = None,
    num_gpus: Annotated[Optional[float], typer.Option(help="GPUs of the adapter actor (default: 1 when CUDA is present).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, or bf16 autocast for the adapter (GPU).")] = None,
    reset_every: Annotated[Optional[int], typer.Option(help="Reset the adapter to the source model every N steps.")] = None,
    restore_prob: Annotated[Optional[float], typer.Option(help="Stochastic restore: per step, each adapted weight "
                                                          "returns to its source value with this probability.")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    crop: Annotated[Optional[bool], typer.Option("--crop/--no-crop", help="CCC's random resized crop + flip "
                                                 "(embedded stream).")] = None,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Plain log lines instead of the live dashboard.")] = False,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run every worker in this process (debugging).")] = False,
    metrics_port: Annotated[Optional[int], typer.Option(help=METRICS_PORT_HELP)] = None,
    tensorboard: Annotated[Optional[Path], typer.Option(help="Also log the estimates, true accuracies and warnings "
                                                        "as TensorBoard scalars into this folder (extra "
                                                        "`tensorboard`).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP + " The run summary.")] = False,
) -> None:
    """Adapt on the stream; estimate accuracy without labels, warn of collapse, live.

    Labels (when the stream has them) only score: the adapter and the probe never see them.
    Exit codes: 0 finished, 1 failed (resumable), 2 bad input, 130 stopped by Ctrl-C or SIGTERM (resumable).
    """
    from .config import ConfigError, load_config
    from .metrics.prometheus import MetricsPortError
    from .models import WeightsError
    from .runtime.runner import RunError, new_run_dir, prepare_resume
    from .trackers import TrackerMissing

    flags = {
        "source.kind": source, "source.stream": stream, "source.data": data, "source.crop": crop,
        "source.class_map": str(class_map) if class_map else None,
        "source.batch_size": batch_size, "model.name": model, "model.weights": str(weights) if weights else None,
        "adapter.name": adapter, "adapter.lr": lr, "adapter.precision": precision,
        "adapter.reset_every": reset_every, "adapter.restore_prob": restore_prob,
        "runtime.address": address, "runtime.ray_host": ray_host, "runtime.num_gpus": num_gpus,
        "runtime.device": device,
        "metrics.out": str(out) if out else None, "metrics.port": metrics_port,
        "metrics.tensorboard": str(tensorboard) if tensorboard else None,
    }
    overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in flags.items() if v is not None]
    if max_images is not None:
        overrides.append(f"runtime.max_images={max_images or None}")
    if no_dashboard:
        overrides.append("dashboard.enabled=False")
    if no_ray:
        overrides.append("runtime.use_ray=False")
    overrides += set_ or []
    try:
        if resume is not None:
            cfg = prepare_resume(resume, overrides)
            _check_paths(cfg)  # the data may have moved since the run started
            _check_trackers(cfg)
            run_dir = resume
        else:
            cfg = load_config(config, overrides)
            _validate(cfg)
        _serve_metrics(cfg.metrics)
        if resume is None:
            run_dir = new_run_dir(cfg)
    except (ConfigError, RunError, FileNotFoundError, ValueError, MetricsPortError, WeightsError,
            TrackerMissing) as error:
        _fail(str(error))
    _run_and_summarise(cfg, run_dir, resume is not None, json_out)


def _check_metrics_port(port: int) -> None:
    """A bench's --metrics-port is a valid port that nothing listens on yet (the local Ray takes it)."""
    import socket

    from .config import MetricsConfig
    from .metrics.prometheus import MetricsPortError

    MetricsConfig(port=port)  # ConfigError outside 1..65535
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise MetricsPortError(f"--metrics-port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror}). "
                                   f"Pick a free port, e.g. --metrics-port {port + 1}.") from None


def _serve_metrics(metrics) -> None:
    """Open the --metrics-port endpoint before anything is written: a port in use fails here."""
    from .metrics.prometheus import serve

    if metrics.port is not None:
        serve(metrics.host, metrics.port)
        err_console.print(f"metrics: http://{metrics.host}:{metrics.port}/metrics", highlight=False)


def _validate(cfg) -> None:
    """Fail on names and files before any actor starts."""
    from stream_monitor.adapters import ADAPTERS
    from stream_monitor.sources.factory import check_folder_classes, check_source

    from .adaptation import PRECISIONS
    from .models import model_classes, model_names
    from .registry import UnknownNameError, unknown_name_message

    try:
        ADAPTERS.get(cfg.adapter.name)
    except UnknownNameError as error:
        raise ValueError(str(error)) from None
    if cfg.adapter.precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {cfg.adapter.precision!r}. Valid precisions: {', '.join(PRECISIONS)}.")
    if cfg.model.name not in model_names():
        raise ValueError(unknown_name_message("model", cfg.model.name, model_names()))
    _check_paths(cfg)
    # the model's classes are known without building it: its card, torchvision's metadata, the weights' head
    classes = model_classes(cfg.model.name, cfg.model.weights)
    check_source(cfg.source.kind, cfg.source.stream, cfg.source.data, classes.num_classes)
    if cfg.source.kind == "imagefolder":
        check_folder_classes(cfg.source.data, cfg.model.name, cfg.model.weights, cfg.source.class_map)
    _check_trackers(cfg)


def _check_trackers(cfg) -> None:
    """The trackers a run asks for are installed (TrackerMissing names the extra otherwise)."""
    from .trackers import require

    if cfg.metrics.tensorboard:
        require("tensorboard", "tensorboard", "metrics.tensorboard (--tensorboard DIR)")


def _check_paths(cfg) -> None:
    """The files a run reads exist, checked here because a worker that finds one missing fails only
    after Ray and the actors have started."""
    data, kind = cfg.source.data, cfg.source.kind
    if data is not None and "://" not in data and not Path(data).is_dir():
        what = "no such folder" if not Path(data).exists() else "not a folder"
        if kind == "ccc":
            expected = ("a folder of CCC shard streams (DIR/<stream>/serial_00000.tar, from `stream-monitor "
                        "generate`) or the URL of the official shards; leave --data out for the embedded stream")
        else:
            expected = "a folder of class sub-folders of images (<DIR>/<class>/<image>)"
        raise FileNotFoundError(f"--data {data}: {what}. Pass {expected} (source.data).")
    for flag, key, path in (("--weights ", "model.weights", cfg.model.weights),
                            ("--set estimation.duo_weights=", "estimation.duo_weights", cfg.estimation.duo_weights)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{key} {path}: no such file. Pass {flag}FILE with an existing torch state "
                                    f"dict, or leave it out for the model's own weights.")


def _run_and_summarise(cfg, run_dir: Path, resume: bool, as_json: bool = False) -> None:
    from contextlib import ExitStack

    from .dashboard.app import make_reporter
    from .models import WeightsError
    from .report import summarise
    from .runtime.runner import run as run_stream
    from .trackers import tracker_observers

    out = err_console if as_json else console  # with --json, stdout holds the summary alone
    trackers = tracker_observers(cfg)  # installed: checked before the run directory was made
    reporter = make_reporter(out, cfg.dashboard.enabled, refresh_per_second=cfg.dashboard.refresh_per_second,
                             summary=False)
    out.print(f"[bold]stream-monitor[/] run directory [cyan]{run_dir}[/]", highlight=False)
    try:
        with ExitStack() as stack:
            if hasattr(reporter, "__enter__"):
                stack.enter_context(reporter)
            outcome = run_stream(cfg, run_dir, reporter=reporter, resume=resume, extra_observers=trackers,
                                 log=getattr(reporter, "log", out.print))
    except (ValueError, FileNotFoundError, WeightsError, RuntimeError) as error:
        _fail(str(error))
    summary = summarise(run_dir)
    if as_json:
        _emit_json({
            "status": outcome.status, "run_dir": str(run_dir), "error": outcome.error,
            "stream": outcome.info.stream, "base": outcome.info.base, "model": outcome.info.model,
            "adapter": outcome.info.adapter, "device": outcome.info.device,
            "session": {"images": outcome.images, "seconds": round(outcome.seconds, 3)},
            "summary": {key: _finite(value) for key, value in summary.items()},
        })
        _exit_for(outcome, run_dir, out)
        return
    table = Table(title=f"Summary ({outcome.status})", show_header=False)
    rows = {
        "stream": outcome.info.stream, "base": outcome.info.base, "model": outcome.info.model,
        "adapter": outcome.info.adapter, "device": outcome.info.device,
        "images": f"{summary.get('images') or 0:,}", "skipped": f"{summary.get('skipped') or 0:,}",
        "online accuracy": _pair(summary, "online"), "source accuracy": _pair(summary, "source"),
        "warnings": f"{summary.get('warnings') or 0}", "resets": f"{summary.get('resets') or 0}",
        "throughput": f"{outcome.images / outcome.seconds:,.0f} img/s this session ({outcome.seconds:.1f} s)"
        if outcome.seconds else "-",
        "run directory": str(run_dir),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    _exit_for(outcome, run_dir, console)


def _exit_for(outcome, run_dir: Path, out: Console) -> None:
    """Exit 1 for a failed run, 130 for a stopped one (EXIT_CODES); return for a finished one."""
    if outcome.status == "failed":
        err_console.print(f"[bold red]error:[/] {outcome.error}\nResume with: stream-monitor run --resume {run_dir}")
        raise typer.Exit(1)
    if outcome.status == "stopped":
        out.print(f"Stopped. Resume with: stream-monitor run --resume {run_dir}")
        raise typer.Exit(130)


def _pair(summary: dict, target: str) -> str:
    est, true, mae = (summary.get(f"est_{target}_acc"), summary.get(f"true_{target}_acc"),
                      summary.get(f"{target}_acc_mae"))
    parts = [f"estimated {est:.1f}%" if est is not None else "estimated n/a",
             f"true {true:.1f}%" if true is not None else "true n/a"]
    if mae is not None:
        parts.append(f"MAE {mae:.1f} points")
    return ", ".join(parts)


@app.command()
def calibrate(
    config: Annotated[Optional[Path], typer.Option("--config", help="The run's YAML config (model, adapter, probe).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value (repeatable).")] = None,
    out: Annotated[Path, typer.Option(help="Where the calibration file goes.")] = Path("calibration.json"),
    streams: Annotated[Optional[str], typer.Option(help="Comma-separated held-out CCC streams of the meta-set "
                                                   "(default: baselines 40, 20, 0 x seeds 1, 2 at the run's speed).")] = None,
    cycles: Annotated[int, typer.Option(help="Probe cycles per held-out stream (one window each); 0: only the "
                                        "clean domain's statistics for DoC and ATC, in seconds, no f.")] = 2,
    domains: Annotated[Optional[str], typer.Option(help="Comma-separated fixed domains (Entropy Enigma's meta-set): "
                                                   "clean and CORRUPTION:SEVERITY of the held-out corruptions; "
                                                   "alone, they replace the default streams.")] = None,
    keep: Annotated[Optional[Path], typer.Option(help="Keep each domain's run directory here.")] = None,
    merge: Annotated[Optional[list[Path]], typer.Option(help="Merge calibration files made on disjoint domains "
                                                        "(e.g. in parallel) into --out instead of running.")] = None,
    data: Annotated[Optional[str], typer.Option(help="An ImageFolder of the model's classes (e.g. ImageNet val) "
                                                "as the meta-set's images instead of the embedded glyphs.")] = None,
    metaset_domains: Annotated[Optional[str], typer.Option(
        help="Comma-separated domains of the full-range meta-set, FAMILY:ARGS (clean, heldout:speckle_noise:3, "
             "compose:spatter:3+gaussian_blur:2, mix:0.5:speckle_noise:5, affine:3, invert:2, occlude:3; /whole: "
             "no random crop); default: 27 domains of the glyphs, 25 of an image folder.")] = None,
    metaset_windows: Annotated[int, typer.Option(help="Windows per meta-set domain.")] = 3,
    metaset_window_images: Annotated[int, typer.Option(help="Images per meta-set window.")] = 512,
    no_metaset: Annotated[bool, typer.Option("--no-metaset", help="Skip the full-range meta-set: no headline "
                                             "rules, no intervals (runs headline in the fixed order).")] = False,
) -> None:
    """Fit weighted flips -> source accuracy (Entropy Enigma's f) on the held-out meta-set, then the
    headline rules and their 90% intervals on the full-range meta-set.

    Runs the run's probe protocol with its model, adapter and cadence on held-out CCC streams
    and/or fixed domains (never the stream's 15 corruptions), then reads the full-range meta-set
    (shifted glyphs, or shifted images of --data) with the frozen model and the adapter and learns
    the headline rules (docs/headline-rule.md); use the file with --set estimation.calibration=FILE.
    """
    from .calibrate import calibrate as fit, default_streams
    from .calibrate_metaset import MetaSetOptions
    from .calibration import Calibration, CalibrationMismatch, merge as merge_all
    from .config import ConfigError, load_config
    from .models import WeightsError

    from stream_monitor.sources.ccc import CCCSpec
    from stream_monitor.sources.heldout import parse_domain

    try:
        if merge:
            result = merge_all([Calibration.load(p) for p in merge])
        else:
            cfg = load_config(config, [*(set_ or []), *([f"source.data={data}"] if data else [])])
            if cfg.model.name != "embedded" and cfg.source.data is None:
                raise ValueError(f"calibrate renders its meta-set from the embedded glyphs, for the embedded model; "
                                 f"for {cfg.model.name}, pass --data DIR, an ImageFolder of its classes (ImageNet "
                                 f"validation in its 1,000 wnid folders for ImageNet models).")
            fixed = tuple(d.strip() for d in domains.split(",")) if domains else ()
            for domain in fixed:
                parse_domain(domain)
            if streams:
                walked = tuple(x.strip() for x in streams.split(","))
            else:
                speed = CCCSpec.parse(cfg.source.stream).speed if cfg.source.kind == "ccc" and cfg.source.stream else 1000
                walked = () if fixed or cfg.source.data else default_streams(speed)
            for stream in walked:
                CCCSpec.parse(stream, pool="heldout")
            if cycles < 0:
                raise ValueError(f"--cycles must be 0 (statistics only) or more, got {cycles}")
            metaset = None if no_metaset or cycles == 0 else MetaSetOptions(
                tuple(d.strip() for d in metaset_domains.split(",") if d.strip()) if metaset_domains else (),
                metaset_windows, metaset_window_images)
            if metaset is not None:
                metaset.resolved(cfg.source.data)
            result = fit(cfg, fixed, keep, log=lambda m: console.print(m, highlight=False), streams=walked,
                         cycles=cycles, metaset=metaset)
    except (ConfigError, ValueError, FileNotFoundError, WeightsError, CalibrationMismatch) as error:
        _fail(str(error))
    chosen = result.domains
    path = result.save(out)
    table = Table(title=f"f per snapshot step ({len(chosen)} meta-set runs)")
    for column in ("cycle step", "windows", "a", "b", "c", "WF range", "RMSE (points)"):
        table.add_column(column)
    for step, fit_ in sorted(result.fits.items()):
        a, b, c = fit_["coefficients"]
        table.add_row(str(step), str(fit_["domains"]), f"{a:.3g}", f"{b:.4g}", f"{c:.4g}",
                      f"{fit_['range'][0]:.1f}-{fit_['range'][1]:.1f}",
                      f"{fit_['rmse']:.2f}")
    console.print(table)
    rules = ", ".join(result.rules) or "none (no full-range meta-set: the fixed order headlines, without intervals)"
    console.print(f"headline rules: {rules}; {len(result.meta_windows)} meta-set windows", highlight=False)
    console.print(f"calibration: {path}  (use with --set estimation.calibration={path})", highlight=False)


@app.command()
def bench(
    streams: Annotated[str, typer.Option(help="Comma-separated CCC streams, or `all` (the 27).")] =
        "baseline_20_transition+speed_1000_seed_43",
    adapters: Annotated[str, typer.Option(help="Comma-separated TTA methods (see `list adapters`).")] = "rdumb",
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated stream seeds (43, 44, 45): each stream "
                                                 "once per seed.")] = None,
    out: Annotated[Path, typer.Option(help="Folder of the run directories (shared storage on a multi-node "
                                      "cluster); an existing one resumes.")] = Path("bench"),
    max_images: Annotated[Optional[int], typer.Option(help=f"Images per run (default {DEFAULT_MAX_IMAGES:,}; "
                                                      "0: the whole stream).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value for every run (repeatable).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Join an existing Ray cluster (auto or HOST:6379).")] = None,
    gpus_per_run: Annotated[float, typer.Option(help="GPUs each run reserves (1 on a GPU cluster).")] = 0.0,
    cpus_per_run: Annotated[float, typer.Option(help="CPU cores each run reserves.")] = 1.0,
    max_retries: Annotated[int, typer.Option(help="Retries of a run whose worker or node died (each resumes).")] = 3,
    submit: Annotated[Optional[str], typer.Option(help="Submit this bench through the Ray Jobs API to the "
                                                  "dashboard at this address (http://HEAD:8265) and return.")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run the jobs one after the other in this process.")] = False,
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve every run's Prometheus metrics at "
                                                        "127.0.0.1:PORT/metrics: this process' endpoint with "
                                                        "--no-ray, the local Ray's metrics agent otherwise "
                                                        "(names prefixed ray_). On a cluster, its agents "
                                                        "export them (ray start --metrics-export-port).")] = None,
    mlflow: Annotated[Optional[str], typer.Option(help="Log each run to MLflow at this tracking URI (e.g. "
                                                  "file:///path/mlruns or http://host:5000; extra `mlflow`).")] = None,
    mlflow_experiment: Annotated[str, typer.Option(help="The MLflow experiment of --mlflow.")] = "stream-monitor-bench",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP + " The summary rows.")] = False,
) -> None:
    """Fan out many runs (streams x adapters x seeds) over Ray, one resumable run directory each.

    Shows a live table of every run (one line per change when stdout is not a terminal); writes
    OUT/summary.csv and OUT/summary.parquet at the end.
    """
    from rich.live import Live

    from .bench import live_rows, plan, run_local, run_on_ray, submit_job, write_summary
    from .config import ConfigError, load_config
    from .metrics.prometheus import MetricsPortError
    from .trackers import TrackerMissing, require

    out_console = err_console if json_out else console  # with --json, stdout holds the summary alone

    if metrics_port is not None and (address or submit):
        where = f"--address {address}" if address else f"--submit {submit}"
        _fail(f"--metrics-port {metrics_port} with {where}: the runs of a bench on a Ray cluster export their "
              f"metrics through the cluster's Ray metrics agents; start its nodes with `ray start "
              f"--metrics-export-port PORT` and scrape them (docs/metrics.md), and leave out --metrics-port.")
    if submit:
        try:
            job_id = submit_job(submit, sys.argv[2:] if len(sys.argv) > 2 else [])
        except Exception as error:  # the Jobs client raises plain exceptions for an unreachable dashboard
            _fail(f"could not submit to {submit}: {error}. Is the Ray dashboard (port 8265) reachable?")
        console.print(f"submitted bench job {job_id}; follow it with: ray job logs --follow {job_id} "
                      f"--address {submit}", highlight=False)
        return
    overrides = list(set_ or [])
    if max_images is not None:
        overrides.append(f"runtime.max_images={max_images or None}")
    if metrics_port is not None and no_ray:
        overrides.append(f"metrics.port={metrics_port}")
    if cpus_per_run >= 1:
        overrides.append(f"runtime.threads={int(cpus_per_run)}")
    try:
        jobs = plan([s.strip() for s in streams.split(",") if s.strip()],
                    [a.strip() for a in adapters.split(",") if a.strip()],
                    [int(s) for s in seeds.split(",")] if seeds else (), overrides)
        first = load_config(None, jobs[0].config_overrides())  # a bad --set fails here, before any run starts
        if metrics_port is not None:
            _check_metrics_port(metrics_port)
        tracker = None
        if mlflow:
            require("mlflow", "mlflow", "bench --mlflow")
            from .trackers.mlflow_bench import MlflowBench, MlflowUnusable

            try:
                tracker = MlflowBench(mlflow, mlflow_experiment)  # a bad URI fails before any run
            except MlflowUnusable as error:
                raise ValueError(str(error)) from None
        _serve_metrics(first.metrics)  # --no-ray: one endpoint for every run of this process
    except (ValueError, ConfigError, MetricsPortError, TrackerMissing) as error:
        _fail(str(error))
    out.mkdir(parents=True, exist_ok=True)
    out_console.print(f"[bold]stream-monitor bench[/]: {len(jobs)} runs in [cyan]{out}[/]", highlight=False)

    def table() -> Table:
        view = Table(title=f"bench: {out}")
        for column in ("run", "status", "images", "img/s", "est. online acc", "node"):
            view.add_column(column)
        for row in live_rows(jobs, out):
            images = f"{row['position']:,}/{row['stop']:,}" if row["position"] is not None and row["stop"] else "-"
            view.add_row(row["job"], row["status"], images,
                         f"{row['img_per_s']:,.0f}" if row["img_per_s"] else "-",
                         f"{row['est_online_acc']:.1f}%" if row["est_online_acc"] is not None else "-",
                         row["node"] or "-")
        return view

    printed: dict[str, tuple] = {}

    def plain_update() -> None:
        """Away from a terminal: one line per job whose row changed, in place of the live table."""
        for row in live_rows(jobs, out):
            shown = (row["status"], row["position"], row["est_online_acc"])
            if printed.get(row["job"]) != shown:
                printed[row["job"]] = shown
                images = f"{row['position']:,}/{row['stop']:,}" if row["position"] is not None and row["stop"] else "-"
                est = f"{row['est_online_acc']:.1f}%" if row["est_online_acc"] is not None else "-"
                rate = f"{row['img_per_s']:,.0f}" if row["img_per_s"] else "-"
                out_console.print(f"bench {row['job']}: {row['status']} | {images} img | {rate} img/s | "
                                  f"est. online {est} | node {row['node'] or '-'}", highlight=False)

    live_table = out_console.is_terminal and not out_console.is_dumb_terminal
    with (Live(table(), console=out_console, refresh_per_second=1, transient=False) if live_table
          else nullcontext()) as live:
        update = (lambda: live.update(table())) if live_table else plain_update  # noqa: E731
        if no_ray:
            rows = run_local(jobs, out, update)
        else:
            import ray

            from .runtime.actors import start_local_ray

            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # its metrics agent exports the runs' Ray metrics on --metrics-port
                start_local_ray("127.0.0.1", log_to_driver=False,
                                **({"_metrics_export_port": metrics_port} if metrics_port is not None else {}))
            try:
                rows = run_on_ray(jobs, out, gpus_per_run, cpus_per_run, max_retries, update)
            finally:
                ray.shutdown()
        update()
    csv_path, parquet_path = write_summary(rows, out)
    run_ids = None
    if tracker is not None:
        run_ids = tracker.log(rows, [job.name for job in jobs])
        out_console.print(f"mlflow: {len(run_ids)} runs in experiment {mlflow_experiment!r} at {mlflow}",
                          highlight=False)
    failed = [row for row in rows if row["status"] != "finished"]
    if json_out:
        _emit_json({"out": str(out), "summary_csv": str(csv_path), "summary_parquet": str(parquet_path),
                    "runs": [{"run": job.name, **{k: _finite(v) for k, v in row.items()},
                              **({"mlflow_run_id": run_ids[i]} if run_ids else {})}
                             for i, (job, row) in enumerate(zip(jobs, rows))]})
        if failed:
            err_console.print(f"[bold red]{len(failed)} run(s) did not finish[/]; `stream-monitor bench` with the "
                              f"same --out resumes them. First error: {failed[0]['error']}")
            raise typer.Exit(1)
        return
    final = Table(title="bench summary (accuracies in %)")
    columns = {"run": None, "status": "status", "images": "images", "true online": "true_online_acc",
               "est. online": "est_online_acc", "MAE": "online_acc_mae", "warnings": "warnings",
               "resets": "resets", "img/s": "img_per_s"}
    for header in columns:
        final.add_column(header, no_wrap=header == "run")
    for job, row in zip(jobs, rows):
        final.add_row(job.name, *[f"{v:,.1f}" if isinstance(v, float) else ("-" if v is None else f"{v:,}"
                                  if isinstance(v, int) else str(v)) for v in (row[c] for c in list(columns.values())[1:])])
    console.print(final)
    console.print(f"summary: {csv_path}, {parquet_path}", highlight=False)
    if failed:
        err_console.print(f"[bold red]{len(failed)} run(s) did not finish[/]; `stream-monitor bench` with the "
                          f"same --out resumes them. First error: {failed[0]['error']}")
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of a stream with labels.")],
    window: Annotated[int, typer.Option(help="Images per window of the collapse definition.")] = 5000,
    margin: Annotated[float, typer.Option(help="Points below the frozen model that make a window collapsed.")] = 5.0,
    sustain: Annotated[int, typer.Option(help="Consecutive collapsed windows that make an event.")] = 2,
    horizon: Annotated[int, typer.Option(help="Images before an event in which a warning counts as early.")] = 20_000,
    calibration: Annotated[Optional[Path], typer.Option(help="Estimate weighted flips again with this calibration "
                                                        "file's f (made for the run's model and adapter).")] = None,
    frozen_calibration: Annotated[Optional[Path], typer.Option(
        help="Estimate the frozen model's nuclear norm and Sentinel again with this calibration file "
             "(made for the run's model, with any adapter).")] = None,
    detectors: Annotated[Optional[str], typer.Option(
        help="Score the warnings these detectors (comma-separated, `list detectors`) give when replayed on the "
             "run's rows, fused and one by one, instead of the run's own.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Score every label-free estimate and collapse warning of a run against its labels."""
    import numpy as np

    from .calibration import Calibration, CalibrationMismatch
    from .estimation.detectors import parse_detectors
    from .evaluation import evaluate
    from .registry import UnknownNameError

    try:
        result = evaluate(run_dir, window, margin, sustain, horizon,
                          Calibration.load(calibration) if calibration else None,
                          Calibration.load(frozen_calibration) if frozen_calibration else None,
                          parse_detectors(detectors) if detectors is not None else None)
    except (FileNotFoundError, ValueError, CalibrationMismatch, UnknownNameError) as error:
        _fail(str(error))
    if json_out:
        from dataclasses import asdict

        def warning_score(score) -> dict:
            return {**asdict(score), "recall": score.recall, "false_alarms_per_million": score.false_alarms_per_million}

        _emit_json({"run_dir": str(run_dir), "window": window, "margin": margin, "sustain": sustain,
                    "horizon": horizon, "replayed_detectors": detectors,
                    "estimators": [asdict(s) for s in result["estimators"]],
                    "warnings": warning_score(result["warnings"]),
                    "per_detector": {name: warning_score(score) for name, score in result["per_detector"].items()}})
        return
    title = "Estimators against the truth of the same windows"
    table = Table(title=title + (f" (weighted flips with {calibration.name})" if calibration else ""))
    for column in ("estimator", "target", "windows", "MAE (points)", "bias", "worst", "extrapolated"):
        table.add_column(column)
    for s in result["estimators"]:
        table.add_row(s.estimator, s.target, str(s.windows), f"{s.mae:.2f}", f"{s.bias:+.2f}", f"{s.worst:.1f}",
                      str(s.extrapolated))
    if not result["estimators"]:
        table.add_row("-", "-", "0", "no probe row has both an estimate and the truth", "", "", "")
    console.print(table)
    w = result["warnings"]
    recall = f"{w.recall:.0%}" if w.recall is not None else "n/a (no collapse event)"
    leads = f"median lead {int(np.median(w.lead_times)):,} images" if w.lead_times else "no lead time"
    replayed = f" (replayed: {detectors})" if detectors is not None else ""
    console.print(f"collapse events (online < frozen source - {margin:g} points for {sustain}+ windows of "
                  f"{window:,}): {w.events}; warnings{replayed}: recall {recall}, {leads}, {w.false_alarms} false "
                  f"alarm(s) = {w.false_alarms_per_million:.1f} per million images", highlight=False)
    for name, score in result["per_detector"].items():
        alone = f"recall {score.recall:.0%}" if score.recall is not None else "no event"
        lead = f", leads {', '.join(f'{x:,}' for x in score.lead_times)}" if score.lead_times else ""
        console.print(f"  {name:<20} {alone}{lead}, {score.false_alarms} false alarm(s)", highlight=False)


@app.command("show-config")
def show_config(
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML config file.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value (repeatable).")] = None,
) -> None:
    """Print the resolved config as YAML (a starting point for --config)."""
    from .config import ConfigError, dump_config, load_config

    try:
        text = dump_config(load_config(config, set_ or []))
    except (ConfigError, FileNotFoundError) as error:
        _fail(str(error))
    # YAML, not a rich renderable: wrapped at the console's width, a long value would no longer load
    typer.echo(text, nl=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `stream-monitor run`.")],
    out: Annotated[Optional[Path], typer.Option(help="Where the HTML page goes (default RUN_DIR/report/).")] = None,
) -> None:
    """Write an HTML report with PNG plots and a summary table for a run directory."""
    from .report import write_report
    from .rundir import RunDirectoryError

    try:
        page = write_report(run_dir, out)
    except RunDirectoryError as error:
        _fail(str(error))
    console.print(f"report: {page}", highlight=False)


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help=f"One of: {', '.join(LIST_WHAT)}.")] = "sources",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP + " A list of {name, ...} objects.")] = False,
) -> None:
    """List sources, adapters, estimators, collapse detectors, CCC streams, corruptions or models."""
    from stream_monitor.sources.ccc import NOISE_POOLS, all_stream_names
    from stream_monitor.sources.corruptions import HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS
    from stream_monitor.sources.factory import SOURCE_KINDS

    from .models import model_names
    from .registry import unknown_name_message

    if json_out:
        if what not in LIST_WHAT:
            _fail(unknown_name_message("list", what, LIST_WHAT))
        _emit_json({"what": what, "items": _list_items(what)})
        return
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
    elif what == "adapters":
        from stream_monitor.adapters import ADAPTERS

        for info in ADAPTERS.infos():
            console.print(f"{info.name:<10} {info.description}", highlight=False)
    elif what == "estimators":
        for line in estimator_lines():
            console.print(line, highlight=False)
    elif what == "detectors":
        from .estimation.detectors import DEFAULT_DETECTORS, DETECTORS

        for info in DETECTORS.infos():
            mark = "default" if info.name in DEFAULT_DETECTORS else ""
            console.print(f"{info.name:<20} {mark:<8} {info.description}", highlight=False)
    elif what == "models":
        console.print("\n".join(model_names()))
    else:
        _fail(unknown_name_message("list", what, LIST_WHAT))


def _list_items(what: str) -> list[dict]:
    """`list WHAT --json`: one object per entry, with the fields the text lines show."""
    from stream_monitor.sources.ccc import NOISE_POOLS, all_stream_names
    from stream_monitor.sources.corruptions import HELD_OUT_CORRUPTIONS, STREAM_CORRUPTIONS
    from stream_monitor.sources.factory import SOURCE_KINDS

    from .models import model_names

    if what == "sources":
        return [{"name": name, "description": text} for name, text in SOURCE_KINDS.items()]
    if what == "streams":
        return [{"name": name} for name in all_stream_names()]
    if what == "corruptions":
        return [{"name": name, "role": "stream",
                 "baselines": [b for b, pool in sorted(NOISE_POOLS.items()) if name in pool]}
                for name in STREAM_CORRUPTIONS] + \
               [{"name": name, "role": "held-out", "baselines": []} for name in HELD_OUT_CORRUPTIONS]
    if what == "adapters":
        from stream_monitor.adapters import ADAPTERS

        return [{"name": info.name, "description": info.description} for info in ADAPTERS.infos()]
    if what == "estimators":
        from .estimation import ESTIMATORS
        from .estimation.pipeline import DERIVED
        from .estimation.readings import TARGET_OF

        return [{"name": info.name, "feeds": {feed: TARGET_OF[feed] for feed in info.obj.feeds},
                 "description": info.description} for info in ESTIMATORS.infos()] + \
               [{"name": name, "feeds": {feed: target}, "description": description}
                for name, (feed, target, description) in DERIVED.items()]
    if what == "detectors":
        from .estimation.detectors import DEFAULT_DETECTORS, DETECTORS

        return [{"name": info.name, "default": info.name in DEFAULT_DETECTORS, "description": info.description}
                for info in DETECTORS.infos()]
    return [{"name": name} for name in model_names()]


@app.command()
def generate(
    imagenet_val: Annotated[Path, typer.Option(help="ImageNet validation set in class folders.")],
    out: Annotated[Path, typer.Option(help="Where the stream folder of shards is written.")],
    matrix: Annotated[Path, typer.Option(help="CCC's ccc_accuracy_matrix.pickle, or our .npz.")],
    stream: Annotated[str, typer.Option(help="CCC stream name.")] = "baseline_20_transition+speed_1000_seed_43",
    max_images: Annotated[Optional[int], typer.Option(help="Stop early (default: the whole stream).")] = None,
) -> None:
    """Generate CCC webdataset shards locally from ImageNet val (resumable)."""
    from stream_monitor.sources.ccc import CCCSpec, CCCWalk
    from stream_monitor.sources.ccc_pickle import load_ccc_pickle, load_matrices_npz
    from stream_monitor.sources.generate import generate_ccc_from_imagefolder

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
    from stream_monitor.sources.accuracy_matrix import embedded_matrices

    from .models import load_model

    embedded_matrices(load_model("embedded"), images)


def main() -> None:
    # Spinning OpenMP threads make small CPU steps 20-30x slower on a loaded machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        # the completion scripts call the program by this name (_STREAM_MONITOR_COMPLETE), also
        # when it was started as `python -m stream_monitor`
        app(prog_name="stream-monitor")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
