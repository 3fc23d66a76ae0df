"""Run configuration: YAML into frozen dataclasses, `--set key=value` overrides, strict keys.

One dataclass per section (style_anchors.md 4.6). Unknown keys are an error with a "did you
mean" suggestion; values are checked against the field's type; the resolved config is written
to the run directory, so a run can be repeated or resumed from it alone.

    >>> cfg = load_config(None, ["adapter.name=tent", "runtime.max_images=20000"])
    >>> cfg.adapter.name
    'tent'
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .registry import suggest

#: `stream-monitor run` with no flags: CCC-Medium on the embedded base, sized to finish in about
#: 5 minutes on a 2-core machine.
DEFAULT_MAX_IMAGES = 75_000


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and what is valid."""


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "ccc"                 # ccc or imagefolder
    stream: Optional[str] = None      # CCC stream name; None: CCC-Medium, speed 1000, seed 43
    data: Optional[str] = None        # official CCC shards (DIR or URL) or an ImageFolder DIR
    seed: int = 0                     # an image folder's shuffle (each further pass reshuffled from it)
    # an image folder's {folder name: model class index} (JSON or YAML), where its folders are not
    # the model's classes in the model's order (sources/class_map.py)
    class_map: Optional[str] = None
    crop: bool = True                 # CCC's random resized crop + flip (embedded stream)
    batch_size: int = 64
    num_actors: int = 1               # source actors rendering slices in parallel (Ray only)
    chunk_batches: int = 4            # batches one source task renders
    decode_device: str = "cpu"        # where source actors decode JPEG shards: cpu, or cuda (nvjpeg)
    num_gpus: float = 0.1             # GPU share of each source actor when decode_device is cuda

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "num_actors", "chunk_batches")
        if self.decode_device not in ("cpu", "cuda"):
            raise ConfigError(f"source.decode_device must be cpu or cuda, got {self.decode_device!r}")
        if self.decode_device == "cuda" and self.data is None:
            raise ConfigError("source.decode_device=cuda decodes JPEG shards on the GPU, and this source has none "
                              "(the embedded stream is rendered, not decoded): pass --data DIR|URL with CCC shards, "
                              "or leave source.decode_device at cpu")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "embedded"            # `embedded` or a torchvision classifier name
    weights: Optional[str] = None     # a weights file (torch state dict)


@dataclass(frozen=True)
class AdapterConfig:
    name: str = "rdumb"               # the Entropy Enigma setting: ETA with a reset every 1,000 steps
    lr: Optional[float] = None        # None: the method's default
    precision: str = "fp32"           # fp32, or bf16 autocast (GPU)
    reset_every: Optional[int] = None  # reset to the source model every N steps
    restore_prob: Optional[float] = None  # stochastic restore probability per step
    options: dict = field(default_factory=dict)  # further keyword options of the method

    def __post_init__(self) -> None:
        # Checked here, not by the method: a bad value must fail before a run directory exists.
        _check(self, "lr", self.lr is None or self.lr > 0, "> 0 (or null: the method's default learning rate)")
        _check(self, "reset_every", self.reset_every is None or self.reset_every >= 1,
               ">= 1 steps (or null: no periodic reset)")
        _check(self, "restore_prob", self.restore_prob is None or 0 <= self.restore_prob <= 1,
               "a probability from 0 to 1 (or null: no stochastic restore)")


@dataclass(frozen=True)
class ProbeConfig:
    """The Entropy Enigma protocol (Press et al., ICML 2024): a reference set from the current
    stream, reference predictions at the start of a cycle, flips at every snapshot."""

    enabled: bool = True
    every: int = 100                  # adapter steps between snapshots (each costs `size` forwards)
    size: int = 1000                  # reference images
    chunk: int = 100                  # images per probe forward (the paper's 100)
    cycle: Optional[int] = None       # steps per cycle; None: the adapter's reset period, else 1000
    num_gpus: float = 0.0             # GPU share of the probe actor (e.g. 0.25 beside the adapter)
    # also count flips on a second reference set, `size` images drawn uniformly from the whole
    # cycle so far (their reference predictions by the cycle-start snapshot): on a drifting stream
    # the first images describe the cycle's first domain, not the window
    spread: bool = True
    # adapter steps between flip counts (a multiple of `every`); None: only at the cycle's last
    # snapshot, Entropy Enigma's 990 of 1,000. The other snapshots give the window estimates
    # without the probe's forwards (docs/monitoring-cost.md: what the flips earn for their cost)
    flips_every: Optional[int] = None

    def __post_init__(self) -> None:
        _positive(self, "every", "size", "chunk")
        if self.cycle is not None and self.cycle < self.every:
            raise ConfigError(f"probe.cycle ({self.cycle}) must be at least probe.every ({self.every}) steps")
        if self.flips_every is not None and (self.flips_every < 1 or self.flips_every % self.every):
            raise ConfigError(f"probe.flips_every ({self.flips_every}) must be a positive multiple of probe.every "
                              f"({self.every}), or null to count flips only at the cycle's last snapshot")


@dataclass(frozen=True)
class EvaluatorConfig:
    """Ground truth, when the stream has labels; it never reaches adapter, probe or estimators."""

    window: int = 5000                # images per reported window
    frozen_every: int = 8             # score the frozen source model on every N-th batch (0: off)

    def __post_init__(self) -> None:
        _positive(self, "window")
        _check(self, "frozen_every", self.frozen_every >= 0, ">= 0 batches (0: the frozen model scores none)")


def _default_detectors() -> str:
    """detectors.DEFAULT_DETECTORS, spelt as `estimation.detectors`; imported when a config is built
    because stream_monitor.estimation loads torch, which `import stream_monitor.config` does not."""
    from .estimation.detectors import DEFAULT_DETECTORS

    return ",".join(DEFAULT_DETECTORS)


def _default_warning() -> str:
    """detectors.DEFAULT_WARNING, spelt as `estimation.warning`."""
    from .estimation.detectors import DEFAULT_WARNING

    return ",".join(DEFAULT_WARNING)


@dataclass(frozen=True)
class EstimationConfig:
    """Label-free estimates. `calibration`: a file from `stream-monitor calibrate`; None uses the
    one shipped for the model and adapter when there is one (ResNet-50: the paper's f)."""

    calibration: Optional[str] = None
    # the frozen source model's feed (its nuclear norm, Sentinel, DoC, ATC) from this file instead:
    # one made for the same model with any adapter serves, e.g. a fast `--set adapter.name=source` one
    frozen_calibration: Optional[str] = None
    # label-free recovery: a collapse warning resets the adapter to the source model (and re-arms
    # the detectors), as AETTA's and SAR's recovery rules do on their own signals
    reset_on_warning: bool = False
    # AETTA (Lee et al., CVPR 2024): dropout forwards of the served model on every N-th batch
    # (0: off; they cost `aetta_forwards` extra forwards of that batch), at this dropout rate
    # (AETTA's 0.4 for CIFAR-10-C, 0.2 for ImageNet-C)
    aetta_every: int = 0
    aetta_dropout: float = 0.4
    aetta_forwards: int = 10
    # Asymmetric Duos: a frozen smaller model served by its own actor beside the adapter, on every
    # batch (e.g. embedded-small beside embedded, resnet18 beside resnet50); None: off
    duo_model: Optional[str] = None
    duo_weights: Optional[str] = None
    # the risk-test detector's false-alarm budget (split evenly between the clean error's upper bound,
    # the flag rate's confidence sequence and the flags' precision bound), its tolerance over the clean error (a rate), and
    # the images between restarts of its confidence sequence
    risk_delta: float = 0.05
    risk_tolerance: float = 0.05
    risk_restart_every: int = 512
    # the detectors a run watches, comma-separated (`stream-monitor list detectors`)
    detectors: str = field(default_factory=_default_detectors)
    # those of them that form the (fused) collapse warning, which reset_on_warning acts on; the
    # others are advisory: their events are recorded and shown, but they raise no warning; those not
    # in estimation.detectors are left out, and with none of them there the run only gives advisories
    # (docs/warnings.md: the rule and the benchmark behind it)
    warning: str = field(default_factory=_default_warning)

    def __post_init__(self) -> None:
        from .estimation.detectors import parse_detectors
        from .registry import UnknownNameError

        try:
            parse_detectors(self.detectors)
        except UnknownNameError as error:
            raise ConfigError(f"estimation.detectors: {error} Separate several with commas; an empty value "
                              f"turns the warnings off.") from None
        try:
            parse_detectors(self.warning)
        except UnknownNameError as error:
            raise ConfigError(f"estimation.warning: {error} Separate several with commas.") from None
        if not 0.0 < self.risk_delta < 1.0:
            raise ConfigError(f"estimation.risk_delta is the risk test's false-alarm probability, in (0, 1); got "
                              f"{self.risk_delta}. 0.05 allows one false alarm in 20 runs at most.")
        if not 0.0 <= self.risk_tolerance < 1.0:
            raise ConfigError(f"estimation.risk_tolerance is an error rate over the clean error, in [0, 1); got "
                              f"{self.risk_tolerance}, e.g. 0.05 for 5 points.")
        _positive(self, "risk_restart_every")


@dataclass(frozen=True)
class RuntimeConfig:
    max_images: Optional[int] = DEFAULT_MAX_IMAGES  # None: the whole stream
    start: int = 0                    # first stream position
    device: str = "auto"              # auto (cuda when present), cpu or cuda
    use_ray: bool = True              # False: the whole loop in-process (debugging, tests)
    address: Optional[str] = None     # an existing Ray cluster; None starts a local one
    # without `address` or RAY_ADDRESS: the address every socket of the local Ray binds to;
    # loopback keeps it off the network, this machine's IP lets other machines join it
    ray_host: str = "127.0.0.1"
    num_gpus: Optional[float] = None  # GPUs of the adapter actor; None: 1 when CUDA is present
    max_in_flight: int = 4            # adapter steps queued at once
    checkpoint_every: int = 500       # adapter steps between checkpoints
    start_timeout_s: float = 300.0  # actors that cannot be placed by then end the run; errors come at once
    threads: Optional[int] = None     # torch threads per actor; None: the cores split between actors

    def __post_init__(self) -> None:
        _positive(self, "max_in_flight", "checkpoint_every")
        _check(self, "max_images", self.max_images is None or self.max_images >= 1,
               ">= 1 images (or null: the whole stream, `--max-images 0`)")
        _check(self, "start", self.start >= 0, ">= 0 (a stream position)")
        _check(self, "threads", self.threads is None or self.threads >= 1,
               ">= 1 (or null: the cores split between actors)")
        _check(self, "num_gpus", self.num_gpus is None or self.num_gpus >= 0, ">= 0 (or null: 1 when CUDA is present)")
        _check(self, "start_timeout_s", self.start_timeout_s > 0, "> 0 seconds")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"runtime.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class MetricsConfig:
    out: str = "runs"                 # parent folder of run directories
    rows_per_part: int = 10_000
    seconds_per_part: float = 30.0    # a running run's parts become readable this often
    # Prometheus: this process serves the run's metrics at http://host:port/metrics (docs/metrics.md)
    port: Optional[int] = None        # None: no endpoint of its own
    host: str = "127.0.0.1"           # loopback: only this machine scrapes it
    ray: bool = True                  # on Ray, also record them as Ray metrics (exported with the prefix ray_)
    tensorboard: Optional[str] = None  # also log scalars to TensorBoard under this folder (extra `tensorboard`)

    def __post_init__(self) -> None:
        _positive(self, "rows_per_part")
        _check(self, "seconds_per_part", self.seconds_per_part > 0, "> 0 seconds")
        _check(self, "port", self.port is None or 1 <= self.port <= 65535,
               "a TCP port in 1..65535 (or null: no endpoint), e.g. --metrics-port 9464")


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True              # the live dashboard when stdout is a terminal
    refresh_per_second: float = 2.0


@dataclass(frozen=True)
class RunConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    estimation: EstimationConfig = field(default_factory=EstimationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The defaults, then the YAML file at `path`, then `section.key=value` overrides.

    Raises:
        ConfigError: unreadable file, unknown section or key (with a suggestion), wrong type.
        FileNotFoundError: `path` does not exist.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Config file {path} not found; `stream-monitor show-config` prints a full one.")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (source, model, adapter, ...)")
        data = loaded or {}
    for override in overrides:
        key, value = _parse_override(override)
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"Override {override!r} must name a section and a key, e.g. adapter.lr=1e-3")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"Section {section!r} must be a mapping")
        target = data[section]
        # adapter.options.K=V sets one method option
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"Override {override!r}: {section}.{parent} is {target!r}, not a mapping")
        target[leaf] = value
    return build(RunConfig, data, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: RunConfig, path: str | Path | None = None) -> str:
    """The resolved config as YAML (written to `path` when given)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def build(cls: type, data: Any, where: str) -> Any:
    """A `cls` dataclass from a mapping, checking keys and value types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            kind = "section" if not where else "key"
            raise ConfigError(f"Unknown {kind} {name!r}.{suggest(str(key), list(fields))} "
                              f"Valid {kind}s{' of ' + where if where else ''}: {', '.join(fields)}.")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build(hint, value, name)
        else:
            values[key] = _check_type(name, value, hint)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


def _check_type(name: str, value: Any, hint: Any) -> Any:
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{name} cannot be empty (null)")
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (bool, str, dict) and isinstance(value, kind):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"{name} must be {names}, got {value!r}")


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {text!r} must look like section.key=value, e.g. adapter.lr=1e-3")
    raw = raw.strip()
    if raw.lower() in ("null", "none", "~"):
        return key.strip(), None
    if raw.lower() in ("true", "false"):
        return key.strip(), raw.lower() == "true"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as adapter.name=tent
    return key.strip(), value


def _positive(config: Any, *names: str) -> None:
    for name in names:
        _check(config, name, getattr(config, name) >= 1, ">= 1")


def _check(config: Any, name: str, ok: bool, valid: str) -> None:
    """ConfigError naming the key, the bad value, the valid range and how to set it, unless `ok`."""
    if not ok:
        key = f"{type(config).__name__.removesuffix('Config').lower()}.{name}"
        raise ConfigError(f"{key} must be {valid}, got {getattr(config, name)!r}; set a valid value with "
                          f"--set {key}=VALUE or in the config file.")
