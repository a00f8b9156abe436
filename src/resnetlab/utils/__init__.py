"""Shared helpers: checkpoint I/O, device selection, distributed set-up (one module each)."""
