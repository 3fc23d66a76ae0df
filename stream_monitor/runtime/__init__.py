"""The run loop and what it talks to; nothing in here imports Ray except `actors` and `runner`."""
