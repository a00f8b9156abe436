import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resnetlab.detection.models import build_detector, read_pretrained
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic

SMALL = dict(min_size=128, max_size=128, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=5, box_score_thresh=0.0)


def _shapes_seen(model, image_size=128):
    """Run one image through an eval-mode detector; return the RoI pool output and conv5_x output shapes."""
    seen = {}
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, i, o: seen.__setitem__("roi", tuple(o.shape)))
    model.roi_heads.box_head.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("c5", tuple(o.shape)))
    model.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("c4", tuple(o.shape)))
    with torch.no_grad():
        model.eval()([torch.rand(3, image_size, image_size)])
    return seen


@pytest.mark.parametrize(("name", "c4", "c5"), [("resnet50", 1024, 2048), ("resnet18", 256, 512)])
def test_c4_runs_conv5_per_region(name, c4, c5):
    model = build_detector(backbone=name, num_classes=21, freeze_bn=False, **SMALL)
    assert not hasattr(model.backbone, "layer4")  # conv5_x is only in the per-region head
    seen = _shapes_seen(model)
    r = seen["roi"][0]
    assert seen["c4"] == (1, c4, 8, 8)  # stride 16 on a 128x128 input
    assert seen["roi"] == (r, c4, 14, 14) and seen["c5"] == (r, c5, 7, 7)
    assert model.roi_heads.box_predictor.cls_score.in_features == c5


def test_roialign_option_and_vgg16_baseline():
    model = build_detector(backbone="resnet18", num_classes=5, freeze_bn=False, pool="roialign", **SMALL)
    assert model.roi_heads.box_roi_pool.kind == "roialign"
    assert _shapes_seen(model)["c5"][1:] == (512, 7, 7)
    vgg = build_detector(backbone="vgg16", num_classes=21, pool_size=7, **SMALL)
    with torch.no_grad():
        assert vgg.backbone(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)  # conv5_3, stride 16
    assert vgg.roi_heads.box_head.out_channels == 4096
    assert vgg.roi_heads.box_head.fc[0].in_features == 512 * 7 * 7  # fc6 on 7x7 RoIs
    frozen = [n for n, p in vgg.backbone.named_parameters() if not p.requires_grad]
    assert len(frozen) == 8  # conv1_1..conv2_2, weights and biases


def test_fpn_variant():
    model = build_detector(
        backbone="resnet18", num_classes=5, arch="fpn", freeze_bn=False, anchor_sizes=(32, 64, 128, 256, 512), **SMALL
    )
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 128, 128))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4, 2]
    assert all(f.shape[1] == 256 for f in feats.values())
    model.eval()([torch.rand(3, 128, 128)])


def _step_batch():
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[5.0, 10.0, 30.0, 45.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 20.0, 60.0, 50.0], [0.0, 0.0, 15.0, 15.0]]), "labels": torch.tensor([2, 3])},
    ]
    return images, targets


def test_frozen_bn_stays_frozen_through_a_train_step():
    model = build_detector(
        backbone="resnet18", num_classes=4, freeze_bn=True, freeze_at=2, box_batch_size_per_image=16, **SMALL
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    bns = {n: m for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert len(bns) == 20  # every BN of ResNet-18 (stem 1 + 8 blocks x 2 + 3 projections)
    assert not any("bn" in n or "downsample.1" in n for n, _ in model.named_parameters())  # buffers only
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    loss = sum(model(*_step_batch()).values())
    loss.backward()
    opt.step()
    after = model.state_dict()
    for name in bns:
        for buf in ("weight", "bias", "running_mean", "running_var"):
            key = f"{name}.{buf}"
            assert torch.equal(before[key], after[key]), key
    # freeze_at=2: the stem and conv2_x are fixed; conv3_x on and the heads learn.
    assert torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert torch.equal(before["backbone.layer1.0.conv1.weight"], after["backbone.layer1.0.conv1.weight"])
    assert model.backbone.conv1.weight.grad is None
    assert not torch.equal(before["backbone.layer2.0.conv1.weight"], after["backbone.layer2.0.conv1.weight"])
    assert not torch.equal(
        before["roi_heads.box_head.layer4.0.conv1.weight"], after["roi_heads.box_head.layer4.0.conv1.weight"]
    )


def _torchvision_c4(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer3(tv.layer2(tv.layer1(x)))


def test_backbone_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10)
    for m in tv.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    pre = read_pretrained(str(tmp_path / "r18.pth"), "resnet18")
    assert pre["options"]["stride_in_1x1"] is False and pre["options"]["num_classes"] == 10
    model = build_detector(
        backbone="resnet18", num_classes=4, backbone_options=pre["options"], backbone_state=pre["state_dict"], **SMALL
    )
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone(x), _torchvision_c4(tv.eval(), x), atol=1e-5)
        r = torch.rand(3, 256, 14, 14)
        assert torch.allclose(model.roi_heads.box_head.layer4(r), tv.layer4(r), atol=1e-5)


def test_backbone_from_our_checkpoint(tmp_path):
    net = create_model("resnet18", num_classes=7)
    mean = torch.rand(3, 8, 8)
    meta = {"model": "resnet18", "model_options": {"num_classes": 7}, "mean": mean, "std": None}
    save_atomic({"model": net.state_dict(), "config": {}, "meta": meta}, tmp_path / "ck.pt")
    pre = read_pretrained(str(tmp_path / "ck.pt"), "resnet18")
    assert pre["image_mean"] == pytest.approx(mean.mean((1, 2)).tolist()) and pre["image_std"] == [1.0, 1.0, 1.0]
    model = build_detector(
        backbone="resnet18", num_classes=4, backbone_options=pre["options"], backbone_state=pre["state_dict"], **SMALL
    )
    assert torch.equal(model.backbone.layer3[0].conv1.weight, net.layer3[0].conv1.weight)
    assert torch.equal(model.roi_heads.box_head.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, net.bn1.running_var)
    from resnetlab.errors import UserError

    with pytest.raises(UserError, match="resnet50"):
        read_pretrained(str(tmp_path / "ck.pt"), "resnet50")


@pytest.mark.parametrize(("bg_low", "expected"), [(0.1, [3, 3, 0, -1]), (0.0, [3, 3, 0, 0])])
def test_background_iou_range_is_faster_rcnns(bg_low, expected):
    # [32]: an RoI is foreground (its box's class) at IoU >= 0.5 with a ground-truth box, background
    # (0) in [0.1, 0.5), and left out of the sampled RoIs (-1) below 0.1. IoUs with the 10x10 box at
    # the origin, by hand: 1.0, 0.6, 0.3, 0.05 (the heights are 10, 6, 3, 0.5 of 10).
    model = build_detector(backbone="resnet18", num_classes=5, freeze_bn=False, box_bg_iou_low=bg_low, **SMALL)
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([3])}
    proposals = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 3], [0, 0, 10, 0.5]], dtype=torch.float)
    _, labels = model.roi_heads.assign_targets_to_proposals([proposals], [gt["boxes"]], [gt["labels"]])
    assert labels[0].tolist() == expected


def test_background_iou_default_is_faster_rcnns():
    import inspect

    from resnetlab.detection.config import DetModelConfig, DetOptimConfig

    assert inspect.signature(build_detector).parameters["box_bg_iou_low"].default == 0.1
    assert DetModelConfig().box_bg_iou_low == 0.1 and DetOptimConfig().weight_decay == 0.0005  # [32]
