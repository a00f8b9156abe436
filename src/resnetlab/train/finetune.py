"""Fine-tuning: start from trained weights (`train.init_from`), freeze stages (`train.freeze`), give
the backbone a smaller lr (`optim.backbone_lr_mult`).

Not in the paper, which trains every network from scratch (its detection experiments fine-tune from
ImageNet weights, appendix A). The common use of a ResNet: adapt ImageNet (or our own) weights to
one's images.

    source = read_source(cfg)                         # before the data: its normalisation is used
    data = build_data(cfg, ..., stats=source_stats(source))
    model = create_model(...)
    lines = init_model(model, source, classes=data.classes, cfg=cfg)   # fresh runs only (resumed: their checkpoint)
    freeze(model, cfg.train.freeze)                   # every run, resumed ones too
    optimizer = make_sgd(model, ..., backbone_lr_mult=cfg.optim.backbone_lr_mult)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resnetlab.config import Config
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import SourceWeights, read_weights
from resnetlab.models.registry import fitting_models, uses_bottleneck

HEAD = ("fc.weight", "fc.bias")


def read_source(cfg: Config) -> SourceWeights | None:
    """The weights of `train.init_from` (None when it is not set), checked against `cfg.model`: the
    same network in the same layout, or a one-line error naming the settings to change."""
    if not cfg.train.init_from:
        return None
    source = read_weights(cfg.train.init_from)
    m = cfg.model
    if source.model is not None and source.model != m.name:
        raise UserError(f"train.init_from holds {source.model} weights, but model.name is {m.name}")
    for key, value in source.layout.items():
        ours = getattr(m, key)
        if key == "shortcut" and ours is None:
            continue  # None: the paper's default for this network, checked by the shapes below
        if key == "stride_in_1x1" and not uses_bottleneck(m.name):
            continue  # basic blocks (ResNet-18/34, CIFAR) have no 1x1 conv to put the stride on
        if ours != value:
            raise UserError(
                f"train.init_from weights have model.{key}={value!r}, the config {ours!r}: "
                f"--set model.{key}={str(value).lower() if isinstance(value, bool) else value}"
            )
    return source


def source_stats(source: SourceWeights | None) -> tuple[Tensor, Tensor | None] | None:
    """The normalisation (mean, std or None) the data must use: the source's own."""
    return None if source is None else (source.mean.float(), None if source.std is None else source.std.float())


def resumed_stats(cfg: Config, checkpoint: dict | None) -> tuple[Tensor, Tensor | None] | None:
    """A resumed fine-tuning run keeps the normalisation it started with, from its own checkpoint (the
    source need not be there any more); other runs compute theirs from the data (None)."""
    if not cfg.train.init_from or checkpoint is None:
        return None
    meta = checkpoint["meta"]
    return meta["mean"].float(), None if meta.get("std") is None else meta["std"].float()


def init_model(model: nn.Module, source: SourceWeights, *, classes: list[str], cfg: Config | None = None) -> list[str]:
    """Load `source` into `model` (built for this run's classes and `cfg`). The head (fc) is kept when
    the classes are the same and replaced (left as initialised) when their number or names differ.
    Grey weights on RGB data or the reverse: conv1 adapted with `train.init_channels=adapt`, else
    refused. A shape mismatch anywhere else is refused, naming the registered network the weights
    fit; missing and unexpected keys are reported. Returns the report lines."""
    target = model.state_dict()
    state = dict(source.state_dict)
    lines = [f"init from {source.description}"]
    n_src, n_new = source.num_classes, len(classes)
    names_differ = bool(source.classes) and source.classes != list(classes)
    if n_src is not None and (n_src != n_new or names_differ):
        for k in HEAD:
            state.pop(k, None)
        why = f"{n_src} -> {n_new} classes" if n_src != n_new else f"{n_new} classes, other names"
        lines.append(f"head replaced: fc {why}, newly initialised")
    lines += _adapt_input_channels(state, target, "refuse" if cfg is None else cfg.train.init_channels)
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if mismatched:
        k = mismatched[0]
        raise UserError(
            f"train.init_from: {k} has shape {tuple(state[k].shape)} in the weights, {tuple(target[k].shape)} in "
            f"the model ({len(mismatched)} such tensors); the architecture differs" + _did_you_mean(source, cfg)
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in HEAD]
    if len(missing) == len([k for k in target if k not in HEAD]):
        raise UserError(
            f"train.init_from: no tensor of {source.description} fits {type(model).__name__}"
            + _did_you_mean(source, cfg)
        )
    if missing or result.unexpected_keys:
        hint = _did_you_mean(source, cfg)
        if hint:  # another registered network takes every tensor: a depth or shortcut mix-up, not a partial load
            example = (missing or result.unexpected_keys)[0]
            what = "missing" if missing else "unexpected"
            raise UserError(
                f"train.init_from: {len(missing)} missing and {len(result.unexpected_keys)} unexpected tensors "
                f"(e.g. {what} {example})" + hint
            )
    if missing:
        lines.append(f"missing keys (left as initialised): {len(missing)}: {', '.join(missing[:5])}")
    if result.unexpected_keys:
        n = len(result.unexpected_keys)
        lines.append(f"unexpected keys (ignored): {n}: {', '.join(result.unexpected_keys[:5])}")
    return lines


def _did_you_mean(source: SourceWeights, cfg: Config | None) -> str:
    """ "; the weights fit model.name=resnet50: did you mean model.name=resnet50?", or "" when no other
    registered network (same family, any depth or shortcut option) takes every tensor of `source`."""
    if cfg is None:
        return ""
    m = cfg.model
    shortcut = m.shortcut or ("A" if m.name.startswith("cifar") else "B")  # None: the paper's default
    suggestions = []
    for fit in fitting_models(source.state_dict, m.name):
        settings = [f"model.name={fit['name']}"] if fit["name"] != m.name else []
        if "shortcut" in fit and fit["shortcut"] != shortcut:
            settings.append(f"model.shortcut={fit['shortcut']}")
        if not settings:
            return ""  # this very network fits: the misfit is elsewhere (the head, the channels)
        suggestions.append(" ".join(settings))
    return f"; the weights fit {suggestions[0]}: did you mean {suggestions[0]}?" if suggestions else ""


def _adapt_input_channels(state: dict[str, Tensor], target: dict[str, Tensor], how: str) -> list[str]:
    """Grey (1-channel) weights for RGB data or RGB weights for grey data: `train.init_channels`.
    "adapt": RGB -> grey sums conv1's filters over the 3 channels; grey -> RGB repeats the filter on each
    channel divided by 3. Either way the network answers a grey picture (R = G = B) as the source did:
    conv(g, w_r + w_g + w_b) = conv([g, g, g], [w_r, w_g, w_b]). "refuse": a one-line error."""
    if "conv1.weight" not in state or "conv1.weight" not in target:
        return []
    w, want = state["conv1.weight"], target["conv1.weight"]
    ours, theirs = want.shape[1], w.shape[1]
    if ours == theirs or w.shape[0] != want.shape[0]:
        return []
    if {ours, theirs} != {1, 3}:
        raise UserError(f"train.init_from: the weights take {theirs}-channel images, the data has {ours}")
    if how != "adapt":
        raise UserError(
            f"train.init_from: the weights take {theirs}-channel images, the data has {ours}; "
            "--set train.init_channels=adapt converts conv1 (RGB filters summed for grey data, grey ones spread "
            "over RGB)"
        )
    if theirs == 3:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)  # (O, 3, k, k) -> (O, 1, k, k)
        return ["conv1 adapted: RGB weights on grey images, filters summed over the 3 channels"]
    state["conv1.weight"] = torch.cat([w / 3] * 3, dim=1)  # (O, 1, k, k) -> (O, 3, k, k)
    return ["conv1 adapted: grey weights on RGB images, each filter spread over the 3 channels (/3)"]


def stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """ "stem" -> [conv1, bn1]; "layer1".. -> the stage: the names `train.freeze` takes."""
    stages = {"stem": [model.conv1, model.bn1]}
    for name in getattr(model, "stage_names", []):
        stages[name] = [getattr(model, name)]
    return stages


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: it normalises with its stored statistics and never
    updates them, whatever `model.train()` says. Same parameters and buffers (checkpoints unchanged)."""

    def train(self, mode: bool = True) -> FrozenStatsBatchNorm2d:
        return super().train(False)


def freeze(model: nn.Module, names: tuple[str, ...] | list[str]) -> list[str]:
    """Fix the parameters of the named parts ("stem", "layer1", ...) and keep their BN layers in
    eval mode (statistics fixed too). Returns the report line, or nothing."""
    if not names:
        return []
    stages = stage_modules(model)
    unknown = [n for n in names if n not in stages]
    if unknown:
        raise UserError(f"train.freeze: unknown part {unknown[0]!r}; this model has {', '.join(stages)}")
    count = 0
    for name in names:
        for module in stages[name]:
            for p in module.parameters():
                p.requires_grad_(False)
                count += p.numel()
            for m in module.modules():
                if type(m) is nn.BatchNorm2d:
                    m.__class__ = FrozenStatsBatchNorm2d  # same object, same state; eval mode for good
                    m.eval()
    return [f"frozen: {', '.join(names)} ({count:,} parameters, their BN statistics fixed)"]
