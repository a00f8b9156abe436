"""Model complexity as the paper reports it: parameters, multiply-adds ("FLOPs", table 1), shapes.

Multiply-adds are counted by `torch.utils.flop_counter.FlopCounterMode`, never by hand. It counts
convolutions and matrix products only (BN, ReLU, pooling and the shortcut addition are free), which is
also how table 1 and torchvision's `_ops` count. Models are measured in eval mode, on a batch of 1,
under `torch.no_grad()`, on whatever device their parameters live on; the "meta" device gives the same
counts and shapes with no memory and no arithmetic (`build_for_counting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.models.registry import create_model
from resnetlab.models.resnet import ResNet

# Table 1: multiply-adds ("FLOPs") at 224x224, and the VGG references quoted beside it (sec. 3.3).
PAPER_MULT_ADDS: dict[str, float] = {
    "resnet18": 1.8e9,
    "resnet34": 3.6e9,
    "resnet50": 3.8e9,
    "resnet101": 7.6e9,
    "resnet152": 11.3e9,
    "vgg16": 15.3e9,
    "vgg19": 19.6e9,
}
# Table 6: parameters of the CIFAR-10 ResNets (option A), by depth 6n+2.
PAPER_CIFAR_PARAMS: dict[int, float] = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6, 1202: 19.4e6}


@dataclass(frozen=True)
class StageInfo:
    shape: tuple[int, ...]  # output of the stage for a batch of 1: (1, C, H, W) or (1, num_classes)
    mult_adds: int  # multiply-adds spent inside the stage


@dataclass(frozen=True)
class Complexity:
    params: int
    mult_adds: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    # "stem", "layer1", ..., "head" for a ResNet; {} for other models (VGG).
    stages: dict[str, StageInfo] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "mult_adds": self.mult_adds,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "stages": {k: {"shape": list(s.shape), "mult_adds": s.mult_adds} for k, s in self.stages.items()},
        }


def count_params(model: nn.Module) -> int:
    """All learnable parameters (conv and fc weights, fc bias, BN gamma/beta), as table 6 counts them."""
    return sum(p.numel() for p in model.parameters())


def default_input_size(model: nn.Module) -> int:
    """32 for the CIFAR family (sec. 4.2), 224 for ImageNet models (sec. 3.4)."""
    return 32 if getattr(model, "stem_kind", None) == "cifar" else 224


def model_in_channels(model: nn.Module) -> int:
    if isinstance(model, ResNet):
        return model.in_channels
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def _example_input(model: nn.Module, input_size: int | None, in_channels: int | None) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    size = input_size or default_input_size(model)
    channels = in_channels or model_in_channels(model)
    return torch.zeros(1, channels, size, size, device=device, dtype=dtype)  # a batch of 1: (1, C, H, W)


def measure(model: nn.Module, *, input_size: int | None = None, in_channels: int | None = None) -> Complexity:
    """Parameters, multiply-adds and per-stage output shapes of `model` on one (C, N, N) image.

    The model is put in eval mode for the count (BN running statistics stay untouched) and given back
    in the mode it came in.
    """
    x = _example_input(model, input_size, in_channels)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                out = model(x)
            stages = _stages(model, x, counter) if isinstance(model, ResNet) else {}
    finally:
        model.train(was_training)
    # FlopCounterMode counts 2 FLOPs per multiply-add; the paper's "FLOPs" are multiply-adds.
    return Complexity(
        params=count_params(model),
        mult_adds=counter.get_total_flops() // 2,
        input_shape=tuple(x.shape),
        output_shape=tuple(out.shape),
        stages=stages,
    )


def _stages(model: ResNet, x: torch.Tensor, counter: FlopCounterMode) -> dict[str, StageInfo]:
    # The counter keys modules by their path from the root class: "ResNet.layer1", "ResNet.fc".
    by_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    total = counter.get_total_flops() // 2
    root = type(model).__name__
    feature_maps = model.forward_stages(x)
    layers = {name: by_module.get(f"{root}.{name}", 0) for name in model.stage_names}
    head = by_module.get(f"{root}.fc", 0)
    stem = total - sum(layers.values()) - head  # conv1 (+ BN, ReLU, max pool, which cost nothing)
    stages = {"stem": StageInfo(tuple(feature_maps["stem"].shape), stem)}
    for name in model.stage_names:
        stages[name] = StageInfo(tuple(feature_maps[name].shape), layers[name])
    stages["head"] = StageInfo((x.shape[0], model.num_classes), head)
    return stages


def build_for_counting(name: str, **options: Any) -> nn.Module:
    """`create_model(name, **options)` on the meta device: counting a 60M-parameter net this way costs
    no memory and no arithmetic (FlopCounterMode's formulas need only shapes)."""
    with torch.device("meta"):
        return create_model(name, **options)


def smallest_input(name: str, **options: Any) -> int:
    """The smallest input side (H = W) the network takes: its total stride (the input pixels per
    pixel of the last feature map: 32 for the ImageNet ResNets, whose conv5_x is 7x7 at 224, table 1;
    4 for the CIFAR ones, 8x8 at 32, sec. 4.2), or more where a shapes-only forward still fails
    there (VGG-16's unpadded pools need 32). Below its stride a network's last stage sees only
    padding. Computed on the meta device: no memory, no arithmetic."""
    model = build_for_counting(name, **options).eval()
    pool = next((m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)), None)
    channels = options.get("in_channels", 3)
    seen: list[int] = []

    def runs(size: int) -> bool:
        seen.clear()
        try:
            model(torch.zeros(1, channels, size, size, device="meta"))
        except RuntimeError:
            return False
        return True

    probe = 512
    handle = pool.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1])) if pool else None
    stride = round(probe / seen[0]) if runs(probe) and seen else 1
    if handle:
        handle.remove()
    size = stride
    while not runs(size) and size < probe:
        size += 1
    return size


def measure_model(
    name: str, *, input_size: int | None = None, device: str | torch.device = "meta", **options: Any
) -> Complexity:
    """Build a registered model and measure it: `measure_model("resnet50", stride_in_1x1=False)`."""
    if torch.device(device).type == "meta":
        model = build_for_counting(name, **options)
    else:
        model = create_model(name, **options).to(device)
    return measure(model, input_size=input_size, in_channels=options.get("in_channels"))
