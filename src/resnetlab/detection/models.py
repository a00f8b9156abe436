"""Faster R-CNN (Ren et al. 2015) with our ResNets as the backbone, as in sec. 4.3 / appendix A.

Everything detection-specific is torchvision's (`FasterRCNN`, RPN, RoI heads, box coder, NMS, RoI
pooling, FPN); this file only cuts our classification networks into the pieces it takes: arch="c4"
(the paper's: conv1..conv4_x shared at stride 16, conv5_x per region), "fpn" (Lin et al. 2017, not
in the paper), or the vgg16 baseline (docs/detection.md has the table).
`build_detector(**kwargs)` takes only plain values, so the same kwargs stored in a checkpoint's meta
rebuild the model: `build_detector(**ckpt["meta"]["detector"])`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align, roi_pool
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from resnetlab.models import ResNet, create_model

Arch = Literal["c4", "fpn"]
Pool = Literal["roipool", "roialign"]

# ImageNet statistics for torchvision-imported weights (torchvision normalises with both).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d -> FrozenBatchNorm2d with the same statistics and affine (scale, shift).

    Appendix A: BN statistics come from ImageNet and the BN layers are fixed while fine-tuning for
    detection (batches of 1-2 images give useless statistics). The affine is kept, as buffers.
    """
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _freeze(modules: list[nn.Module]) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


class SingleLevelRoIPool(nn.Module):
    """RoI pooling on the one stride-16 map, in the call form torchvision's RoIHeads uses.

    torchvision's `MultiScaleRoIAlign` has no RoIPool (max) variant, which the paper uses; this is a
    thin adapter around `torchvision.ops.roi_pool` / `roi_align` (no pooling code of our own).
    """

    def __init__(self, *, output_size: int, stride: int, kind: Pool = "roipool", sampling_ratio: int = 2) -> None:
        super().__init__()
        if kind not in ("roipool", "roialign"):
            raise ValueError(f"pool must be 'roipool' or 'roialign', got {kind!r}")
        self.output_size = (output_size, output_size)
        self.spatial_scale = 1.0 / stride
        self.kind = kind
        self.sampling_ratio = sampling_ratio

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        x = features["0"]  # (N, C, H/16, W/16)
        boxes = [b.to(x.dtype) for b in proposals]
        if self.kind == "roipool":
            return roi_pool(x, boxes, self.output_size, self.spatial_scale)  # (R, C, s, s)
        return roi_align(x, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, aligned=True)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class ResNetC4Trunk(nn.Module):
    """conv1..conv4_x: (N, 3, H, W) -> (N, C4, H/16, W/16). Holds the ResNet's own modules.

    In general: the stem and every stage but the last (a CIFAR ResNet's stem + layer1..layer2, at
    stride 2: a tiny, fast model for tests and demos; the paper's form is the ImageNet one).
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.stage_names = resnet.stage_names[:-1]
        for name in self.stage_names:
            self.add_module(name, getattr(resnet, name))
        self.out_channels = _stage_channels(getattr(resnet, self.stage_names[-1]))
        stem_stride = 4 if resnet.stem_kind == "imagenet" else 1
        self.stride = stem_stride * 2 ** (len(self.stage_names) - 1)  # ImageNet: 4 * 2 * 2 = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


class ResNetC5Head(nn.Module):
    """conv5_x on every region, then global average pooling: (R, C4, s, s) -> (R, C5, s/2, s/2) -> (R, C5)."""

    def __init__(self, stage: nn.Sequential) -> None:
        super().__init__()
        self.layer4 = stage  # conv5_x (a CIFAR ResNet's last stage is its layer3)
        self.out_channels = _stage_channels(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer4(x), 1), 1)


class ResNetFPNBackbone(nn.Module):
    """C2..C5 (layer1..layer4) into torchvision's FeaturePyramidNetwork, plus a max-pooled P6.

    Not `IntermediateLayerGetter`: it runs children in registration order, and our ResNet registers
    `maxpool` before `bn1`; `forward_stages` runs them in the network's order.
    """

    def __init__(self, resnet: ResNet, out_channels: int = 256) -> None:
        super().__init__()
        resnet.fc = nn.Identity()  # unused here; no dangling parameters under DDP
        self.body = resnet
        in_channels = [_stage_channels(getattr(resnet, n)) for n in resnet.stage_names]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.body.forward_stages(x)
        feats = OrderedDict((str(i), stages[n]) for i, n in enumerate(self.body.stage_names))
        return self.fpn(feats)  # "0".."3" at strides 4..32, "pool" at 64


class VGGTrunk(nn.Module):
    """VGG-16 conv1_1..conv5_3 (the last max pool dropped): (N, 3, H, W) -> (N, 512, H/16, W/16)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features[:-1]
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class VGGHead(nn.Module):
    """fc6, ReLU, dropout, fc7, ReLU, dropout on each 7x7 RoI: (R, 512, 7, 7) -> (R, 4096)."""

    def __init__(self, classifier: nn.Sequential) -> None:
        super().__init__()
        self.fc = classifier[:-1]  # drop fc8 (the 1000-way classifier)
        self.out_channels = 4096

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return last.last_bn().weight.shape[0]  # (Frozen)BatchNorm2d after the last conv


def build_backbone_net(name: str, options: dict[str, Any], state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    """The classification network the detector is cut from, with its weights when given."""
    if not (name.startswith(("resnet", "plain", "cifar_resnet", "cifar_plain")) or name == "vgg16"):
        raise ValueError(f"detection backbones are our ResNets/plain nets and vgg16, got {name!r}")
    net = create_model(name, **options)
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=True)
    return net


def build_detector(
    *,
    backbone: str,
    num_classes: int,
    arch: Arch = "c4",
    backbone_options: dict[str, Any] | None = None,
    backbone_state: dict[str, torch.Tensor] | None = None,
    pool: Pool = "roipool",
    pool_size: int = 14,
    freeze_bn: bool = True,
    freeze_at: int = 2,
    anchor_sizes: tuple[int, ...] | list[int] = (128, 256, 512),
    aspect_ratios: tuple[float, ...] | list[float] = (0.5, 1.0, 2.0),
    min_size: int = 600,
    max_size: int = 1000,
    image_mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
    image_std: tuple[float, ...] | list[float] = IMAGENET_STD,
    rpn_pre_nms_top_n_train: int = 12000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 6000,
    rpn_post_nms_top_n_test: int = 300,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 128,
    box_bg_iou_low: float = 0.1,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.3,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    """Faster R-CNN on one of our networks.

    num_classes counts the background (VOC: 21). freeze_at: 0 trains everything, 1 freezes the stem,
    2 also conv2_x (ResNet) / conv1_x+conv2_x (VGG), as the paper's Faster R-CNN does. pool_size is
    the RoI size fed to conv5_x (C4: 14 -> 7x7 after its stride 2) or to fc6 (VGG: 7). The proposal
    and sampling defaults are the Faster R-CNN paper's (12000/2000 train, 6000/300 test, 256 anchors
    and 128 RoIs per image, foreground IoU >= 0.5, background IoU in [box_bg_iou_low, 0.5) = [0.1, 0.5),
    NMS 0.3 at test). box_bg_iou_low=0 is torchvision's [0, 0.5).
    """
    if arch == "fpn" and backbone != "vgg16" and len(anchor_sizes) != 5:
        raise ValueError("fpn needs one anchor size per level P2..P6 (5 sizes)")
    options = dict(backbone_options or {})
    options.setdefault("num_classes", 1000)
    net = build_backbone_net(backbone, options, backbone_state)
    if freeze_bn:
        net = freeze_batchnorm(net)

    if backbone == "vgg16":
        trunk: nn.Module = VGGTrunk(net.features)
        # conv1_x = features[0:5], conv2_x = features[5:10] (conv, ReLU, conv, ReLU, max pool).
        _freeze([trunk.features[: (0, 5, 10)[min(freeze_at, 2)]]])
        box_head: nn.Module = VGGHead(net.classifier)
        roi_pool_layer: nn.Module = SingleLevelRoIPool(output_size=pool_size, stride=16, kind=pool)
        anchors = AnchorGenerator((tuple(anchor_sizes),), (tuple(aspect_ratios),))
    elif arch == "c4":
        trunk = ResNetC4Trunk(net)
        _freeze([trunk.conv1, trunk.bn1, trunk.layer1][: {0: 0, 1: 2, 2: 3}[min(freeze_at, 2)]])
        box_head = ResNetC5Head(getattr(net, net.stage_names[-1]))  # the trunk never runs conv5_x
        roi_pool_layer = SingleLevelRoIPool(output_size=pool_size, stride=trunk.stride, kind=pool)
        anchors = AnchorGenerator((tuple(anchor_sizes),), (tuple(aspect_ratios),))
    elif arch == "fpn":
        if len(net.stage_names) != 4:
            raise ValueError("fpn needs a four-stage (ImageNet) ResNet")
        trunk = ResNetFPNBackbone(net)
        _freeze([net.conv1, net.bn1, net.layer1][: {0: 0, 1: 2, 2: 3}[min(freeze_at, 2)]])
        roi_pool_layer = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        box_head = TwoMLPHead(trunk.out_channels * 7 * 7, 1024)
        box_head.out_channels = 1024
        # One anchor size per pyramid level (P2..P6).
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes))
    else:
        raise ValueError(f"arch must be 'c4' or 'fpn', got {arch!r}")

    rpn_head = RPNHead(trunk.out_channels, anchors.num_anchors_per_location()[0])
    model = FasterRCNN(
        trunk,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        # FasterRCNN type-checks this argument; the single-level pooling is put in place below.
        box_roi_pool=roi_pool_layer if isinstance(roi_pool_layer, MultiScaleRoIAlign) else None,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.out_channels, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
    )
    model.roi_heads.box_roi_pool = roi_pool_layer
    if box_bg_iou_low > 0:
        model.roi_heads.proposal_matcher = BackgroundRangeMatcher(0.5, box_bg_iou_low)
    return model


class BackgroundRangeMatcher(Matcher):
    """torchvision's RoI matcher with Faster R-CNN's background range: IoU >= `fg_iou` matches a box,
    [bg_low, fg_iou) is background, below `bg_low` is neither (py-faster-rcnn's BG_THRESH_LO = 0.1):
    the RoI heads label those -1 and the sampler never picks them."""

    def __init__(self, fg_iou: float, bg_low: float) -> None:
        super().__init__(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.bg_low = bg_low

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        matches = super().__call__(match_quality_matrix)  # (R,): box index, or -1 below fg_iou
        if match_quality_matrix.numel():
            best = match_quality_matrix.max(dim=0).values  # (R,) best IoU of each RoI
            matches[best < self.bg_low] = self.BETWEEN_THRESHOLDS
        return matches


def read_pretrained(path: str, backbone: str) -> dict[str, Any]:
    """Backbone weights from one of our classification checkpoints or a torchvision state-dict file.

    Returns {"options", "state_dict", "image_mean", "image_std"}: the `create_model` options the
    weights need and the normalisation they were trained with (ours: the checkpoint's mean,
    averaged per channel, and its std or none; torchvision's: ImageNet mean and std).
    """
    from resnetlab.errors import UserError
    from resnetlab.evaluate.checkpoints import read_weights  # the one checkpoint / torchvision reader

    w = read_weights(path, what="model.pretrained")
    if w.model is not None:  # ours: its own options and normalisation (averaged per channel)
        if w.model != backbone:
            raise UserError(f"{path} holds a {w.model!r}, but model.name is {backbone!r}")
        mean = [0.0, 0.0, 0.0] if w.mean is None else w.mean.reshape(3, -1).mean(1).tolist()
        std = [1.0, 1.0, 1.0] if w.std is None else w.std.reshape(3, -1).mean(1).tolist()
        return {"options": dict(w.options), "state_dict": w.state_dict, "image_mean": mean, "image_std": std}
    fc = "classifier.6.weight" if backbone == "vgg16" else "fc.weight"
    options: dict[str, Any] = {"num_classes": w.state_dict[fc].shape[0] if fc in w.state_dict else 1000}
    if backbone != "vgg16":
        options.update(stride_in_1x1=False, shortcut="B")  # torchvision's ResNets are "v1.5"
    return {
        "options": options,
        "state_dict": w.state_dict,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }
