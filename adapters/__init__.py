"""Test-time adaptation methods, one per module, registered by name in `ADAPTERS`."""

from .base import ADAPTERS, Adapter, AdapterInfo, StepResult

# Importing the modules registers their adapters.
from . import cotta, eata, em_inf, eta, lcotta, norm, rdumb, sar, source, tent  # noqa: E402,F401  isort:skip

__all__ = ["ADAPTERS", "Adapter", "AdapterInfo", "StepResult"]
