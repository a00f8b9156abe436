"""A checkpoint turned back into a model in eval mode plus the normalisation it was trained with."""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.config import default_data_dir
from resnetlab.data.ondevice import Normalizer
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import load

IMAGE_DATASETS = ("imagenet", "imagefolder")  # full-size images: the paper's test protocols apply


@dataclass
class LoadedModel:
    model: nn.Module
    meta: dict[str, Any]
    config: dict[str, Any]
    path: str

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset", ""))

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def normalize(self, x: Tensor, *, into: Tensor | None = None) -> Tensor:
        """uint8 (N, C, h, w) -> float (x / 255 - mean) [/ std], the normalisation of the contract
        (written into `into`, a `FloatScratch`'s tensor, when given).

        A per-pixel mean is stored at the training crop size; at any other size (the multi-scale
        protocol sees whole images of 224..640 pixels) the mean map is resized bilinearly to (h, w),
        which keeps its smooth centre-to-border shape. A per-channel mean needs nothing."""
        mean = self.meta["mean"].to(x.device, torch.float32)
        if mean.shape[-2:] != (1, 1) and mean.shape[-2:] != x.shape[-2:]:
            mean = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        std = self.meta.get("std")
        return Normalizer(mean, None if std is None else std.to(x.device, torch.float32), x.device)(x, into=into)


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """Rebuild `create_model(meta["model"], **meta["model_options"])`, load its weights, eval mode."""
    meta = load(path).get("meta") or {}
    check_meta(meta, f"checkpoint {path}")
    missing = [k for k in ("model", "model_options", "num_classes", "image_size", "mean") if k not in meta]
    if missing:
        raise UserError(f"checkpoint {path} has no {', '.join(missing)} in its meta; cannot rebuild the model")
    weights = read_weights(path, what="checkpoint")
    model = weights.build().to(device).eval()
    return LoadedModel(model, weights.meta, weights.config, str(path))


def resolve_data_dir(config: dict[str, Any], override: str | None, say: Callable[[str], None] | None) -> str:
    """data.dir for a command that starts from a checkpoint: `--data-dir` when given; else the
    checkpoint's own, said aloud (a checkpoint from elsewhere names a folder its author chose);
    else the default ($RESNETLAB_DATA or the cache)."""
    if override:
        return override
    stored = (config.get("data") or {}).get("dir")
    if stored:
        if say is not None:
            say(f"data: {stored} (data.dir from the checkpoint's config; --data-dir DIR reads another folder)")
        return str(stored)
    return default_data_dir()


def imagenet_categories() -> list[str]:
    """ImageNet's 1000 class names in the standard order, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# ILSVRC-2012's first and last synsets: torchvision's 1000 names are in the sorted order of its synsets
ILSVRC_ENDS = ("n01440764", "n15075141")


def is_ilsvrc_synsets(names: list[str]) -> bool:
    """ILSVRC-2012's 1000 synset ids as an ImageFolder lists them: sorted, from its first to its last."""
    return (
        len(names) == 1000
        and (names[0], names[-1]) == ILSVRC_ENDS
        and names == sorted(names)
        and all(re.fullmatch(r"n\d{8}", c) for c in names)
    )


def _class_key(model: LoadedModel) -> tuple[int, Any]:
    """What an ensemble's models must share: ILSVRC-2012's classes whether named by synset (our
    ImageNet runs) or by torchvision's readable names (imported weights), else the names as stored."""
    names = model.classes
    if model.num_classes == 1000 and (is_ilsvrc_synsets(names) or names == imagenet_categories()):
        return 1000, "ILSVRC-2012"
    return model.num_classes, names


def load_models(paths: list[str], device: torch.device) -> list[LoadedModel]:
    """Several checkpoints for an ensemble: they must agree on the classes and on the input size."""
    if not paths:
        raise UserError("give at least one --checkpoint")
    models = [load_model(p, device) for p in paths]
    first = models[0]
    for m in models[1:]:
        if _class_key(m) != _class_key(first):
            raise UserError(f"{m.path} and {first.path} have different classes; an ensemble needs the same ones")
        if _inputs(m) != _inputs(first):
            raise UserError(
                f"{m.path} and {first.path} were trained on different inputs ({_inputs(m)} and {_inputs(first)}); "
                "cannot ensemble them"
            )
    return models


def _inputs(model: LoadedModel) -> str:
    """What a model is fed: the first model of an ensemble decides the decoding, views and protocol for all."""
    kind = "image files" if model.dataset in IMAGE_DATASETS else "tensors"
    recipe = f", {model.meta['recipe']} recipe" if model.meta.get("recipe") else ""
    return f"{model.image_size} px, {model.meta.get('in_channels') or 3} channel(s), {kind}{recipe}"


# ---- weights to start training from (`train.init_from`) ------------------------------------------

# torchvision's ImageNet normalisation (per channel, with std), which its ResNet weights expect.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
TORCHVISION_PREFIX = "torchvision:"
# torchvision's ResNets: "v1.5" (stride on the 3x3 of the bottleneck), projection shortcuts (B).
TORCHVISION_LAYOUT = {"stride_in_1x1": False, "shortcut": "B"}


@dataclass(frozen=True)
class Weights:
    """The one typed checkpoint record: trained weights and what rebuilding and using them needs,
    whatever file they came from (our checkpoint, a torchvision .pth, `torchvision:NAME`).

        w = read_weights("runs/r20/final.pt")          # or "resnet50.pth", "torchvision:ResNet50_Weights.IMAGENET1K_V2"
        model = w.build()                              # create_model(w.model, **w.options), weights loaded strictly
        model = w.build(num_classes=7, strict=False)   # another head: fc left as initialised (fine-tuning)

    Fields: the state dict; `model`, the registered name (None for a bare torchvision .pth: pass
    `build(model=...)`); `options`, the `create_model` options the weights fit (layout, classes,
    channels); the input normalisation ([0, 1] scale; mean (C, 1, 1) or (C, H, W), std or None);
    the class names; the run's `config` and `meta` (ours; empty for torchvision's); a description.
    """

    state_dict: dict[str, Tensor]
    model: str | None
    options: dict[str, Any]
    mean: Tensor | None
    std: Tensor | None
    classes: list[str]
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> dict[str, Any]:
        """The options that change what the weights mean: shortcut, stride_in_1x1, depth."""
        return {k: self.options[k] for k in ("depth", "shortcut", "stride_in_1x1") if k in self.options}

    @property
    def num_classes(self) -> int | None:
        w = self.state_dict.get("fc.weight")
        return int(w.shape[0]) if w is not None else None

    def build(self, model: str | None = None, *, strict: bool = True, **options: Any) -> nn.Module:
        """`create_model(model or self.model, **{**self.options, **options})` with these weights loaded;
        a network they do not fit is a one-line UserError."""
        name = model or self.model
        if name is None:
            raise UserError(f"{self.description} does not name its network; give the model name")
        net = None
        try:
            net = create_model(name, **{**self.options, **options})
            net.load_state_dict(self.state_dict, strict=strict)
        except (ValueError, TypeError, RuntimeError) as e:
            why = _mismatch(net.state_dict(), self.state_dict) if net is not None else None
            why = why or str(e).splitlines()[0][:200]
            raise UserError(f"{self.description}: cannot rebuild {name!r} ({why})") from None
        return net


def _mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """What differs between a network's state dict and a file's, in a few words."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    parts = [f"{len(missing)} missing keys, e.g. {missing[0]}"] if missing else []
    parts += [f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}"] if unexpected else []
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(getattr(found[k], "shape", ()))]
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shapes differ, e.g. {k}: {tuple(found[k].shape)} here, {tuple(expected[k].shape)} expected"
        )
    return "; ".join(parts)


SourceWeights = Weights  # the name `train.init_from` used first


def read_weights(source: str | Path, what: str = "train.init_from") -> Weights:
    """`source`: one of our checkpoints, `torchvision:ResNet50_Weights.IMAGENET1K_V2` (fetched once
    into torchvision's cache, `$TORCH_HOME/hub/checkpoints`, its SHA-256 prefix checked; offline
    afterwards) or a local torchvision ResNet state-dict file (.pth). Every file is read with
    `weights_only=True`."""
    source = str(source)
    if source.startswith(TORCHVISION_PREFIX):
        return _torchvision_weights(source[len(TORCHVISION_PREFIX) :])
    path = Path(source)
    if not path.is_file():
        raise UserError(
            f"{what}: {source} does not exist (give a resnetlab checkpoint, a torchvision .pth "
            "or torchvision:ResNet50_Weights.IMAGENET1K_V2)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # it pickles Python objects, not only tensors: loading it would run code
        raise UserError(
            f"{what}: {source} is not a plain tensor dictionary (it pickles Python objects, which are never "
            "loaded here); where the file was made and is trusted, save the weights alone with "
            "`torch.save(model.state_dict(), 'weights.pth')` and use that"
        ) from None
    except Exception as e:  # truncated, random bytes
        raise UserError(f"{what}: {source} is unreadable or truncated ({type(e).__name__})") from None
    if isinstance(obj, dict) and obj.get("format") == "resnetlab":
        ckpt = load(path)
        meta = ckpt.get("meta") or {}
        check_meta(meta, f"{what}: checkpoint {source}")
        if "model" not in meta:
            raise UserError(f"{what}: checkpoint {source} has no model name in its meta; cannot rebuild it")
        if "mean" not in meta and what == "train.init_from":  # its normalisation is the new run's
            raise UserError(f"{what}: checkpoint {source} has no mean in its meta")
        return Weights(
            ckpt["model"],
            meta["model"],
            dict(meta.get("model_options") or {}),
            meta.get("mean"),
            meta.get("std"),
            list(meta.get("classes") or []),
            f"checkpoint {source} ({meta['model']} on {meta.get('dataset', '?')})",
            config=ckpt.get("config") or {},
            meta=meta,
        )
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{what}: {source} is neither a resnetlab checkpoint nor a torchvision state dict")
    options = _torchvision_options(obj)
    stats = torchvision_stats(options.get("in_channels", 3))
    return Weights(obj, None, options, *stats, [], f"torchvision state dict {path.name}")


# The types of a checkpoint's meta entries that rebuilding and using a model reads (docs/DEVELOPING.md).
_META_TYPES = {
    "model": (str, "a model name"),
    "model_options": (dict, "a mapping of create_model options"),
    "dataset": (str, "a dataset name"),
    "num_classes": (int, "a positive integer"),
    "in_channels": (int, "a positive integer"),
    "image_size": (int, "a positive integer"),
    "mean": (Tensor, "a tensor of shape (C, 1, 1) or (C, H, W)"),
    "std": ((Tensor, type(None)), "a tensor of shape (C, 1, 1) or none"),
    "classes": ((list, type(None)), "a list of class names"),
}


def check_meta(meta: Any, where: str) -> None:
    """UserError naming the first entry of a checkpoint's meta whose type is not the contract's (a file
    written by hand or by another tool): a string as mean, a list as model options, ..."""
    if not isinstance(meta, dict):
        raise UserError(f"{where}: its meta is a {type(meta).__name__}, not a mapping; cannot rebuild the model")
    for key, (kind, expected) in _META_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and kind is int:
            ok = value > 0
        if ok and isinstance(value, Tensor):
            ok = value.dim() == 3 and value.is_floating_point()
            if ok and isinstance(meta.get("in_channels"), int):
                ok = value.shape[0] == meta["in_channels"]
        if ok and key == "classes":
            ok = all(isinstance(c, str) for c in value)
        if ok and key == "model_options":
            ok = all(isinstance(k, str) for k in value)
        if not ok:
            shown = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)[:60]
            raise UserError(f"{where}: meta[{key!r}] is {shown}, not {expected}; cannot rebuild the model")


def _torchvision_options(state: dict[str, Tensor]) -> dict[str, Any]:
    """The `create_model` options of a torchvision ResNet state dict: v1.5, shortcut B, its head and
    input channels."""
    options = dict(TORCHVISION_LAYOUT)
    if "fc.weight" in state:
        options["num_classes"] = int(state["fc.weight"].shape[0])
    if "conv1.weight" in state:
        options["in_channels"] = int(state["conv1.weight"].shape[1])
    return options


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2: PIL's colour to grey, what our grey images are made with


def torchvision_stats(in_channels: int = 3) -> tuple[Tensor, Tensor]:
    """torchvision's ImageNet mean and std, (C, 1, 1). One input channel: the luma-weighted ones, the
    mean of grey images made from ImageNet's colour ones (their std approximately: the channels
    correlate closely)."""
    mean, std = torch.tensor(TORCHVISION_MEAN), torch.tensor(TORCHVISION_STD)
    if in_channels == 1:
        luma = torch.tensor(LUMA)
        mean, std = (luma * mean).sum(0, keepdim=True), (luma * std).sum(0, keepdim=True)
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)


def _torchvision_weights(name: str) -> SourceWeights:
    import torchvision

    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UserError(
            f"train.init_from: unknown torchvision weights {name!r}; e.g. ResNet50_Weights.IMAGENET1K_V2, "
            "ResNet18_Weights.IMAGENET1K_V1"
        ) from None
    model = type(weights).__name__.removesuffix("_Weights").lower()  # ResNet50_Weights -> resnet50
    if model not in {f"resnet{d}" for d in (18, 34, 50, 101, 152)}:
        raise UserError(f"train.init_from: {name} are {model} weights; resnetlab builds resnet18..resnet152")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    created = [d for d in (cache, *cache.parents) if not d.exists()]  # what a failed download must not leave
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)  # its cache, its checksum
    except BaseException as e:  # Ctrl-C included: torch.hub removes its partial file, we the folders it made
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        if not isinstance(e, (OSError, RuntimeError)):  # URLError is an OSError; a hash mismatch a RuntimeError
            raise
        raise UserError(
            f"train.init_from: cannot fetch {weights.url} ({str(e).splitlines()[0][:120]}); offline, put that "
            f"file into {Path(torch.hub.get_dir()) / 'checkpoints'}"
        ) from None
    t = weights.transforms()
    return Weights(
        state,
        model,
        _torchvision_options(state),
        torch.tensor(t.mean).view(3, 1, 1),
        torch.tensor(t.std).view(3, 1, 1),
        list(weights.meta.get("categories") or []),
        f"torchvision {name}",
    )
