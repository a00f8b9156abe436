"""One training step: checked against SGD written out by hand on a linear classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.train import autocast_dtype, evaluate_error, make_grad_scaler, make_sgd, make_train_step

CPU = torch.device("cpu")


def test_precision_names():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None  # the paper's fp32 on every device
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("fp16", CPU) is torch.float16
    assert make_grad_scaler("bf16", CPU) is None
    assert make_grad_scaler("fp16", CPU) is not None
    for name in ("int8", "auto"):  # "auto" (bf16 on CUDA) was the default before; now a typo
        with pytest.raises(UserError):
            autocast_dtype(name, CPU)


def test_one_step_is_sgd_with_momentum_and_weight_decay_by_hand():
    torch.manual_seed(0)
    n, d, k, lr, wd = 8, 5, 3, 0.1, 1e-4
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
    x, y = torch.randn(n, 1, 1, d), torch.randint(0, k, (n,))
    w0, b0 = model[1].weight.detach().clone(), model[1].bias.detach().clone()

    step = make_train_step(
        model, make_sgd(model, lr=lr, momentum=0.9, weight_decay=wd), device=CPU, channels_last=False
    )
    loss, errors = step(x, y)

    # Cross-entropy gradient of a linear layer, written out: (softmax - onehot)^T x / N.
    xf = x.view(n, d)
    logits = xf @ w0.T + b0
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    delta = p - torch.eye(k)[y]
    grad_w, grad_b = delta.T @ xf / n, delta.mean(0)
    # First SGD step: the momentum buffer is the gradient itself (plus weight decay).
    assert torch.allclose(model[1].weight, w0 - lr * (grad_w + wd * w0), atol=1e-6)
    assert torch.allclose(model[1].bias, b0 - lr * (grad_b + wd * b0), atol=1e-6)
    assert loss.item() == pytest.approx(-(p[torch.arange(n), y].log()).mean().item(), rel=1e-5)
    assert errors.item() == int((logits.argmax(1) != y).sum())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_step_learns_a_batch_in_each_precision(precision):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 4, (16,))
    model(x)  # materialise the lazy layer
    model.to(memory_format=torch.channels_last)
    opt = make_sgd(model, lr=0.05, momentum=0.9, weight_decay=1e-4)
    step = make_train_step(model, opt, device=CPU, precision=precision, scaler=make_grad_scaler(precision, CPU))
    first = step(x, y)[0].item()
    for _ in range(30):
        last, errors = step(x, y)
    assert last.dtype == torch.float32
    assert last.item() < 0.5 * first
    wrong, images = evaluate_error(model, [(x, y)], device=CPU, precision=precision)
    assert images == 16 and wrong <= 4
    assert model.training  # evaluation puts the mode back


@pytest.fixture
def cuda_flags():
    """The process-wide cuDNN / matmul flags, put back after the test."""
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield lambda: (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def test_configure_device_sets_tf32_from_the_key_on_cuda_only(cuda_flags):
    from resnetlab.train.step import configure_device

    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults
    torch.backends.cuda.matmul.allow_tf32 = False
    before = cuda_flags()
    configure_device(CPU, tf32=True)
    assert cuda_flags() == before  # the CPU: nothing changes
    # The flags are plain settings: a CUDA device object needs no GPU to set them.
    configure_device(torch.device("cuda"), tf32=False)
    assert cuda_flags() == (True, False, False)  # the paper's fp32: no TF32 in convolutions (cuDNN's default)
    configure_device(torch.device("cuda:0"), tf32=True)
    assert cuda_flags() == (True, True, True)


@pytest.mark.parametrize("form", ["torch", "caffe"])
def test_momentum_forms_across_an_lr_change_match_their_update_rules_by_hand(form):
    """Caffe: V = m V + lr (g + wd w), w -= V; PyTorch: u = m u + (g + wd w), w -= lr u. The same at a
    constant lr; at a drop Caffe's first step still carries the old lr's velocity."""
    from resnetlab.train.step import set_group_lrs

    m, wd, lrs = 0.9, 1e-4, [0.1, 0.1, 0.01, 0.01]
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 3.0]), torch.tensor([2.0, 1.0])]
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lrs[0], momentum=m, weight_decay=wd)
    for lr, g in zip(lrs, grads):
        set_group_lrs(opt, lr, momentum_form=form)
        w.grad = g.double()
        opt.step()
    ref, v = torch.tensor([1.0, 1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for lr, g in zip(lrs, grads):  # the rule by hand, in its own variables
        d = g.double() + wd * ref
        if form == "caffe":
            v = m * v + lr * d
            ref = ref - v
        else:
            v = m * v + d
            ref = ref - lr * v
    torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=1e-12)
