"""What the machine can do and what a run used: device names, peak FLOP/s for MFU, peak memory."""

from __future__ import annotations

import platform
import resource
import sys

import torch

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, FLOP/s. Matched by substring of
# torch.cuda.get_device_name(), first match wins (so "H100 PCIe" is listed before "H100").
# "tf32" is what fp32 convolutions run on when cuDNN may use TF32 (PyTorch's default for convolutions).
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),  # SXM
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("GH200", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, which peak) for `precision` ("fp32" | "bf16" | "fp16") on a known GPU, else None.

    fp32 convolutions use TF32 tensor cores when `torch.backends.cudnn.allow_tf32` (the default), so
    the TF32 peak is the honest denominator then.
    """
    if device.type != "cuda":
        return None, "no peak table for CPUs"
    name = torch.cuda.get_device_name(device)
    kind = precision
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        kind = "tf32"
    for key, peaks in PEAK_FLOPS:
        if key in name:
            if kind in peaks:
                return peaks[kind], f"{key} dense {kind}"
            return None, f"{key}: no {kind} peak"
    return None, f"unknown device {name!r} (give --peak-tflops)"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA's max allocated since the last reset, or the process's peak RSS
    (which never resets: it covers everything the process did so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss * scale, "peak RSS of the process"
