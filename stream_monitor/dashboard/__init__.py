"""The terminal dashboard (rich.Live) and its plain-text fallback, both `RunObserver`s.

`state` holds the immutable `DashboardState`, `panels` the renderables that read it, `app` the observers.
"""

from __future__ import annotations

from .app import Dashboard, DashboardView, PlainReporter, make_reporter, progress_line, summary_table
from .panels import AccuracyChart, EventsPanel, Header, HealthPanel, ThroughputPanel, WarningsPanel
from .state import DashboardState

__all__ = [
    "AccuracyChart",
    "Dashboard",
    "DashboardState",
    "DashboardView",
    "EventsPanel",
    "Header",
    "HealthPanel",
    "PlainReporter",
    "ThroughputPanel",
    "WarningsPanel",
    "make_reporter",
    "progress_line",
    "summary_table",
]
