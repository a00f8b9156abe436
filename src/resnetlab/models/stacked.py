"""K networks of one architecture computed as one wide network (grouped convolutions), weights shared.

`stack_models(models)`: input (N, K*C, H, W), model k's batch in channel group k; output
(N, K, num_classes), model k's logits in column k. Every layer works per group, so the K never mix:

  Conv2d(C_in, C_out, groups=g)  ->  Conv2d(K*C_in, K*C_out, groups=K*g), weights concatenated
  BatchNorm2d(C)                 ->  BatchNorm2d(K*C): statistics are per channel, so per model
  option A shortcut              ->  the same subsampling, zero channels appended inside each group
  Linear(C, O)                   ->  K matrix products at once (`GroupedLinear`)
  a residual / plain block mix   ->  the shortcut times a 0/1 mask per channel group (`MaskedShortcut`)

ReLU and pooling act per channel and stay; the forward is the model's own code, not a second version.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.models.resnet import BasicBlock, Bottleneck, ResNet, ZeroPadShortcut


class GroupedLinear(nn.Module):
    """K linear layers at once: (N, K*C) -> (N, K, O). Run k's `Linear(C, O)` is rows k*O..(k+1)*O of
    `weight` (K*O, C) and of `bias` (K*O,), the layout every other stacked tensor has."""

    def __init__(self, k: int, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k * out_features, in_features, device="meta"))
        self.bias = nn.Parameter(torch.empty(k * out_features, device="meta")) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, c, o = self.k, self.in_features, self.out_features
        x = x.reshape(x.shape[0], k, c).transpose(0, 1)  # (N, K*C) -> (K, N, C)
        w = self.weight.view(k, o, c).transpose(1, 2)  # (K, C, O)
        out = torch.bmm(x, w)  # (K, N, O)
        if self.bias is not None:
            out = out + self.bias.view(k, 1, o)
        return out.transpose(0, 1)  # (N, K, O)

    def extra_repr(self) -> str:
        return f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}"


class GroupedZeroPad(nn.Module):
    """Option A shortcut (sec. 3.3) per channel group: subsample, then zero channels appended to each
    of the K groups (not K*extra channels at the end, which would shift every group but the first)."""

    def __init__(self, k: int, shortcut: ZeroPadShortcut) -> None:
        super().__init__()
        self.k, self.extra, self.stride = k, shortcut.extra, shortcut.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (N, K*C, H, W) -> (N, K*C, H/s, W/s)
        if self.extra:
            channels_last = x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1
            x = F.pad(x.unflatten(1, (self.k, -1)), (0, 0, 0, 0, 0, self.extra))  # (N, K, C + extra, h, w)
            x = x.flatten(1, 2)  # (N, K*C_out, h, w)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def extra_repr(self) -> str:
        return f"k={self.k}, extra_channels={self.extra}, stride={self.stride}"


class MaskedShortcut(nn.Module):
    """A shortcut for a block that is residual in some models and plain in others: the shortcut's
    output times 1 in the channel groups of residual models, 0 in those of plain ones (adding 0.0 and
    back-propagating 0.0 changes nothing, so each group computes exactly its own model)."""

    def __init__(self, shortcut: nn.Module | None, residual: Sequence[bool], channels: int) -> None:
        super().__init__()
        self.shortcut = shortcut
        mask = torch.tensor([float(r) for r in residual]).repeat_interleave(channels)
        self.register_buffer("mask", mask.view(1, -1, 1, 1), persistent=False)  # (1, K*C_out, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.shortcut is None else self.shortcut(x)
        return out * self.mask.to(out.dtype)


def stack_models(models: Sequence[nn.Module], *, memory_format: torch.memory_format = torch.contiguous_format):
    """One wide network computing `models` side by side (see the module docstring); the models'
    parameters, buffers and gradients become views into it. Move the models to their device first.

    Each model still works as an ordinary network on its own weights: evaluation, `state_dict`
    (copies, so a saved file holds that model alone), `load_state_dict`, and an optimizer of its own,
    whose `step()` updates the shared storage. Never `.to()` a model or the wide network afterwards (it
    would replace the shared storage), and zero gradients through `zero_grads(wide)`, not
    `optimizer.zero_grad()` (which drops a model's views of them).

    Raises ValueError for models that cannot be stacked: different layer shapes, devices or dtypes,
    or a layer this module has no grouped twin for."""
    models = list(models)
    k = len(models)
    check_stackable(models)
    # The template: a residual model if there is one, so that a residual/plain mix has the shortcuts.
    template = next((m for m in models if getattr(m, "residual", False)), models[0])
    wide = copy.deepcopy(template)
    for name, module in reversed(list(template.named_modules())):  # children before their block
        _widen(wide, name, module, [_find(m, name) for m in models], memory_format)
    wide.stacked = k  # how many models this network computes
    for i, model in enumerate(models):
        _share(model, wide, i, k)
    return wide


def zero_grads(wide: nn.Module) -> None:
    """Zero the wide network's gradients in place (the models' gradients are views of them)."""
    torch._foreach_zero_([p.grad for p in wide.parameters() if p.grad is not None])


# ---- building the wide network ----------------------------------------------------------------------


# Layers without weights that act on each channel alone: one such layer serves all K channel groups.
PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Sequential)
# Layers with a grouped twin here, and the networks and blocks made of them.
STACKABLE = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, ZeroPadShortcut, BasicBlock, Bottleneck, ResNet)


def check_stackable(models: Sequence[nn.Module]) -> None:
    """ValueError unless `models` can be stacked: ResNets (residual or plain) with the same tensors
    (names, shapes, dtypes, devices) and the same layers at the same places. The one difference
    allowed is an option A shortcut (no weights) that a plain twin lacks. Works on models built on the
    meta device, so a caller can check before anything is built or written."""
    models = list(models)
    if not models:
        raise ValueError("no model to stack")
    for name, module in models[0].named_modules():
        if not isinstance(module, STACKABLE + PER_CHANNEL):
            raise ValueError(f"no grouped version of {type(module).__name__} ({name or 'the network'})")

    def tensors(m: nn.Module) -> dict:
        return {n: (tuple(t.shape), t.dtype, t.device) for n, t in m.state_dict(keep_vars=True).items()}

    def layers(m: nn.Module) -> dict:
        return {n: type(x) for n, x in m.named_modules() if not isinstance(x, ZeroPadShortcut)}

    first_tensors, first_layers = tensors(models[0]), layers(models[0])
    for i, model in enumerate(models[1:], 1):
        other = tensors(model)
        if other != first_tensors:
            name = sorted(set(first_tensors.items()) ^ set(other.items()))[0][0]
            a, b = first_tensors.get(name), other.get(name)
            raise ValueError(f"model {i} differs from model 0 at {name} ({b} vs {a})")
        other_layers = layers(model)
        if other_layers != first_layers:
            name = sorted(set(first_layers.items()) ^ set(other_layers.items()), key=str)[0][0]
            raise ValueError(f"model {i} differs from model 0 in the layer {name or 'at the top'}")


def _find(model: nn.Module, name: str) -> nn.Module | None:
    """`model.get_submodule(name)`, or None where the model has no such layer (a plain twin's shortcut)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _widen(wide: nn.Module, name: str, template: nn.Module, parts: list[nn.Module | None], memory_format) -> None:
    """Replace the layer `name` of `wide` by its grouped twin holding the K models' weights."""
    k = len(parts)

    def cat(attr: str, fmt=torch.contiguous_format) -> torch.Tensor:
        return torch.cat([getattr(p, attr).detach() for p in parts]).contiguous(memory_format=fmt)

    if isinstance(template, nn.Conv2d):
        c = template
        new: nn.Module = nn.Conv2d(
            k * c.in_channels, k * c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
            dilation=c.dilation, groups=k * c.groups, bias=c.bias is not None, padding_mode=c.padding_mode,
            device="meta",
        )  # fmt: skip
        new.weight = nn.Parameter(cat("weight", memory_format))
        if c.bias is not None:
            new.bias = nn.Parameter(cat("bias"))
    elif isinstance(template, nn.BatchNorm2d):
        b = template
        new = nn.BatchNorm2d(
            k * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine,
            track_running_stats=b.track_running_stats, device="meta",
        )  # fmt: skip
        if b.affine:
            new.weight, new.bias = nn.Parameter(cat("weight")), nn.Parameter(cat("bias"))
        if b.track_running_stats:
            new.running_mean, new.running_var = cat("running_mean"), cat("running_var")
            new.num_batches_tracked = b.num_batches_tracked.detach().clone()
    elif isinstance(template, nn.Linear):
        new = GroupedLinear(k, template.in_features, template.out_features, bias=template.bias is not None)
        new.weight = nn.Parameter(cat("weight"))
        if template.bias is not None:
            new.bias = nn.Parameter(cat("bias"))
    elif isinstance(template, ZeroPadShortcut):
        new = GroupedZeroPad(k, template)
    elif isinstance(template, (BasicBlock, Bottleneck)):
        residual = [bool(p.residual) for p in parts]
        block = wide.get_submodule(name)
        if len(set(residual)) > 1:  # a residual/plain mix: the shortcut applies to some groups only
            out_channels = template.last_bn().num_features
            block.downsample = MaskedShortcut(block.downsample, residual, out_channels)
        return  # the block itself stays; its layers were widened before it
    else:
        return  # ReLU, pooling, Identity, containers (check_stackable let only these through)
    parent, _, leaf = name.rpartition(".")
    setattr(wide.get_submodule(parent), leaf, new)


def _share(model: nn.Module, wide: nn.Module, i: int, k: int) -> None:
    """Make `model`'s parameters, buffers and gradients views of its rows of `wide`'s."""
    for name, param in list(model.named_parameters()):
        big = wide.get_parameter(name)
        if big.grad is None:
            big.grad = torch.zeros_like(big)
        view = nn.Parameter(big.detach().chunk(k)[i], requires_grad=param.requires_grad)
        view.grad = big.grad.chunk(k)[i]
        _set(model, name, view)
    for name, _ in list(model.named_buffers()):
        big = wide.get_buffer(name)
        # The BN step counter is one number for all: shared, not sliced.
        _set(model, name, big if big.dim() == 0 else big.chunk(k)[i])
    if not getattr(model, "_stacked_hook", False):
        model.register_state_dict_post_hook(_own_copies)
        model._stacked_hook = True


def _set(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner), leaf, value)


def _own_copies(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """A stacked model's state dict holds copies: `torch.save` writes a view's whole storage, i.e. every
    model's weights, into each model's file."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            state_dict[key] = value.detach().clone()
