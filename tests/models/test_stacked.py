"""`stack_models`: K networks as one grouped network, checked against the K networks run one by one."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from resnetlab.models import create_model
from resnetlab.models.resnet import Bottleneck, ResNet
from resnetlab.models.stacked import check_stackable, stack_models, zero_grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def twins(names: list[str], seeds: list[int]) -> tuple[list, list]:
    """(networks to stack, independent copies of the same weights to run one by one)."""
    models = []
    for name, seed in zip(names, seeds):
        torch.manual_seed(seed)
        models.append(create_model(name, depth=8))
    return models, [copy.deepcopy(m) for m in models]


MIX = (["cifar_resnet", "cifar_plain", "cifar_resnet"], [0, 1, 2])  # a residual/plain mix, three seeds


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_backward_and_bn_statistics_equal_each_network(channels_last):
    models, copies = twins(*MIX)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    wide = stack_models(models, memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 3, 16, 16, generator=g) for _ in models]
    ys = [torch.randint(0, 10, (6,), generator=g) for _ in models]

    logits = wide(torch.cat(xs, dim=1).contiguous(memory_format=fmt))  # (N, K, classes)
    assert logits.shape == (6, 3, 10)
    losses = F.cross_entropy(logits.transpose(1, 2), torch.stack(ys, 1), reduction="none").mean(0)
    zero_grads(wide)
    losses.sum().backward()
    for k, (model, ref) in enumerate(zip(models, copies)):
        ref_logits = ref(xs[k])
        assert rel(logits[:, k], ref_logits) < 1e-5
        F.cross_entropy(ref_logits, ys[k]).backward()
        ours, theirs = dict(model.named_parameters()), dict(ref.named_parameters())
        for name in theirs:
            assert rel(ours[name].grad, theirs[name].grad) < 1e-4, name
        for name, buf in ref.named_buffers():
            if buf.is_floating_point():
                assert rel(model.get_buffer(name), buf) < 1e-5, name
            else:
                assert int(model.get_buffer(name)) == int(buf) == 1  # num_batches_tracked
    # The three networks really differ (seeds, plain vs residual), so the checks above can fail.
    assert rel(logits[:, 0], logits[:, 2]) > 0.1 and rel(logits[:, 0], logits[:, 1]) > 0.1


def test_eval_mode_uses_each_networks_statistics():
    models, copies = twins(*MIX)
    wide = stack_models(models)
    xs = [torch.randn(4, 3, 16, 16) for _ in models]
    wide(torch.cat(xs, 1))  # one training forward: running statistics move
    for k, ref in enumerate(copies):
        ref(xs[k])
    wide.eval()
    x_eval = [torch.randn(5, 3, 16, 16) for _ in models]
    out = wide(torch.cat(x_eval, 1))
    for k, (model, ref) in enumerate(zip(models, copies)):
        ref.eval()
        assert rel(out[:, k], ref(x_eval[k])) < 1e-5
        assert rel(model.eval()(x_eval[k]), ref(x_eval[k])) < 1e-5  # the model alone, on the shared weights


def test_bottleneck_and_projection_shortcuts_stack():
    torch.manual_seed(0)
    nets = [
        ResNet(block=Bottleneck, layers=(1, 1), widths=(4, 8), stem="imagenet", num_classes=5, shortcut="B")
        for _ in range(2)
    ]
    copies = [copy.deepcopy(n) for n in nets]
    wide = stack_models(nets)
    xs = [torch.randn(3, 3, 32, 32) for _ in nets]
    out = wide(torch.cat(xs, 1))
    for k, ref in enumerate(copies):
        assert rel(out[:, k], ref(xs[k])) < 1e-5


def test_models_view_the_shared_weights_and_save_alone():
    models, copies = twins(*MIX)
    wide = stack_models(models)
    with torch.no_grad():
        wide.conv1.weight[16:32].add_(1.0)  # model 1's stem filters
    assert torch.equal(models[1].conv1.weight, copies[1].conv1.weight + 1.0)
    assert torch.equal(models[0].conv1.weight, copies[0].conv1.weight)

    state = models[1].state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    alone = io.BytesIO()
    torch.save(copies[1].state_dict(), alone)
    assert abs(len(buffer.getvalue()) - len(alone.getvalue())) < 2048  # this model's weights, not all three
    fresh = create_model("cifar_plain", depth=8)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.conv1.weight, models[1].conv1.weight)

    # Loading into a stacked model writes into the wide network.
    models[0].load_state_dict(copies[2].state_dict())
    assert torch.equal(wide.fc.weight[:10], copies[2].fc.weight)


def test_an_optimizer_per_model_updates_its_rows_only():
    models, copies = twins(*MIX)
    wide = stack_models(models)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    x = torch.randn(4, 9, 16, 16)
    zero_grads(wide)
    wide(x)[:, 1].sum().backward()  # only model 1's output has a gradient
    for opt in optimizers:
        opt.step()
    assert torch.equal(models[0].conv1.weight, copies[0].conv1.weight)
    assert torch.equal(models[2].fc.weight, copies[2].fc.weight)
    assert not torch.equal(models[1].conv1.weight, copies[1].conv1.weight)


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["cifar_resnet20", "cifar_resnet32"], "differs from model 0"),
        (["resnet18", "plain18"], "differs from model 0"),  # projection shortcuts: weights a plain net lacks
        (["vgg16", "vgg16"], "no grouped version"),
    ],
)
def test_networks_that_cannot_stack_are_refused(names, match):
    with torch.device("meta"):
        nets = [create_model(n) for n in names]
    with pytest.raises(ValueError, match=match):
        check_stackable(nets)
