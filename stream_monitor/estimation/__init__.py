"""Label-free accuracy estimates and collapse detectors (ignite's reset/update/compute contract)."""

from .base import NotComputableError

__all__ = ["NotComputableError"]
