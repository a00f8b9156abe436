"""Residual and plain networks of He et al. 2015 ("Deep Residual Learning for Image Recognition").

Layout follows torchvision's resnet.py: helpers, then blocks, then the network. Parameter names
(`conv1, bn1, layer1..layer4, fc`, `downsample.0/1`) match torchvision's, so checkpoints interoperate.

Every place where one could depart from the paper is a keyword option whose default is the paper's:
  shortcut        "A" | "B" | "C"  (sec. 3.3, table 3)
  residual        False gives the "plain" twin (no shortcuts at all)
  stride_in_1x1   True: stride of a downsampling bottleneck on its first 1x1 conv, as in the original
                  Caffe release; False: on the 3x3 ("v1.5", torchvision's choice)
  zero_init_residual  not in the paper (Goyal et al. 2017); off by default
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Shortcut = Literal["A", "B", "C"]
SHORTCUTS = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: BN follows every convolution (sec. 3.4).
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (sec. 3.3): identity with extra zero channels; stride by subsampling. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option A shortcut cannot reduce channels")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (N, C, H, W) -> (N, C, H/s, W/s)
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))  # zero channels appended: (N, C_out, ...)
        return x

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}"


def make_shortcut(shortcut: Shortcut, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The block's shortcut branch; None means a pure identity."""
    changes_shape = stride != 1 or in_channels != out_channels
    if shortcut == "C" or (shortcut == "B" and changes_shape):
        # Projection W_s (eq. 2): 1x1 conv + BN; named downsample.0/1 as in torchvision.
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    if shortcut == "A" and changes_shape:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return None


class _Block(nn.Module):
    """What both blocks share (eq. 1 and 2): y = ReLU(F(x) + shortcut(x)), the shortcut chosen by
    `make_shortcut`; a plain block (residual=False) is y = ReLU(F(x)). A subclass builds the layers
    of F in `build` and applies them in `branch`."""

    expansion: int

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        stride: int = 1,
        shortcut: Shortcut = "B",
        residual: bool = True,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.residual = residual
        self.build(in_channels, channels, out_channels, stride=stride, stride_in_1x1=stride_in_1x1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride) if residual else None

    def build(self, in_channels: int, channels: int, out_channels: int, *, stride: int, stride_in_1x1: bool) -> None:
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the block's layers up to (and with) its last BN, before the addition."""
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BasicBlock(_Block):
    """3x3, BN, ReLU, 3x3, BN, + shortcut, ReLU (fig. 2 / fig. 5 left). Plain: no shortcut."""

    expansion = 1

    def build(self, in_channels: int, channels: int, out_channels: int, *, stride: int, stride_in_1x1: bool) -> None:
        del stride_in_1x1  # a basic block has no 1x1 conv
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Block):
    """1x1, BN, ReLU, 3x3, BN, ReLU, 1x1 (x4), BN, + shortcut, ReLU (fig. 5 right).

    `stride_in_1x1=True` puts a downsampling block's stride on the first 1x1 conv, as the paper's
    Caffe release does; False puts it on the 3x3 (torchvision "v1.5": more FLOPs, ~+0.5% top-1).
    """

    expansion = 4

    def build(self, in_channels: int, channels: int, out_channels: int, *, stride: int, stride_in_1x1: bool) -> None:
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A residual (or plain) network: stem, stages `layer1..layerK`, global average pool, `fc`.

    stem="imagenet": 7x7/2 conv, BN, ReLU, 3x3/2 max pool (table 1).
    stem="cifar":    3x3 conv with widths[0] filters, BN, ReLU (sec. 4.2).
    Stage i > 0 downsamples with stride 2 in its first block.
    """

    def __init__(
        self,
        *,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int],
        stem: Literal["imagenet", "cifar"],
        num_classes: int,
        in_channels: int = 3,
        shortcut: Shortcut = "B",
        residual: bool = True,
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be positive")
        if zero_init_residual and not residual:
            # Zeroing the last BN of a block without a shortcut zeroes its output: the net is dead.
            raise ValueError("zero_init_residual needs residual=True (a plain net would output zeros)")
        self.stem_kind = stem
        self.residual = residual
        self.num_classes = num_classes
        self.in_channels = in_channels

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = conv3x3(in_channels, widths[0])
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)

        channels = widths[0]
        self.stage_names: list[str] = []
        for i, (num_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(num_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(
                    block(
                        channels,
                        width,
                        stride=stride,
                        shortcut=shortcut,
                        residual=residual,
                        stride_in_1x1=stride_in_1x1,
                    )
                )
                channels = width * block.expansion
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init [13]: std = sqrt(2 / n). [13] shows n = fan-in and n = fan-out both keep
                # signals stable; fan-out is what fb.resnet.torch and torchvision use.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so each block starts as the identity.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output feature map, keyed "stem", "layer1", ... (for detection, analysis)."""
        out = {"stem": self.forward_stem(x)}
        x = out["stem"]
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, num_features, h, w): the last stage's feature map."""
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_features, h, w) -> (N, num_classes): global average pool, then fc."""
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
