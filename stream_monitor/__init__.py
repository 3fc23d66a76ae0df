"""stream-monitor: live, label-free monitoring of continual test-time adaptation.

The Python API (docs/python-api.md) is imported on first use, so `import stream_monitor` stays
light (no torch until a name below is touched):

    >>> from stream_monitor import Monitor, read_probes
    >>> result = Monitor(model, adapter="tent", mean=MEAN, std=STD).run(batches)
    >>> read_probes(result.run_dir)[-1].online_accuracy
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (PEP 562 lazy attributes)
_LAZY = {
    "Monitor": "stream_monitor.api.monitor",
    "MonitorError": "stream_monitor.api.monitor",
    "MonitorResult": "stream_monitor.api.monitor",
    "AdapterProtocol": "stream_monitor.api.adapters",
    "ProbeReport": "stream_monitor.api.records",
    "StepReport": "stream_monitor.api.records",
    "EventReport": "stream_monitor.api.records",
    "EstimateReading": "stream_monitor.api.records",
    "MonitorCallback": "stream_monitor.api.records",
    "read_probes": "stream_monitor.api.reader",
    "read_events": "stream_monitor.api.reader",
    "read_table": "stream_monitor.api.reader",
    "RunDirectory": "stream_monitor.rundir",
    "calibrate_model": "stream_monitor.api.calibration",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
