"""The import graph of the project's packages: no cycle, and the layers point one way.

Function-local imports count: an import hidden in a function body is still an edge between modules,
and the cycles this test exists for were hidden that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder -> the package name it installs as (setup.cfg's package_dir)
PACKAGES = {"stream_monitor": "stream_monitor", "adapters": "stream_monitor.adapters",
            "sources": "stream_monitor.sources"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((name,) + parts)] = path
    return out


MODULES = modules()


def imported(module: str) -> set[str]:
    """The project modules `module` imports, at any depth of its code."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            names = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name != module:
                out.add(name)
    return out


GRAPH = {module: imported(module) for module in MODULES}


def test_no_module_imports_itself_back():
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [cycle for module in sorted(MODULES) if (cycle := cycle_from(module))]
    assert not cycles, " -> ".join(cycles[0])


@pytest.mark.parametrize("lower, upper", [
    ("stream_monitor.calibration", "stream_monitor.runtime"),
    ("stream_monitor.estimation", "stream_monitor.runtime"),
    ("stream_monitor.estimation", "stream_monitor.calibration"),
    ("stream_monitor.adapters", "stream_monitor.runtime"),
    ("stream_monitor.sources", "stream_monitor.runtime"),
])
def test_layers_point_one_way(lower, upper):
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if m.startswith(lower)
                   for t in targets if t.startswith(upper))
    assert not wrong
