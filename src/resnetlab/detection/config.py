"""Detection's own frozen config tree; presets are YAML files in `configs/detection/`.

Validated by the same machinery as classification (`resnetlab.config.from_dict(d, base=...)`,
`apply_overrides`): an unknown key is an error that lists the valid ones.
Defaults are the paper's (appendix A, following Faster R-CNN [32]); departures say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from resnetlab.config import (
    TRAIN_COUNTS,
    apply_overrides,
    configs_dir,
    default_data_dir,
    from_dict,
    preset_names,
    read_preset,
    require_at_least_one,
)
from resnetlab.errors import UserError


@dataclass(frozen=True)
class DetModelConfig:
    name: str = "resnet101"  # the backbone: resnet18..152 / plain18..152, vgg16 (cifar_resnet*: tiny, tests only)
    depth: int | None = None  # only for the generic `cifar_resnet` (6n+2)
    arch: Literal["c4", "fpn"] = "c4"  # c4: the paper's (conv5_x per region); fpn: Lin et al. 2017
    pretrained: str | None = None  # our classification checkpoint or a torchvision .pth; None: scratch
    stride_in_1x1: bool = True  # from scratch only (pretrained weights bring their own layout)
    pool: Literal["roipool", "roialign"] = "roipool"  # the paper's RoI pooling; roialign is Mask R-CNN's
    pool_size: int = 14  # RoI size into conv5_x (-> 7x7 after its stride 2); VGG: 7 into fc6
    freeze_bn: bool = True  # appendix A: BN statistics and affine fixed while fine-tuning
    freeze_at: int = 2  # 0 nothing, 1 stem, 2 stem + conv2_x (VGG: conv1_x + conv2_x) frozen
    anchor_sizes: tuple[int, ...] = (128, 256, 512)  # Faster R-CNN: 3 scales x 3 ratios; FPN: 5 sizes
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss
    box_batch_size_per_image: int = 128  # RoIs sampled per image for the head's loss
    box_bg_iou_low: float = 0.1  # [32]: background RoIs have IoU in [0.1, 0.5); below: not sampled
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.3
    detections_per_img: int = 100


@dataclass(frozen=True)
class DetDataConfig:
    name: Literal["voc", "coco", "shapes"] = "voc"  # shapes: generated coloured shapes (demo, tests)
    dir: str = field(default_factory=default_data_dir)
    # VOC: "YEAR-IMAGESET" (2007-trainval, 2012-trainval, 2007-test); COCO: "train2014", "val2017", ...;
    # shapes: "train", "test".
    train: tuple[str, ...] = ("2007-trainval", "2012-trainval")  # "07+12"
    test: str = "2007-test"
    classes: tuple[str, ...] = ()  # empty: VOC's 20 / the COCO file's 80 / the shapes' 3
    download: bool = True  # fetch when missing (needs internet); an existing copy is used as is
    min_size: int = 600  # shorter side (Faster R-CNN: 600) ...
    max_size: int = 1000  # ... longer side at most 1000
    hflip: bool = True  # training images flipped with probability 0.5
    train_difficult: bool = False  # VOC "difficult" / COCO crowd boxes: left out of training
    workers: int = 4
    shapes_images: int = 200  # shapes only: training images generated (test: a quarter of that)
    shapes_size: int = 96  # shapes only: image side in pixels


@dataclass(frozen=True)
class DetOptimConfig:
    lr: float = 0.001  # [32]: 0.001, then 0.0001
    momentum: float = 0.9
    weight_decay: float = 5e-4  # Faster R-CNN's [32], whose hyper-parameters sec. 4.3 follows
    milestones: tuple[int, ...] = (60000,)
    gamma: float = 0.1
    warmup_iters: int = 0  # not in the paper: linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.001
    base_batch_size: int | None = None  # linear lr scaling: lr * batch_size / base_batch_size


@dataclass(frozen=True)
class DetTrainConfig:
    batch_size: int = 1  # images per iteration, global across processes ([32]: 1 per GPU)
    max_iters: int = 80000
    eval_every: int = 10000
    checkpoint_every: int = 2000
    keep_checkpoints: tuple[int, ...] = ()  # also checkpoint at these iterations, kept as checkpoint-<N>.pt
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 2  # images per forward at evaluation, per process
    eval_max_images: int = 0  # 0: the whole test set; N: its first N images (quick checks)


@dataclass(frozen=True)
class DetectionConfig:
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)

    # Old field names (before detection and classification shared them): read from stored configs and
    # preset files as the new ones; on the command line a one-line error names the new key.
    RENAMED: ClassVar[dict[str, str]] = {"model.backbone": "model.name", "data.dataset": "data.name"}

    def validate(self) -> DetectionConfig:
        """Cross-field checks, run once by `resnetlab.config.from_dict` when the config is loaded."""
        return validate(self)


def presets_dir() -> Path:
    return configs_dir() / "detection"


def list_detection_presets() -> list[str]:
    return preset_names(presets_dir())


def validate(cfg: DetectionConfig) -> DetectionConfig:
    o, m, d = cfg.optim, cfg.model, cfg.data
    require_at_least_one(cfg, [*TRAIN_COUNTS, "model.pool_size", "data.min_size"])
    if o.lr <= 0:
        raise UserError(f"optim.lr: must be > 0, got {o.lr}")
    if list(o.milestones) != sorted(o.milestones):
        raise UserError(f"optim.milestones: must be increasing, got {list(o.milestones)}")
    if not d.train:
        raise UserError("data.train: name at least one training split")
    if m.arch == "fpn" and m.name == "vgg16":
        raise UserError("model.arch=fpn needs a ResNet backbone")
    if m.arch == "fpn" and len(m.anchor_sizes) != 5:
        raise UserError("model.anchor_sizes: fpn takes one size per level P2..P6 (5 sizes, e.g. [32,64,128,256,512])")
    return cfg


def detection_config_from_dict(d: dict[str, Any]) -> DetectionConfig:
    """A validated detection config from a nested dict (a preset, a stored config; old names migrate)."""
    return from_dict(d, base=DetectionConfig())


def load_detection_config(preset: str | None, overrides: list[str] | None = None) -> DetectionConfig:
    """A preset by name (`voc07-resnet101-c4`) or a YAML path, then `section.key=value` overrides.
    Without a preset the defaults are checked as the overrides are applied."""
    cfg = detection_config_from_dict(read_preset(preset, presets_dir(), "detection preset")) if preset else None
    return apply_overrides(cfg or DetectionConfig(), overrides or [])
