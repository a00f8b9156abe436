"""Loading torchvision ResNet checkpoints into our models (v1.5 mode: stride on the 3x3)."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.models.registry import create_model
from resnetlab.models.resnet import ResNet


def load_torchvision_checkpoint(path: str | Path, model_name: str, **options) -> ResNet:
    """Build `model_name` in torchvision's layout (v1.5, shortcut B) and load a torchvision
    state-dict file (e.g. `resnet50-11ad3fa6.pth`) strictly. Loaded with `weights_only=True`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    in_channels = state["conv1.weight"].shape[1] if "conv1.weight" in state else 3
    options = {
        "stride_in_1x1": False,
        "shortcut": "B",
        "num_classes": num_classes,
        "in_channels": in_channels,
        **options,
    }
    model = create_model(model_name, **options)
    model.load_state_dict(state, strict=True)
    return model
