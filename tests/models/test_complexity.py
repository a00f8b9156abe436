"""Parameters (table 6) and multiply-adds (table 1) against the paper and torchvision's metadata."""

import pytest
import torch
import torchvision

from resnetlab.models import count_params, create_model, measure, measure_model

# Table 6, exact counts of the option-A CIFAR ResNets (BN gamma/beta and fc bias included).
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
# Table 1 (and VGG-19 beside it): multiply-adds at 224x224, in G.
PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3, "vgg19": 19.6}
TV_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights,
    "resnet34": torchvision.models.ResNet34_Weights,
    "resnet50": torchvision.models.ResNet50_Weights,
    "resnet101": torchvision.models.ResNet101_Weights,
    "resnet152": torchvision.models.ResNet152_Weights,
    "vgg19": torchvision.models.VGG19_Weights,
}


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_params_table6(depth):
    resnet = create_model(f"cifar_resnet{depth}")
    plain = create_model(f"cifar_plain{depth}")
    assert count_params(resnet) == CIFAR_PARAMS[depth]
    assert count_params(plain) == CIFAR_PARAMS[depth]  # option A adds no parameters


def test_cifar1202_params_table6(net1202):
    resnet, plain = net1202
    assert round(count_params(resnet) / 1e6, 1) == 19.4
    assert count_params(plain) == count_params(resnet)


@pytest.fixture(scope="module")
def paper_mode() -> dict:
    return {name: measure_model(name) for name in PAPER_GMACS}


@pytest.mark.parametrize("name", list(PAPER_GMACS))
def test_mult_adds_table1(name, paper_mode):
    assert paper_mode[name].mult_adds / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.02)


@pytest.mark.parametrize("name", list(TV_WEIGHTS))
def test_params_match_torchvision(name, paper_mode):
    assert paper_mode[name].params == TV_WEIGHTS[name].IMAGENET1K_V1.meta["num_params"]


@pytest.mark.parametrize("name", [n for n in TV_WEIGHTS if n.startswith("resnet")])
def test_v15_mult_adds_match_torchvision_ops(name):
    ours = measure_model(name, stride_in_1x1=False).mult_adds / 1e9
    assert ours == pytest.approx(TV_WEIGHTS[name].IMAGENET1K_V1.meta["_ops"], abs=0.0006)  # _ops has 3 decimals


def test_resnet50_v15_is_4_09g():
    assert round(measure_model("resnet50", stride_in_1x1=False).mult_adds / 1e9, 2) == 4.09


def test_stages_follow_table1(paper_mode):
    c = paper_mode["resnet50"]
    assert c.input_shape == (1, 3, 224, 224) and c.output_shape == (1, 1000)
    shapes = {k: s.shape for k, s in c.stages.items()}
    assert shapes == {
        "stem": (1, 64, 56, 56),  # conv1 at 112x112, then the 3x3/2 max pool
        "layer1": (1, 256, 56, 56),
        "layer2": (1, 512, 28, 28),
        "layer3": (1, 1024, 14, 14),
        "layer4": (1, 2048, 7, 7),
        "head": (1, 1000),
    }
    assert sum(s.mult_adds for s in c.stages.values()) == c.mult_adds
    assert c.stages["head"].mult_adds == 2048 * 1000  # the fc layer
    # conv1: 7x7x3 weights per output at 112x112x64 outputs.
    assert c.stages["stem"].mult_adds == 7 * 7 * 3 * 112 * 112 * 64


@pytest.mark.parametrize("name, size", [("cifar_resnet20", 32), ("resnet18", 64), ("cifar_plain20", 28)])
def test_meta_device_counts_like_a_real_forward(name, size):
    real = measure(create_model(name), input_size=size)
    meta = measure_model(name, input_size=size)
    assert real == meta


def test_counting_is_eval_mode_and_builds_no_graph():
    model = create_model("cifar_resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure(model)
    assert model.training  # given back in its mode
    for k, v in model.state_dict().items():  # BN statistics untouched: the count ran in eval mode
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_one_channel_28x28_cifar():
    c = measure_model("cifar_resnet20", in_channels=1, input_size=28)
    assert c.input_shape == (1, 1, 28, 28) and c.output_shape == (1, 10)
    assert c.params == CIFAR_PARAMS[20] - 16 * 2 * 3 * 3  # conv1 sees 1 channel instead of 3
    assert [s.shape[1:] for s in c.stages.values()] == [(16, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7), (10,)]
    # Mult-adds scale with the map area: (28/32)^2 of the 32x32 count, but for conv1 and fc.
    c32 = measure_model("cifar_resnet20")
    body = lambda c: sum(s.mult_adds for k, s in c.stages.items() if k.startswith("layer"))  # noqa: E731
    assert body(c) / body(c32) == pytest.approx((28 / 32) ** 2, rel=0.05)


def test_vgg_has_no_stages():
    c = measure_model("vgg19", input_size=32, num_classes=10)
    assert c.stages == {} and c.output_shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("resnet18", {}, 224 // 7),  # table 1: conv5_x is 7x7 at 224
        ("resnet50", {}, 224 // 7),
        ("cifar_resnet20", {"in_channels": 1}, 32 // 8),  # sec. 4.2: feature maps 32, 16, 8
        ("vgg16", {}, 224 // 7),  # five 2x2 pools
    ],
)
def test_smallest_input_is_the_total_stride(name, options, expected):
    from resnetlab.models.complexity import smallest_input

    assert smallest_input(name, **options) == expected
