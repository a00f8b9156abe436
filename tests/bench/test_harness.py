"""The harness's arithmetic on fake pipelines and a fake clock: figures, ratios, A/B order, breakdown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from resnetlab.bench.harness import BenchSpec, flops_per_step, run_benchmark
from resnetlab.bench.pipelines import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fakes import FakeClock  # noqa: E402


def fake_pipeline(name, clock, log, *, step_s, mult_adds, components=None):
    def advance(seconds, tag):
        def fn():
            clock.now += seconds
            log.append(tag)

        return fn

    parts = {part: advance(s, f"{name}.{part}") for part, s in (components or {}).items()}
    return Pipeline(name, name, batch_size=64, mult_adds=mult_adds, step=advance(step_s, name), components=parts)


def run_fake(rounds=3, iters=4, warmup=2):
    clock, log = FakeClock(), []
    builders = {
        "ours": lambda: fake_pipeline(
            "ours",
            clock,
            log,
            step_s=0.5,
            mult_adds=1000,
            components={"data": 0.01, "fwd_bwd": 0.45, "optimizer": 0.02},
        ),
        "reference": lambda: fake_pipeline("reference", clock, log, step_s=1.0, mult_adds=1000),
    }
    spec = BenchSpec(
        mode="train",
        model="cifar_resnet20",
        batch_size=64,
        device=torch.device("cpu"),
        iters=iters,
        warmup=warmup,
        rounds=rounds,
        vs_reference=True,
    )
    return run_benchmark(spec, clock=clock, builders=builders), log


def test_figures_from_fake_times():
    res, _ = run_fake()
    ours, ref = res["ours"], res["reference"]
    assert ours["step_time_s"]["median"] == pytest.approx(0.5)
    assert ours["step_time_s"]["n"] == 3 * 4  # rounds x iters, warm-up excluded
    assert ours["images_per_s"] == pytest.approx(64 / 0.5)
    assert ref["images_per_s"] == pytest.approx(64 / 1.0)
    # training: 3 passes x 2 FLOPs per multiply-add
    assert ours["flops_per_step"] == 6 * 1000 * 64
    assert ours["tflops"] == pytest.approx(6 * 1000 * 64 / 0.5 / 1e12)
    assert ours["mfu"] is None  # no peak for a CPU
    assert res["speedup_vs_reference"]["images_per_s_ratio"] == pytest.approx(2.0)
    assert res["speedup_vs_reference"]["per_round"] == pytest.approx([2.0, 2.0, 2.0])


def test_breakdown_fractions():
    b = run_fake()[0]["ours"]["breakdown"]
    assert b["data_s"] == pytest.approx(0.01)
    assert b["data_fraction"] == pytest.approx(0.02)
    assert b["optimizer_fraction"] == pytest.approx(0.04)
    assert b["outside_fwd_bwd_fraction"] == pytest.approx((0.01 + 0.02) / 0.5)
    assert b["outside_by_subtraction_fraction"] == pytest.approx(0.1)


def test_rounds_alternate_and_warm_up_each_time():
    _, log = run_fake(rounds=3, iters=4, warmup=2)
    order = [tag for i, tag in enumerate(log) if tag in ("ours", "reference") and (i == 0 or log[i - 1] != tag)]
    assert order == ["ours", "reference", "reference", "ours", "ours", "reference"]
    assert log.count("ours") == 3 * (2 + 4)
    assert log.count("reference") == 3 * (2 + 4)


def test_mfu_uses_given_peak():
    clock, log = FakeClock(), []
    spec = BenchSpec(
        mode="infer", model="resnet50", batch_size=64, device=torch.device("cpu"), iters=2, warmup=0, peak_tflops=1.0
    )
    res = run_benchmark(
        spec, clock=clock, builders={"ours": lambda: fake_pipeline("ours", clock, log, step_s=2.0, mult_adds=5e9)}
    )
    assert res["ours"]["tflops"] == pytest.approx(2 * 5e9 * 64 / 2.0 / 1e12)  # inference: 1 pass
    assert res["ours"]["mfu"] == pytest.approx(res["ours"]["tflops"] / 1.0)


def test_flops_per_step():
    assert flops_per_step(10, 2, "train") == 120
    assert flops_per_step(10, 2, "infer") == 40
