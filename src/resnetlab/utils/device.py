"""Device and cores chosen at run time: never a hard-coded `.cuda()`, never the machine's core count."""

from __future__ import annotations

import os

import torch

from resnetlab.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return device


def usable_cores() -> int:
    """The cores this process may run on (`os.sched_getaffinity`: taskset, cgroups' cpusets), not the
    machine's: what a default number of workers or threads is sized from."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


MAX_AUTO_WORKERS = 8  # past this, more JPEG decoders rarely feed one device faster


def resolve_workers(setting: int | None) -> int:
    """`data.workers`: a number as given (0: load in the training process); None: one worker per core
    this process may run on (`usable_cores`: taskset, cgroups' cpusets), at most 8, so that the
    default never asks for more processes than there are cores (the DataLoader warns then)."""
    if setting is not None:
        return setting
    return min(MAX_AUTO_WORKERS, usable_cores())
