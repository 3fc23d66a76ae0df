"""stream-monitor: live, label-free monitoring of continual test-time adaptation."""

__version__ = "0.1.0"
