"""Test-time adaptation methods, one per module, registered by name."""
