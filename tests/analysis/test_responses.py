"""Fig. 7 layer responses: which layers are hooked, and the std they report."""

import math

import pytest
import torch
from torch import nn

from resnetlab.analysis.responses import ResponseMeter, layer_responses, response_layers
from resnetlab.models import create_model


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("cifar_resnet20", {}, 18),  # 6n, n = 3
        ("cifar_plain56", {}, 54),  # 6n, n = 9
        ("cifar_resnet", {"depth": 8}, 6),
        ("resnet18", {}, 16),  # 8 basic blocks x 2
        ("resnet50", {}, 16),  # 3 + 4 + 6 + 3 bottlenecks, one 3x3 each
    ],
)
def test_hooks_capture_exactly_the_3x3_layers(name, options, expected):
    model = create_model(name, **options)
    layers = response_layers(model)
    assert len(layers) == expected
    # Each hooked BN follows a 3x3 conv: the BN's width matches a 3x3 conv in the same block.
    convs3x3 = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    convs3x3 = convs3x3[1:] if name.startswith("cifar") else convs3x3  # the CIFAR stem is 3x3 too; not hooked
    assert [bn.num_features for _, bn in layers] == [c.out_channels for c in convs3x3]
    names = [n for n, _ in layers]
    assert names[:2] == (["layer1.0.bn2", "layer1.1.bn2"] if name == "resnet50" else ["layer1.0.bn1", "layer1.0.bn2"])


def _fixed_bn(gamma, beta, eps=1e-5):
    bn = nn.BatchNorm2d(len(gamma), eps=eps).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
    return bn


def test_std_of_fixed_bn_is_analytic():
    # Input: each channel is +1/-1 in equal numbers (mean 0, population variance exactly 1).
    # In eval mode y_c = gamma_c * x / s + beta_c with s = sqrt(1 + eps), so over all elements
    #   E[y] = mean(beta),  Var[y] = mean(gamma^2) / s^2 + Var_c(beta)  (population, over channels).
    gamma, beta, eps = [1.0, 2.0], [0.0, 3.0], 1e-5
    bn = _fixed_bn(gamma, beta, eps)
    signs = torch.tensor([1.0, -1.0]).repeat(2 * 4 * 4 * 5 // 2)  # 160 values, half +1, half -1
    x = signs[torch.randperm(160, generator=torch.Generator().manual_seed(0))].reshape(5, 1, 4, 8)
    x = torch.cat([x, -x], dim=1)  # (5, 2, 4, 8)
    batches = [x[:2], x[2:3], x[3:]]  # uneven batches: the accumulation must not weight them
    stds = layer_responses(bn, batches, layers=[("bn", bn)])
    expected = math.sqrt((1.0 + 4.0) / 2 / (1 + eps) + 2.25)
    assert stds["bn"] == pytest.approx(expected, rel=1e-6)  # the BN itself computes in float32


def test_meter_matches_torch_std_over_all_elements():
    g = torch.Generator().manual_seed(1)
    ys = [torch.randn(n, 3, 5, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + 2 for n in (4, 7)]
    meter = ResponseMeter()
    for y in ys:
        meter.update(y)
    reference = torch.cat(ys).double().std(correction=0).item()
    assert meter.std() == pytest.approx(reference, rel=1e-10)


def test_inplace_relu_does_not_corrupt_bn1_statistics():
    # bn1 is followed by an in-place ReLU: a hook that kept the tensor would see no negative values.
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial running stats and affine params
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 3, 32, 32)
    stds = layer_responses(model, [(x, None)])
    block = model.layer1[0]
    with torch.no_grad():
        stem = model.forward_stem(x)
        bn1 = block.bn1(block.conv1(stem))  # computed separately, no in-place op touches it
    assert stds["layer1.0.bn1"] == pytest.approx(bn1.double().std(correction=0).item(), rel=1e-6)
    assert model.training is False


def test_max_images_and_model_mode_restored():
    model = create_model("cifar_resnet", depth=8)
    model.train()
    x = torch.randn(10, 3, 32, 32)
    y = torch.arange(10)
    seen = []
    full = layer_responses(
        model, [(x[:4], y[:4]), (x[4:], y[4:])], max_images=5, on_output=lambda out, yy: seen.append((out.shape, yy))
    )
    assert [s[0] for s in seen] == [(4, 10), (1, 10)] and seen[1][1].tolist() == [4]
    first5 = layer_responses(model, [x[:5]])
    assert full == pytest.approx(first5, rel=1e-5)  # float32 convs differ slightly with the batch size
    assert model.training is True


def test_a_sample_of_a_class_sorted_test_set_spans_the_classes():
    # A folder is read class by class: its first 200 images would be 2 of 10 classes.
    from resnetlab.analysis.responses import sample_of
    from resnetlab.data.ondevice import DeviceEvalSource, Normalizer

    labels = torch.arange(10).repeat_interleave(100)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8).contiguous()  # pixel = label
    test = DeviceEvalSource(images, labels, normalizer=Normalizer(torch.zeros(3, 2, 2), None, "cpu"), batch_size=64)
    sample = sample_of(test, 200)
    assert len(sample) == 200 and sample.batch_size == 64
    assert len(set(sample.labels.tolist())) == 10  # all ten classes (first 200 in order: 2)
    assert (sample.images[:, 0, 0, 0].long() == sample.labels).all()  # images stay with their labels
    assert sample.labels.tolist() == sorted(sample.labels.tolist())  # stored order kept
    assert torch.equal(sample_of(test, 200).labels, sample.labels)  # the same sample every time
    assert sample_of(test, 1000) is test and sample_of(test, 5000) is test


def test_responses_use_the_checkpoints_mean(tmp_path, monkeypatch):
    # Fig. 7 on a model trained on the 45k split: the test images must be normalised with the mean the
    # model was trained with (stored in its checkpoint), not with a mean recomputed over all 50k.
    import resnetlab.data
    from resnetlab.analysis.responses import checkpoint_responses
    from resnetlab.data.bundle import DataBundle
    from resnetlab.data.ondevice import DeviceEvalSource, Normalizer
    from resnetlab.utils.checkpoint import save_atomic

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (12,), generator=g)
    mean_50k = images.float().mean(0) / 255  # what building the data with val_split=0 computes
    mean_45k = torch.full((3, 32, 32), 0.3)  # the checkpoint's own (far from mean_50k on purpose)

    def fake_build_data(cfg, device, **kw):
        test = DeviceEvalSource(images, labels, normalizer=Normalizer(mean_50k, None, device), batch_size=5)
        return DataBundle(None, test, 10, 3, 32, [str(i) for i in range(10)], {"mean": mean_50k, "std": None})

    monkeypatch.setattr(resnetlab.data, "build_data", fake_build_data)
    torch.manual_seed(0)
    net = create_model("cifar_resnet20").eval()
    meta = {"dataset": "cifar10", "mean": mean_45k, "std": None, "model": "cifar_resnet20", "model_options": {}}
    config = {"data": {"name": "cifar10", "val_split": 5000}}
    save_atomic({"model": net.state_dict(), "config": config, "meta": meta}, tmp_path / "c.pt")

    got = checkpoint_responses(tmp_path / "c.pt", device=torch.device("cpu"))
    x = images.float() / 255 - mean_45k  # normalised by hand with the checkpoint's mean
    expected = layer_responses(net, [(x, labels)])
    assert list(got["layers"]) == list(expected)
    for name, std in expected.items():
        assert got["layers"][name] == pytest.approx(std, rel=1e-4)
    with torch.no_grad():
        wrong = (net(x).argmax(1) != labels).sum().item()
    assert got["test_error"] == pytest.approx(100 * wrong / 12)


def test_a_network_without_blocks_is_one_line():
    """VGG is registered (the detection baseline) but has no blocks: a UserError, not a ValueError
    reported as unexpected after the test set was read."""
    from resnetlab.errors import UserError

    with pytest.raises(UserError, match="VGG has no residual/plain blocks"):
        response_layers(create_model("vgg16", num_classes=10))
