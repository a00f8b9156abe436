"""Named builders: `create_model("resnet50", **options)` and `list_models()`.

The paper's tables live here as data. Only builders and the CLI read configuration; model classes
take explicit keyword arguments.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from resnetlab.models.resnet import BasicBlock, Bottleneck, ResNet

# Table 1: depth -> (block, blocks per stage conv2_x..conv5_x).
IMAGENET_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)

# Sec. 4.2 / table 6: depth 6n+2 -> n, with three stages of 16, 32, 64 filters.
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}
CIFAR_WIDTHS = (16, 32, 64)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_OPTIONS: dict[str, frozenset[str]] = {}  # the keyword options each registered builder takes


def register(
    name: str, options: frozenset[str] = frozenset()
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        _OPTIONS[name] = options
        return fn

    return wrap


def _keyword_options(fn: Callable[..., nn.Module]) -> frozenset[str]:
    """The keyword-only options of a family builder, less the ones the name fixes (`residual`)."""
    params = inspect.signature(fn).parameters.values()
    return frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY) - {"residual"}


def model_option_names(name: str) -> frozenset[str]:
    """The options `create_model(name, ...)` takes (e.g. resnet50: num_classes, in_channels,
    shortcut, stride_in_1x1, zero_init_residual), so configs pass theirs through without name checks."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _OPTIONS[name]


def imagenet_resnet(
    depth: int,
    *,
    residual: bool = True,
    num_classes: int = 1000,
    in_channels: int = 3,
    shortcut: str = "B",  # tables 3/4: ResNet-50/101/152 use B
    stride_in_1x1: bool = True,  # the paper's Caffe release; False = torchvision v1.5
    zero_init_residual: bool = False,
) -> ResNet:
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}")
    block, layers = IMAGENET_DEPTHS[depth]
    return ResNet(
        block=block,
        layers=layers,
        widths=IMAGENET_WIDTHS,
        stem="imagenet",
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,  # type: ignore[arg-type]
        residual=residual,
        stride_in_1x1=stride_in_1x1,
        zero_init_residual=zero_init_residual,
    )


def cifar_resnet(
    depth: int,
    *,
    residual: bool = True,
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "A",  # sec. 4.2: identity shortcuts everywhere, zero-padding when widening
    zero_init_residual: bool = False,
) -> ResNet:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(
        block=BasicBlock,
        layers=(n, n, n),
        widths=CIFAR_WIDTHS,
        stem="cifar",
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,  # type: ignore[arg-type]
        residual=residual,
        zero_init_residual=zero_init_residual,
    )


def _builder(family: Callable[..., ResNet], depth: int, residual: bool) -> Callable[..., ResNet]:
    # A closure, not `lambda d=depth, ...`: a stray `d=`/`depth=`/`residual=` option must be an error,
    # not a silent change of network.
    def build(**options: Any) -> ResNet:
        if not residual and "shortcut" in options:
            raise ValueError("a plain network has no shortcuts, so the shortcut option does not apply")
        return family(depth, residual=residual, **options)

    return build


def _register_family() -> None:
    imagenet, cifar = _keyword_options(imagenet_resnet), _keyword_options(cifar_resnet)
    for depth in IMAGENET_DEPTHS:
        for kind, residual in (("resnet", True), ("plain", False)):
            register(f"{kind}{depth}", imagenet)(_builder(imagenet_resnet, depth, residual))
    for depth in CIFAR_DEPTHS:
        for kind, residual in (("cifar_resnet", True), ("cifar_plain", False)):
            register(f"{kind}{depth}", cifar)(_builder(cifar_resnet, depth, residual))
    register("cifar_resnet", cifar | {"depth"})(functools.partial(_generic_cifar, residual=True))
    register("cifar_plain", cifar | {"depth"})(functools.partial(_generic_cifar, residual=False))


def _generic_cifar(*, residual: bool, depth: int | None = None, **kw: Any) -> nn.Module:
    """`cifar_resnet` / `cifar_plain` of `depth` layers (6n+2); without one, the error says so."""
    if depth is None:
        kind = "cifar_resnet" if residual else "cifar_plain"
        raise ValueError(f"{kind} needs model.depth (6n+2: 20, 32, 44, 56, 110, ...), or a name such as {kind}56")
    return _builder(cifar_resnet, depth, residual)(**kw)


def _vgg(depth: int, *, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's VGG (the paper's complexity reference, table 1: VGG-19 19.6 G mult-adds)."""
    model = getattr(torchvision.models, f"vgg{depth}")(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    return model


_register_family()
register("vgg16", frozenset({"num_classes", "in_channels"}))(lambda **kw: _vgg(16, **kw))
register("vgg19", frozenset({"num_classes", "in_channels"}))(lambda **kw: _vgg(19, **kw))


def list_models() -> list[str]:
    """Registered names, in a stable order (generic `cifar_resnet`/`cifar_plain` take `depth=`)."""
    return list(_REGISTRY)


def uses_bottleneck(name: str) -> bool:
    """Whether `name` is built of bottleneck blocks (ResNet-50/101/152 and their plain twins), the only
    blocks where `stride_in_1x1` changes anything."""
    match = re.fullmatch(r"(?:resnet|plain)(\d+)", name)
    return bool(match) and IMAGENET_DEPTHS.get(int(match.group(1)), (None,))[0] is Bottleneck


def _blocks(name: str) -> tuple[int, ...] | None:
    """Blocks per stage of a registered ResNet / plain net (tables 1 and 6), None for other names."""
    match = re.fullmatch(r"(cifar_)?(?:resnet|plain)(\d+)", name)
    if not match:
        return None
    depth = int(match.group(2))
    if match.group(1):
        return (CIFAR_DEPTHS[depth],) * 3 if depth in CIFAR_DEPTHS else None
    return IMAGENET_DEPTHS[depth][1] if depth in IMAGENET_DEPTHS else None


def fitting_models(state: dict[str, Any], like: str) -> list[dict[str, Any]]:
    """The registered networks of `like`'s family (ImageNet or CIFAR ResNets and plain nets) whose
    state dict has exactly the keys and shapes of `state`, as the `model.*` settings that build them
    ({"name": "resnet50", "shortcut": "B"}); `like`'s own kind (resnet / plain) first. Head and input
    channels are taken from `state`. Built on the meta device: shapes only, no memory, no compute."""
    if "conv1.weight" not in state or "fc.weight" not in state:
        return []
    cifar = like.startswith("cifar")
    options = {"num_classes": int(state["fc.weight"].shape[0]), "in_channels": int(state["conv1.weight"].shape[1])}
    want = {k: tuple(v.shape) for k, v in state.items()}
    stages: dict[str, int] = {}  # "layer1" -> blocks, read off the keys ("layer1.2.conv1.weight")
    for key in state:
        stage, _, rest = key.partition(".")
        if stage.startswith("layer") and rest.split(".")[0].isdigit():
            stages[stage] = max(stages.get(stage, 0), int(rest.split(".")[0]) + 1)
    blocks = tuple(stages[s] for s in sorted(stages))
    names = [n for n in list_models() if n.startswith("cifar") == cifar and _blocks(n) == blocks]
    names.sort(key=lambda n: ("plain" in n) != ("plain" in like))  # stable: the same kind first
    found = []
    for name in names:
        for shortcut in [None] if "plain" in name else ["A", "B", "C"]:
            extra = {} if shortcut is None else {"shortcut": shortcut}
            with torch.device("meta"):
                try:
                    net = create_model(name, **options, **extra)
                except ValueError:  # option A cannot reduce channels, etc.
                    continue
            if {k: tuple(v.shape) for k, v in net.state_dict().items()} == want:
                found.append({"name": name, **extra})
    return found


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a registered model: `create_model("resnet50", stride_in_1x1=False)`.

    Raises ValueError for an unknown name and TypeError for an option the model does not take.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
