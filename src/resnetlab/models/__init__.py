"""The networks of the paper: `create_model(name, **options)`, `list_models()`."""

from resnetlab.models.complexity import (
    Complexity,
    StageInfo,
    build_for_counting,
    count_params,
    measure,
    measure_model,
)
from resnetlab.models.registry import (
    CIFAR_DEPTHS,
    IMAGENET_DEPTHS,
    cifar_resnet,
    create_model,
    imagenet_resnet,
    list_models,
)
from resnetlab.models.resnet import BasicBlock, Bottleneck, ResNet, ZeroPadShortcut

__all__ = [
    "CIFAR_DEPTHS",
    "IMAGENET_DEPTHS",
    "BasicBlock",
    "Bottleneck",
    "Complexity",
    "ResNet",
    "StageInfo",
    "ZeroPadShortcut",
    "build_for_counting",
    "cifar_resnet",
    "count_params",
    "create_model",
    "imagenet_resnet",
    "list_models",
    "measure",
    "measure_model",
]
