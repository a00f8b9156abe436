"""The CUDA paths, checked against their CPU / fp32 / eager twins: `pytest -m cuda` on a GPU machine.

Every test here skips without CUDA, so the default CPU run only collects them. Tolerances:
- fp32 comparisons run with TF32 off (cuDNN and matmul), so only the order of summation differs:
  relative errors of 1e-6..1e-5 per op, well under the 1e-4 allowed.
- bf16 keeps 8 significant bits (relative spacing 2**-8 = 0.4%); through the 20 layers of a ResNet-20
  forward and backward, and the cancellations of batch norm's backward, the gradient of one step of a
  fresh network moves by about 8% of its norm (measured with the CPU's bf16 autocast) while pointing
  the same way (cosine > 0.996). Allowed: 20% and cosine > 0.99; a wrong cast, a missing autocast
  region or an overflow gives O(1) errors and cosines far below.
- torch.compile reorders and fuses the same fp32 arithmetic; 20 SGD steps at lr 0.1 amplify 1e-6
  differences slowly, so the first loss must agree to 1e-4 and every loss to 1e-2.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetlab.data.ondevice import DeviceTrainSource, Normalizer, image_stats
from resnetlab.models import create_model
from resnetlab.train.step import compile_model, make_sgd, make_train_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m cuda` on one)"),
]

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 means fp32 here: no TF32 in convolutions or matrix products while a test runs."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def cifar_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def one_step_update(model, x, y, *, precision: str, channels_last: bool = True) -> tuple[float, torch.Tensor]:
    """Loss and the parameter change of one `make_train_step` with lr 1, no momentum, no weight decay,
    i.e. minus the gradient, flattened."""
    model = model.to(CUDA, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    opt = make_sgd(model, lr=1.0, momentum=0.0, weight_decay=0.0)
    step = make_train_step(model, opt, device=CUDA, precision=precision, channels_last=channels_last)
    loss, _ = step(x, y)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float(loss), (before - after)


def test_bf16_step_matches_fp32():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").train()
    x, y = cifar_batch(64)
    loss32, grad32 = one_step_update(copy.deepcopy(model), x, y, precision="fp32")
    loss16, grad16 = one_step_update(copy.deepcopy(model), x, y, precision="bf16")
    assert abs(loss16 - loss32) / loss32 < 2e-2, (loss16, loss32)
    err = rel(grad16, grad32)
    cos = float(F.cosine_similarity(grad16.double(), grad32.double(), dim=0))
    assert err < 0.2 and cos > 0.99, f"bf16 gradient off by {err:.3g} of its norm (cosine {cos:.4f})"
    assert err > 0, "bf16 gave bit-identical gradients: autocast was not applied"


@pytest.mark.parametrize("name,train", [("cifar_resnet20", True), ("resnet18", False)])
def test_channels_last_equals_nchw(name, train):
    torch.manual_seed(0)
    model = create_model(name).to(CUDA).train(train)
    size = 32 if name.startswith("cifar") else 96
    x = torch.randn(8, 3, size, size, device=CUDA)
    with torch.no_grad():
        ref = copy.deepcopy(model)(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert rel(cl, ref) < 1e-4


def _trajectory(model, source, steps: int, compile_mode: str | None) -> list[float]:
    model = model.to(CUDA, memory_format=torch.channels_last).train()
    opt = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    call = compile_model(model, compile_mode) if compile_mode else model
    step = make_train_step(call, opt, device=CUDA, precision="fp32", channels_last=True)
    batches = source.batches(0)
    losses = []
    for _ in range(steps):
        loss, _ = step(*next(batches))
        losses.append(loss)
    return [float(v) for v in losses]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_follows_eager(mode):
    """20 SGD steps from the same weights on the same batches: compiled (and CUDA-graphed) = eager."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=8)
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=CUDA)
    labels = torch.randint(0, 10, (512,), device=CUDA)
    mean, _ = image_stats(images.cpu())
    norm = Normalizer(mean, None, CUDA)
    source = DeviceTrainSource(images, labels, normalizer=norm, batch_size=64, seed=0)
    eager = _trajectory(copy.deepcopy(model), source, 20, None)
    compiled = _trajectory(copy.deepcopy(model), source, 20, mode)
    assert abs(compiled[0] - eager[0]) < 1e-4, (compiled[0], eager[0])
    worst = max(abs(a - b) for a, b in zip(compiled, eager))
    assert worst < 1e-2, f"compiled ({mode}) left the eager trajectory by {worst:.3g}: {compiled} vs {eager}"


def test_on_device_augmentation_on_cuda_equals_cpu():
    """Same seed, same images: the CUDA stream of batches is the CPU one (order, crops, flips)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (300,), generator=g)
    mean, _ = image_stats(images)

    def stream(device):
        src = DeviceTrainSource(
            images.to(device), labels.to(device), normalizer=Normalizer(mean, None, device), batch_size=64, seed=3
        )
        batches = src.batches(2)  # 4 iterations per epoch: crosses an epoch boundary
        return [next(batches) for _ in range(5)]

    for (xc, yc), (xg, yg) in zip(stream(CPU), stream(CUDA)):
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)  # a fused multiply-add may round once less


def _loaded(name: str, device: torch.device, image_size: int):
    from resnetlab.evaluate.checkpoints import LoadedModel

    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(device).eval()
    g = torch.Generator().manual_seed(5)
    mean = torch.rand(3, image_size, image_size, generator=g) * 0.2 + 0.4
    meta = {"num_classes": 10, "image_size": image_size, "mean": mean, "std": None, "dataset": "imagefolder"}
    return LoadedModel(model, meta, {}, "memory")


def test_ten_crop_and_multiscale_on_cuda_equal_cpu():
    """The paper's test protocols give the same probabilities on the GPU as on the CPU.

    Tolerance 5e-3 in probability: the uint8 antialiased resize may round a pixel one grey level
    differently on the two devices; the networks themselves agree to 1e-5 (TF32 off)."""
    from resnetlab.evaluate.protocols import ensemble_probs, multiscale_probs, ten_crop

    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (3, 45, 60), dtype=torch.uint8, generator=g)
    results = {}
    for device in (CPU, CUDA):
        model = _loaded("resnet18", device, 32)
        views = ten_crop(img.to(device), 32)[None]  # (1, 10, 3, 32, 32)
        ten = ensemble_probs([model], views)[0]
        multi = multiscale_probs([model], img.to(device), flip=True)
        results[device.type] = (ten.cpu(), multi.cpu())
    for a, b in zip(results["cuda"], results["cpu"]):
        diff = float((a - b).abs().max())
        assert diff < 5e-3, f"CUDA and CPU probabilities differ by {diff:.3g}"


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def test_ddp_with_nccl_at_world_size_one(tmp_path):
    """torchrun with one process on the GPU joins an NCCL group and trains under DDP."""
    sys.path.insert(0, str(ROOT / "tests" / "train"))
    from train_fake_data import TINY

    out = tmp_path / "run"
    launcher = [TORCHRUN] if TORCHRUN else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node", "1", str(ROOT / "tests" / "train" / "train_fake_data.py")]
    cmd += ["train", "--preset", "cifar10-resnet20", "--out", str(out), "--device", "cuda", "--set", *TINY]
    cmd += ["train.max_iters=20", "train.eval_every=10", "train.checkpoint_every=10"]
    env = {**os.environ, "NCCL_DEBUG": "INFO", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "NCCL INFO" in log, "no NCCL communicator was created"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [10, 20]
    assert (out / "final.pt").exists()


def test_detection_training_step_on_cuda(tmp_path):
    """A few Faster R-CNN iterations (ResNet C4) on the GPU: finite losses, an evaluation, a final file."""
    pytest.importorskip(
        "pycocotools", reason="the detection extra is not installed: pip install 'resnetlab[detection]'"
    )
    from resnetlab.detection.train import run_detection_training

    # The detection tests' own tiny config (the shapes preset, 16 images), so this test follows it.
    spec = importlib.util.spec_from_file_location("det_train_tests", ROOT / "tests" / "detection" / "test_train.py")
    det_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(det_tests)
    cfg = det_tests.tiny_config(tmp_path / "data", device="cuda", max_iters=4, eval_every=4, checkpoint_every=4)
    summary = run_detection_training(cfg, tmp_path / "run")
    assert summary["iterations"] == 4
    assert (tmp_path / "run" / "final.pt").exists()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(abs(r["train_loss"]) < float("inf") for r in rows)


def test_bench_times_with_cuda_events():
    """The bench's clock on CUDA reads the GPU timeline: a kernel the host does not wait for still counts."""
    from resnetlab.bench.timing import CudaClock, make_clock, time_steps

    clock = make_clock(CUDA)
    assert isinstance(clock, CudaClock)
    cycles = 20_000_000  # ~10 ms at ~2 GHz
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    alone = time.perf_counter() - t0
    host_start = time.perf_counter()
    times = time_steps(lambda: torch.cuda._sleep(cycles), iters=5, warmup=1, clock=clock, device=CUDA)
    assert min(times) > 0.7 * alone, (times, alone)
    assert time.perf_counter() - host_start > 4 * 0.7 * alone  # the clock waited for the GPU at the end


def test_bench_cli_on_cuda():
    cmd = [sys.executable, "-m", "resnetlab", "bench", "train", "--model", "cifar_resnet20", "--device", "cuda"]
    cmd += ["--batch-size", "64", "--iters", "5", "--warmup", "2", "--precision", "bf16", "--channels-last", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["device"].startswith("cuda") and res["precision"] == "bf16"
    assert res["ours"]["images_per_s"] > 0 and res["ours"]["peak_memory_kind"]
