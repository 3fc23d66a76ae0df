"""The Python API: monitor your own classifier, adapter and stream (see docs/python-api.md).

    >>> from stream_monitor import Monitor
    >>> result = Monitor(model, adapter="tent", mean=MEAN, std=STD).run(batches)
"""

from __future__ import annotations

from .adapters import AdapterProtocol, ProtocolAdapter
from .calibration import HeldOutImages, calibrate_model
from .images import BatchFormatError
from .monitor import Monitor, MonitorError, MonitorResult
from .reader import read_events, read_probes, read_table
from .records import EstimateReading, EventReport, MonitorCallback, ProbeReport, StepReport

__all__ = ["AdapterProtocol", "BatchFormatError", "EstimateReading", "EventReport", "Monitor", "MonitorCallback",
           "MonitorError", "MonitorResult", "ProbeReport", "ProtocolAdapter", "StepReport", "read_events",
           "read_probes", "read_table", "HeldOutImages", "calibrate_model"]
