"""Run configuration: defaults, YAML and override precedence, strict keys and types, round trip."""

from __future__ import annotations

import re

import pytest
import yaml

from stream_monitor.config import DEFAULT_MAX_IMAGES, ConfigError, RunConfig, dump_config, load_config


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_defaults():
    cfg = load_config()
    assert cfg == RunConfig()
    assert (cfg.source.kind, cfg.source.batch_size, cfg.adapter.lr, cfg.adapter.options) == ("ccc", 64, None, {})
    assert (cfg.probe.every, cfg.probe.size, cfg.probe.chunk, cfg.probe.cycle) == (100, 1000, 100, None)
    assert cfg.runtime.max_images == DEFAULT_MAX_IMAGES
    assert cfg.runtime.use_ray is True and cfg.runtime.device == "auto"


def test_overrides_win_over_the_file_which_wins_over_defaults(tmp_path):
    path = write(tmp_path / "run.yaml", {"adapter": {"name": "eata", "lr": 0.01}, "source": {"batch_size": 32}})
    cfg = load_config(path, ["adapter.lr=1e-3", "runtime.max_images=null", "probe.enabled=false"])
    assert cfg.adapter.name == "eata"            # file
    assert cfg.adapter.lr == 1e-3                # override beats file
    assert cfg.source.batch_size == 32           # file beats default
    assert cfg.runtime.max_images is None and cfg.probe.enabled is False
    assert cfg.source.kind == "ccc"              # untouched default


def test_override_values_are_parsed():
    cfg = load_config(None, ["adapter.name=rdumb", "runtime.start_timeout_s=5", "source.stream=baseline_20"])
    assert cfg.adapter.name == "rdumb" and cfg.source.stream == "baseline_20"
    assert cfg.runtime.start_timeout_s == 5.0 and isinstance(cfg.runtime.start_timeout_s, float)


def test_adapter_options_are_set_one_key_at_a_time(tmp_path):
    path = write(tmp_path / "run.yaml", {"adapter": {"options": {"e_margin": 0.4, "keep": "me"}}})
    cfg = load_config(path, ["adapter.options.e_margin=0.5", "adapter.options.steps=3"])
    assert cfg.adapter.options == {"e_margin": 0.5, "keep": "me", "steps": 3}


def test_unknown_section_suggests_and_lists_the_sections():
    with pytest.raises(ConfigError, match=r"Unknown section 'adaptr'.*Did you mean 'adapter'\?.*Valid sections: "
                                          r"source, model, adapter, probe"):
        load_config(None, ["adaptr.name=tent"])


def test_unknown_key_suggests_and_lists_the_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'probe.evrey'.*Did you mean 'every'\?.*"
                                          r"Valid keys of probe: enabled, every, size, chunk, cycle"):
        load_config(None, ["probe.evrey=10"])
    path = write(tmp_path / "run.yaml", {"runtime": {"max_image": 10}})
    with pytest.raises(ConfigError, match=r"Did you mean 'max_images'\?"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("source.batch_size=abc", r"source.batch_size must be int, got 'abc'"),
    ("source.batch_size=true", r"source.batch_size must be int, got True"),
    ("source.batch_size=1.5", r"source.batch_size must be int, got 1.5"),
    ("runtime.max_images=false", r"runtime.max_images must be int or null"),
    ("probe.enabled=1", r"probe.enabled must be bool, got 1"),
    ("adapter.name=3", r"adapter.name must be str, got 3"),
    ("adapter.lr=fast", r"adapter.lr must be float or null"),
])
def test_wrong_types_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["source.batch_size=null", "adapter.name=~", "runtime.use_ray=None"])
def test_null_is_rejected_where_not_allowed(override):
    with pytest.raises(ConfigError, match=r"cannot be empty \(null\)"):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["source.batch_size=0"], r"source.batch_size must be >= 1, got 0"),
    (["probe.every=50", "probe.cycle=49"], r"probe.cycle \(49\) must be at least probe.every \(50\)"),
    (["runtime.device=gpu"], r"runtime.device must be auto, cpu or cuda, got 'gpu'"),
    (["runtime.checkpoint_every=-1"], r"runtime.checkpoint_every must be >= 1"),
    (["source.decode_device=gpu"], r"source.decode_device must be cpu or cuda, got 'gpu'"),
    (["source.decode_device=cuda"], r"decodes JPEG shards on the GPU, and this source has none.*--data DIR\|URL"),
])
def test_section_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


SET = r"; set a valid value with --set {0}=VALUE or in the config file\."
OUT_OF_RANGE = [
    ("adapter.lr=-1", r"adapter\.lr must be > 0 \(or null: the method's default learning rate\), got -1\.0"),
    ("adapter.reset_every=0", r"adapter\.reset_every must be >= 1 steps \(or null: no periodic reset\), got 0"),
    ("adapter.restore_prob=2", r"adapter\.restore_prob must be a probability from 0 to 1 \(or null: no stochastic "
                               r"restore\), got 2\.0"),
    ("metrics.rows_per_part=0", r"metrics\.rows_per_part must be >= 1, got 0"),
    ("metrics.seconds_per_part=0", r"metrics\.seconds_per_part must be > 0 seconds, got 0\.0"),
    ("runtime.max_images=-5", r"runtime\.max_images must be >= 1 images \(or null: the whole stream, "
                              r"`--max-images 0`\), got -5"),
    ("evaluator.frozen_every=-1", r"evaluator\.frozen_every must be >= 0 batches \(0: the frozen model scores "
                                  r"none\), got -1"),
    ("runtime.start=-1", r"runtime\.start must be >= 0 \(a stream position\), got -1"),
]


@pytest.mark.parametrize("override, message", OUT_OF_RANGE)
def test_values_out_of_range_say_the_range_and_how_to_set_them(override, message):
    with pytest.raises(ConfigError, match=message + SET.format(re.escape(override.partition("=")[0]))):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["adapter.lr=null", "adapter.restore_prob=0", "adapter.restore_prob=1",
                                      "evaluator.frozen_every=0", "runtime.max_images=null", "runtime.max_images=1"])
def test_values_at_the_edges_of_their_range_are_allowed(override):
    load_config(None, [override])


def test_probe_cycle_equal_to_every_is_allowed():
    assert load_config(None, ["probe.every=20", "probe.cycle=20"]).probe.cycle == 20


@pytest.mark.parametrize("override", ["adapter", "=1", "adapter=tent"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError, match="Override"):
        load_config(None, [override])


def test_dump_then_load_is_the_same_config(tmp_path):
    cfg = load_config(None, ["adapter.name=sar", "adapter.lr=0.002", "adapter.options.e_margin=0.3",
                             "runtime.max_images=null", "probe.cycle=200", "source.stream=baseline_20"])
    path = tmp_path / "config.yaml"
    text = dump_config(cfg, path)
    assert path.read_text() == text
    assert load_config(path) == cfg
    assert load_config(path) != RunConfig()


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config("/nonexistent/run.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_file_that_is_no_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path / "run.yaml", text))


def test_invalid_yaml_and_non_mapping_section(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "adapter: [unclosed\n"))
    with pytest.raises(ConfigError, match="adapter must be a mapping"):
        load_config(write(tmp_path / "list.yaml", {"adapter": ["tent"]}))


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == RunConfig()


def test_a_nested_override_below_a_plain_value_is_a_config_error(tmp_path):
    path = write(tmp_path / "run.yaml", {"adapter": {"options": 3}, "source": {"batch_size": 32}})
    with pytest.raises(ConfigError, match=r"adapter.options is 3, not a mapping"):
        load_config(path, ["adapter.options.steps=1"])
    with pytest.raises(ConfigError, match=r"source.batch_size is 32, not a mapping"):
        load_config(path, ["source.batch_size.x=1"])


def test_the_fused_warnings_detectors_are_checked_by_name():
    assert load_config(None, []).estimation.warning == "divergence,entropy-ema,top-class-share,marginal-entropy,chance-agreement"
    load_config(None, ["estimation.detectors=entropy-ema"])  # advisories only: the loop says so in the log
    with pytest.raises(ConfigError, match=r"estimation\.warning: .*Did you mean 'flip-rate'"):
        load_config(None, ["estimation.warning=flip-rat"])
