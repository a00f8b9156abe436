"""The configuration tree: one frozen dataclass per section (`model`, `data`, `optim`, `train`).

Each field's comment is its meaning in `resnetlab config keys`; a comment on the lines above a group
of fields is that group's heading there.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from resnetlab.errors import UserError, one_line


def user_cache_dir() -> Path:
    """The user's cache folder for resnetlab: `$XDG_CACHE_HOME/resnetlab`, default ~/.cache/resnetlab."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnetlab"


def default_data_dir() -> str:
    """`$RESNETLAB_DATA`, else the user cache dir (`$XDG_CACHE_HOME/resnetlab/data`)."""
    if os.environ.get("RESNETLAB_DATA"):
        return os.environ["RESNETLAB_DATA"]
    return str(user_cache_dir() / "data")


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = typing.get_args(CompileMode)  # torch.compile's modes


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cifar_resnet20"  # any name from `resnetlab.models.list_models()`
    depth: int | None = None  # only for the generic `cifar_resnet` / `cifar_plain` (6n+2)
    shortcut: Literal["A", "B", "C"] | None = None  # None: the paper's (A for CIFAR, B for ImageNet)
    stride_in_1x1: bool = True  # paper's Caffe release; False = torchvision "v1.5"
    zero_init_residual: bool = False  # not in the paper


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar10"  # cifar10 | cifar100 | mnist | fashion-mnist | imagenet | imagefolder
    dir: str = field(default_factory=default_data_dir)  # dataset root; default $RESNETLAB_DATA or ~/.cache
    download: bool = True  # fetch from the official location when missing (needs internet)
    val_split: int = 0  # >0: hold out this many training images (paper: 5000 -> 45k/5k)
    augment: bool = True  # pad 4 + random crop + flip (CIFAR); scale + crop + flip + PCA (ImageNet)
    flip: bool | None = None  # the training flips: null = the data set's own (off for MNIST's digits), or true / false
    pad: int = 4  # CIFAR-size data: zero padding before the random 32x32 crop (sec. 4.2)
    mean: Literal["pixel", "channel"] = "pixel"  # paper: per-pixel mean subtraction
    normalize_std: bool = False  # paper: mean subtraction only
    # ImageNet / ImageFolder trees (DIR/train/CLASS/IMAGE):
    # cifar: decoded once into an on-device tensor, pad + crop + flip (sec. 4.2); imagenet: scale + crop + flip
    # + PCA through a DataLoader (sec. 3.4); auto: cifar for cifar_* models, imagenet otherwise
    recipe: Literal["auto", "cifar", "imagenet"] = "auto"
    image_size: int = 0  # CIFAR recipe: resize every image to this side once when decoding; 0: as found (one size)
    eval_split: str = "val"  # the folder evaluated during training: DIR/val, DIR/test, ... (not with val_split)
    # ImageNet / ImageFolder only:
    scale_min: int = 256  # shorter side resized to a random size in [scale_min, scale_max]
    scale_max: int = 480  # ... [256, 480] in the paper (sec. 3.4)
    crop: int = 224  # training crop side; also the input size recorded in checkpoints
    lighting: float = 0.1  # AlexNet PCA colour augmentation std (0 disables)
    workers: int | None = None  # DataLoader worker processes (JPEG decoding); null: min(8, cores this process may use)
    decode: Literal["workers", "device"] = "workers"  # where JPEGs are decoded and cropped (device: nvjpeg on CUDA)
    loader: Literal["torch", "dali"] = "torch"  # dali: NVIDIA DALI, extra [dali] (CPU-only mode without a GPU)
    skip_corrupt: bool = False  # True: skip unreadable images and count them; False: stop and name it
    mean_samples: int = 10000  # training images sampled to compute the mean
    # where a folder's decoded images (CIFAR recipe) and mean (ImageNet recipe) are cached: user: the user
    # cache folder ($XDG_CACHE_HOME/resnetlab/folders); data: beside the images in data.dir; none: not cached
    cache: Literal["user", "data", "none"] = "user"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # initial learning rate (sec. 3.4, 4.2)
    momentum: float = 0.9  # SGD momentum
    # torch: v = m v + g, w -= lr v (PyTorch, fb.resnet.torch); caffe: v = m v + lr g, w -= v (the paper's
    # Caffe solver). The same at a constant lr; after an lr change caffe's steps carry the old lr a while
    momentum_form: Literal["torch", "caffe"] = "torch"
    weight_decay: float = 1e-4  # L2 on every parameter (the paper's 0.0001)
    schedule: Literal["multistep", "plateau"] = "multistep"  # plateau: ImageNet's "when error plateaus"
    milestones: tuple[int, ...] = (32000, 48000)  # multistep: divide lr by 10 at these iterations
    gamma: float = 0.1  # lr factor at each milestone / plateau
    # plateau (the paper does not define it; docs/fidelity.md): lr /10 when the evaluated error has not
    # beaten its best by more than plateau_threshold points for plateau_patience evaluations
    plateau_patience: int = 3  # plateau: evaluations without a new best before dividing
    plateau_threshold: float = 0.1  # plateau: points (%) a new best must improve on the old one by
    plateau_max_drops: int = 2  # plateau: divisions at most (0.1 -> 0.001, fb.resnet.torch's final lr)
    warmup_lr: float | None = None  # 110/1202 layers: 0.01 ...
    warmup_until_error: float = 80.0  # ... until the training error (%) is below this (or the 1st milestone)
    base_batch_size: int | None = None  # linear lr scaling: lr * batch_size / base_batch_size
    backbone_lr_mult: float = 1.0  # fine-tuning: lr x this for all but the head (fc); 0 trains the head only


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128  # global, across all processes
    max_iters: int = 64000  # total iterations (CIFAR: 64k, sec. 4.2)
    eval_every: int = 1000  # iterations between test-error evaluations (and at the end)
    checkpoint_every: int = 1000  # iterations between checkpoint.pt writes (and on SIGTERM/SIGINT)
    # also checkpoint at these iterations and keep each as checkpoint-<N>.pt: a run with another
    # schedule may start from one (`train --branch-from`) where the lr agrees up to N
    keep_checkpoints: tuple[int, ...] = ()
    log_every: int = 50  # iterations between training loss/error logs
    seed: int = 0  # seeds the weights, the data order and the augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 / fp16 autocast (fp16 with loss scaling) are opt-in for throughput (docs/fidelity.md)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp32: the paper's; bf16 | fp16: mixed precision
    channels_last: bool = True  # NHWC memory layout (faster convolutions on most devices)
    # The paper trains in fp32. On Ampere and later GPUs cuDNN runs fp32 convolutions in TF32 (10-bit
    # mantissa) by default, a departure; false turns TF32 off for convolutions and matrix products,
    # true allows it for both (faster). No effect on the CPU.
    tf32: bool = False
    compile: bool = False  # torch.compile the model
    # torch.compile's mode: "reduce-overhead" adds CUDA graphs (small CIFAR nets are launch-bound on a GPU)
    compile_mode: CompileMode = "default"
    eval_batch_size: int = 1000  # images per forward at evaluation
    # Fine-tuning (not in the paper, which trains from scratch): see docs/finetune.md.
    init_from: str | None = None  # start from: our checkpoint, torchvision:ResNet50_Weights.IMAGENET1K_V2, a .pth
    freeze: tuple[str, ...] = ()  # parts whose weights and BN statistics stay fixed: stem, layer1, ...
    # grey weights on RGB data or the reverse: refuse, or adapt conv1 (RGB filters summed for grey data,
    # grey filters spread over RGB / 3) and the normalisation (docs/finetune.md)
    init_channels: Literal["refuse", "adapt"] = "refuse"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Any config tree as a plain nested dict (tuples as lists), ready for YAML or JSON."""
    return _plain(dataclasses.asdict(cfg))


def _plain(obj: Any) -> Any:
    """Tuples -> lists so the dict dumps as plain YAML/JSON."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def section_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a dataclass: a tree's sections, or a section's keys."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def model_options(cfg: ModelConfig, *, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The keyword options of `create_model(cfg.name, ...)` for this model config: every option set
    away from its default, passed through when the model takes it (`models.model_option_names`), a
    one-line UserError when it does not; an option left at its default leaves the network's own."""
    from resnetlab.models.registry import model_option_names  # torch: only where a model is built

    try:
        accepted = model_option_names(cfg.name)
    except ValueError as e:
        raise UserError(f"model.name: {one_line(e)}") from None
    default = ModelConfig()
    opts: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        if f.name == "name" or value is None or value == getattr(default, f.name):
            continue
        if f.name not in accepted:
            takes = ", ".join(f"model.{k}" for k in sorted(accepted - {"num_classes", "in_channels"})) or "none"
            shown = str(value).lower() if isinstance(value, bool) else value
            raise UserError(f"model.{f.name}={shown} does not apply to {cfg.name} (its options: {takes})")
        opts[f.name] = value
    return opts
