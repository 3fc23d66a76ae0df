"""Every example in configs/ loads strictly (unknown keys would raise) and names real components."""

from pathlib import Path

import pytest

from stream_monitor.adapters import ADAPTERS
from stream_monitor.sources.ccc import CCCSpec
from stream_monitor.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_examples():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.adapter.name in ADAPTERS
    CCCSpec.parse(cfg.source.stream)
