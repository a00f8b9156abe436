"""Architecture of the paper's networks: shortcuts (sec. 3.3), strides, shapes (table 1, sec. 4.2)."""

import pytest
import torch
import torchvision
from torch import nn

from resnetlab.models import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ZeroPadShortcut,
    cifar_resnet,
    create_model,
    imagenet_resnet,
    list_models,
)


def blocks(model: ResNet) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def on_meta(build, *args, **kwargs):
    """Structure-only checks build on the meta device: no memory, no time spent on initialisation."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def params_in(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def test_option_a_shortcuts_have_no_parameters():
    model = cifar_resnet(20)
    shortcuts = [b.downsample for b in blocks(model)]
    assert sum(params_in(s) for s in shortcuts) == 0
    # Zero-padding only where 16 -> 32 and 32 -> 64 channels (stride 2); identity elsewhere.
    assert [type(s).__name__ for s in shortcuts if s is not None] == ["ZeroPadShortcut"] * 2


def test_option_a_pads_zero_channels_and_subsamples():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, 0::2, 0::2])
    assert not y[:, 16:].any()


@pytest.mark.parametrize("depth, projections", [(34, 3), (50, 4)])  # layer1 of a bottleneck net widens 64 -> 256
def test_option_b_projects_only_where_shapes_change(depth, projections):
    model = on_meta(imagenet_resnet, depth, shortcut="B")
    projected = [b for b in blocks(model) if b.downsample is not None]
    assert len(projected) == projections
    for b in projected:
        conv, bn = b.downsample
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and isinstance(bn, nn.BatchNorm2d)
    for name in ("layer2", "layer3", "layer4"):
        assert getattr(model, name)[0].downsample is not None


def test_option_c_projects_every_block():
    model = on_meta(imagenet_resnet, 34, shortcut="C")
    assert all(isinstance(b.downsample, nn.Sequential) and params_in(b.downsample) > 0 for b in blocks(model))
    # Table 3 ordering of sizes: A < B < C (A: no projection at all).
    sizes = [params_in(on_meta(imagenet_resnet, 34, shortcut=s)) for s in "ABC"]
    assert sizes[0] < sizes[1] < sizes[2]


def test_plain_nets_have_no_shortcuts():
    for model in (on_meta(imagenet_resnet, 18, residual=False), cifar_resnet(20, residual=False, shortcut="C")):
        assert all(b.downsample is None and not b.residual for b in blocks(model))


def test_stride_in_1x1_vs_3x3(depth=50):  # 101/152 share the code; their shapes are checked below
    paper = on_meta(imagenet_resnet, depth)  # the Caffe release: stride on the first 1x1
    v15 = on_meta(imagenet_resnet, depth, stride_in_1x1=False)
    tv = on_meta(getattr(torchvision.models, f"resnet{depth}"))  # torchvision: stride on the 3x3
    for name in ("layer2", "layer3", "layer4"):
        p, v, t = getattr(paper, name)[0], getattr(v15, name)[0], getattr(tv, name)[0]
        assert (p.conv1.stride, p.conv2.stride) == ((2, 2), (1, 1))
        assert (v.conv1.stride, v.conv2.stride) == (t.conv1.stride, t.conv2.stride) == ((1, 1), (2, 2))
        assert p.downsample[0].stride == v.downsample[0].stride == (2, 2)
    for model in (paper, v15):  # layer1 and the later blocks never stride
        assert all(b.conv1.stride == b.conv2.stride == (1, 1) for b in model.layer1)
        assert all(b.conv1.stride == b.conv2.stride == (1, 1) for b in model.layer4[1:])


@pytest.mark.parametrize(
    "build, last",
    [
        (lambda: imagenet_resnet(18, zero_init_residual=True), "bn2"),
        (lambda: imagenet_resnet(50, zero_init_residual=True), "bn3"),
        (lambda: cifar_resnet(20, zero_init_residual=True), "bn2"),
    ],
)
def test_zero_init_residual_zeroes_last_bn_gamma(build, last):
    model = build()
    for b in blocks(model):
        assert not getattr(b, last).weight.any()
        assert torch.all(b.bn1.weight == 1)
    assert torch.all(model.bn1.weight == 1)
    default = imagenet_resnet(18)
    assert all(torch.all(b.bn2.weight == 1) for b in blocks(default))


def test_zero_init_residual_refused_for_plain_nets():
    with pytest.raises(ValueError, match="residual"):
        cifar_resnet(20, residual=False, zero_init_residual=True)


def test_bad_cifar_depth():
    for depth in (21, 6, 2, 0):
        with pytest.raises(ValueError, match="6n\\+2"):
            cifar_resnet(depth)
    with pytest.raises(ValueError, match="6n\\+2"):
        create_model("cifar_resnet", depth=22)
    with pytest.raises(ValueError, match="depth"):
        imagenet_resnet(42)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50") as e:
        create_model("resnet51")
    assert "cifar_resnet110" in str(e.value)
    with pytest.raises(TypeError, match="cifar_resnet20"):
        create_model("cifar_resnet20", stride_in_1x1=False)  # basic blocks only


def test_stray_options_are_errors():
    for name, option in (("resnet18", {"d": 50}), ("resnet18", {"residual": False}), ("cifar_plain20", {"depth": 56})):
        with pytest.raises(TypeError):
            create_model(name, **option)


@pytest.mark.parametrize("size", [27, 30, 33])
def test_option_a_on_odd_sizes(size):
    # The zero-padding shortcut subsamples x[::2], the 3x3/2 conv gives ceil(H/2): the two must agree.
    with torch.no_grad():
        out = cifar_resnet(20).eval()(torch.randn(1, 3, size, size))
        assert out.shape == (1, 10)
        assert imagenet_resnet(50, shortcut="A", num_classes=3).eval()(torch.randn(1, 3, size, size)).shape == (1, 3)


def test_registry_names():
    names = set(list_models())
    for d in (18, 34, 50, 101, 152):
        assert {f"resnet{d}", f"plain{d}"} <= names
    for d in (20, 32, 44, 56, 110, 1202):
        assert {f"cifar_resnet{d}", f"cifar_plain{d}"} <= names
    assert {"vgg16", "vgg19", "cifar_resnet", "cifar_plain"} <= names


def _small_names() -> list[str]:
    return [n for n in list_models() if n not in ("cifar_resnet1202", "cifar_plain1202")]


@pytest.mark.parametrize("name", _small_names())
def test_output_shapes(name):
    options = {"depth": 20} if name in ("cifar_resnet", "cifar_plain") else {}
    cifar = name.startswith("cifar")
    size = 32 if cifar else 64
    if name.startswith("vgg"):
        # torchvision's own network; only our in_channels/num_classes wiring is checked, on the meta
        # device (no memory, no arithmetic) to keep 140M parameters out of the default run.
        with torch.device("meta"):
            model = create_model(name, num_classes=5, in_channels=1)
            out = model.eval()(torch.empty(2, 1, size, size))
        assert out.shape == (2, 5)
        return
    model = create_model(name, num_classes=7, **options).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        stages = model.forward_stages(x)
        out = model(x)
    assert out.shape == (2, 7)
    if cifar:  # sec. 4.2: maps of 32, 16, 8 with 16, 32, 64 filters
        expected = {"stem": (16, 32), "layer1": (16, 32), "layer2": (32, 16), "layer3": (64, 8)}
    else:  # table 1 at 64x64 instead of 224x224: every size / 3.5
        e = 1 if name in ("resnet18", "resnet34", "plain18", "plain34") else 4
        expected = {
            "stem": (64, 16),
            "layer1": (64 * e, 16),
            "layer2": (128 * e, 8),
            "layer3": (256 * e, 4),
            "layer4": (512 * e, 2),
        }
    assert {k: (v.shape[1], v.shape[2]) for k, v in stages.items()} == expected
    assert all(v.shape[0] == 2 and v.shape[2] == v.shape[3] for v in stages.values())


def test_1202_layers_builds(net1202):
    resnet, plain = net1202
    assert len(blocks(resnet)) == 3 * 200 and len(blocks(plain)) == 600
    assert sum(len(s) for s in resnet.stages()) == 600
    assert resnet.num_features == 64 and resnet.fc.out_features == 10


@pytest.mark.slow
def test_1202_layers_forward(net1202):
    with torch.no_grad():
        for model in net1202:
            assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_plain20", "cifar_resnet56", "cifar_plain56"])
def test_cifar_family_on_one_channel_28x28(name):
    model = create_model(name, in_channels=1).eval()
    with torch.no_grad():
        x = torch.randn(3, 1, 28, 28)
        stages = model.forward_stages(x)
        assert model(x).shape == (3, 10)
    assert {k: tuple(v.shape[1:]) for k, v in stages.items()} == {
        "stem": (16, 28, 28),
        "layer1": (16, 28, 28),
        "layer2": (32, 14, 14),
        "layer3": (64, 7, 7),
    }


@pytest.mark.parametrize("name, size", [("cifar_resnet20", 32), ("resnet50", 64), ("plain18", 64)])
def test_forward_features_head_stages_agree(name, size):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        stages = model.forward_stages(x)
        out = model(x)
        assert list(stages) == ["stem", *model.stage_names]
        assert torch.equal(stages[model.stage_names[-1]], features)
        assert features.shape[1] == model.num_features
        assert torch.equal(model.forward_head(features), out)
        # forward_head is global average pooling then fc (computed here without avgpool).
        torch.testing.assert_close(model.fc(features.mean(dim=(2, 3))), out)


@pytest.mark.parametrize("name", ["cifar_resnet", "cifar_plain"])
def test_the_generic_cifar_nets_without_a_depth_say_what_to_set(name):
    """model.depth=null named a `<lambda>`'s missing keyword argument; the generic names build by depth."""
    with pytest.raises(ValueError, match=rf"^{name} needs model.depth \(6n\+2"):
        create_model(name)
    convs = [m for m in create_model(name, depth=8).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7  # 6n + 1 with n = 1, and the fc: 8 weighted layers (option A: no projections)
