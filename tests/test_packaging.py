"""setup.cfg lists every package, each under the stream_monitor namespace."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_every_folder_with_an_init_is_a_listed_package():
    cfg = _setup_cfg()
    mapping = dict(line.replace(" ", "").split("=") for line in _lines(cfg["options"]["package_dir"]))
    listed = set(_lines(cfg["options"]["packages"]))
    found = set()
    for folder, name in {"stream_monitor": "stream_monitor", **{v: k for k, v in mapping.items()}}.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name,) + parts))
    assert found == listed, f"setup.cfg packages differ from the folders: missing {sorted(found - listed)}, " \
                            f"stale {sorted(listed - found)}"


def test_no_top_level_name_but_stream_monitor():
    listed = _lines(_setup_cfg()["options"]["packages"])
    assert {name.split(".")[0] for name in listed} == {"stream_monitor"}
