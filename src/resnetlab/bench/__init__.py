"""Throughput benchmarks: `resnetlab bench train|infer` (images/s, step time, memory, TFLOP/s, MFU).

`run_benchmark(BenchSpec(...))` times our pipeline (the real training step and data path on synthetic
data) and, optionally, a reference pipeline written the usual way, in alternating rounds.
"""

from resnetlab.bench.harness import FLOPS_NOTE, BenchSpec, flops_per_step, run_benchmark
from resnetlab.bench.timing import StepStats, summarize, time_steps

__all__ = ["FLOPS_NOTE", "BenchSpec", "StepStats", "flops_per_step", "run_benchmark", "summarize", "time_steps"]
