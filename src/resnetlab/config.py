"""One typed, frozen configuration tree; presets are YAML files in `configs/`.

Read at the boundary only (CLI, runner): models and loops receive plain values. Overrides are
`section.key=value` strings whose values are parsed as YAML and checked against the field's type;
an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from resnetlab.errors import UserError


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


# ---- validation -------------------------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring = 3, 8, 8, 8, 80


def cut(text: str, limit: int = 80) -> str:
    """`text` shortened to `limit` characters with "..." (what the user typed can be any size)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """`repr(value)` for an error message, at most 80 characters: reprlib stops at a few items per
    level, so a value of any size (aliases expanded) costs no more to show than a small one."""
    return cut(_REPR.repr(value))


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{key}: invalid value {shown(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{key}: {shown(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list, got {shown(value)}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_check(v, item_tp, key) for v in value)
    if tp in (int, float) and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 6.4e4 or 1e-4 without a dot or sign as a string.
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)  # 6.4e4 in YAML
            raise UserError(f"{key}: expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {shown(value)}")
        if not math.isfinite(value):  # .nan, .inf, "nan", "inf" pass every comparison below unnoticed
            raise UserError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {shown(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _section_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(root: type = None) -> list[str]:  # type: ignore[assignment]
    """Every `section.key` of a config tree (default: the classification `Config`)."""
    keys = []
    for section, section_tp in _section_types(root or Config).items():
        keys += [f"{section}.{k}" for k in _section_types(section_tp)]
    return keys


def require_at_least_one(cfg: Any, keys: list[str]) -> None:
    """UserError for the first `section.key` of `cfg` whose value is below 1 (counts, sizes, periods)."""
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 1:
            raise UserError(f"{key}: must be >= 1, got {value}")


# The loop counters every training config tree has (classification and detection).
TRAIN_COUNTS = [
    "train.batch_size",
    "train.max_iters",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.eval_batch_size",
]


class Range(typing.NamedTuple):
    """The values a number key takes: from `low` up to `high` (None: no upper bound), each end
    included unless `*_open`."""

    low: float = 0
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """None when `value` is in range, else what it must be ("> 0", "in [0, 1)", "<= 2147483647")."""
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (too_low or too_high):
            return None
        low, high = _number(self.low), _number(self.high)
        if self.high is not None and self.high != INT_LIMIT:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if too_low:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'<' if self.high_open else '<='} {high}"


def _number(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


INT_LIMIT = 2**31 - 1  # no count or size of a config is larger; 1e20 would pass `int` and fail deep inside a run

# The natural range of number keys, by `section.key` in every config tree (detection shares the names).
# A number key not listed here, a new one included, must be >= 0 (no count, size, rate or factor of
# either tree is negative); every integer is at most INT_LIMIT, every float finite (`_check`). Sizes,
# processes and depths have a real upper bound: 2**31 - 1 passed and overflowed a tensor's size or
# never ended deep inside a run.
MAX_SIDE = 4096  # pixels: an image side to resize to or crop (the paper's largest is 640, its multi-scale test)
MAX_BATCH = 65536  # the largest batch ResNet-50 has been trained with (Ying et al. 2018: 64k on a TPU pod)
RANGES: dict[str, Range] = {
    **{key: Range(1) for key in TRAIN_COUNTS},
    "train.batch_size": Range(1, MAX_BATCH),
    "train.eval_batch_size": Range(1, MAX_BATCH),
    "train.seed": Range(0, 2**32 - 1),  # what torch and numpy seeding accept
    "model.depth": Range(1, 2000),  # the paper's deepest is 1202
    "model.pool_size": Range(0, 64),  # detection: RoI side (14)
    "model.anchor_sizes": Range(0, MAX_SIDE),
    "data.scale_min": Range(1, MAX_SIDE),
    "data.scale_max": Range(1, MAX_SIDE),
    "data.crop": Range(1, MAX_SIDE),
    "data.min_size": Range(0, MAX_SIDE),  # detection (600)
    "data.max_size": Range(0, MAX_SIDE),  # detection (1000)
    "data.image_size": Range(0, 1024),  # CIFAR recipe: the whole split stays decoded on the device at this side
    "data.pad": Range(0, 256),  # CIFAR recipe: 4 in the paper; a pad past the image's side crops padding only
    "data.workers": Range(0, 256),  # DataLoader processes
    "data.shapes_images": Range(0, 100_000),  # detection's synthetic set, generated in memory
    "data.shapes_size": Range(0, 1024),
    "data.mean_samples": Range(1),
    "optim.lr": Range(0, low_open=True),
    "optim.momentum": Range(0, 1, high_open=True),
    "optim.gamma": Range(0, 1, low_open=True),
    "optim.milestones": Range(1),
    "optim.plateau_patience": Range(1),
    "optim.warmup_lr": Range(0, low_open=True),
    "optim.warmup_until_error": Range(0, 100),  # a training error in % (0: warm up until the 1st milestone)
    "optim.base_batch_size": Range(1),
}


# String keys that name files: a path (each name in it) or one folder name below data.dir. Checked
# against what a file system holds, so that a name too long is one line here, not ENAMETOOLONG (exit 1)
# deep inside a run.
PATH_KEYS = ("data.dir", "train.init_from", "model.pretrained")
NAME_KEYS = ("data.eval_split",)
NAME_MAX, PATH_MAX = 255, 4095  # bytes (Linux, macOS)


def _name_problem(key: str, value: str) -> str | None:
    names = value.split("/") if key in PATH_KEYS else [value]
    if key in NAME_KEYS and ("/" in value or value in ("", ".", "..")):
        return "must be one folder name (no '/', not empty, '.' or '..')"
    if len(value.encode()) > PATH_MAX or any(len(n.encode()) > NAME_MAX for n in names):
        if key in PATH_KEYS:
            return f"must be a path of at most {PATH_MAX} bytes, each name in it at most {NAME_MAX}"
        return f"must be a name of at most {NAME_MAX} bytes"
    return None


def check_ranges(cfg: Any) -> None:
    """UserError for the first number of a config tree (list items included) outside its range
    (`RANGES`, else >= 0; integers at most INT_LIMIT), or the first file name too long for a file
    system (`PATH_KEYS`, `NAME_KEYS`)."""
    for section, section_tp in _section_types(type(cfg)).items():
        values = getattr(cfg, section)
        for name, tp in _section_types(section_tp).items():
            key, value = f"{section}.{name}", getattr(values, name)
            rng = RANGES.get(key, Range(0))
            if isinstance(value, str) and (key in PATH_KEYS or key in NAME_KEYS):
                problem = _name_problem(key, value)
                if problem:
                    raise UserError(f"{key}: {problem}, got {shown(value)}")
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if isinstance(v, int) and rng.high is None:
                    rng = rng._replace(high=INT_LIMIT, high_open=False)
                problem = rng.problem(v)
                if problem:
                    nullable = type(None) in typing.get_args(tp)
                    raise UserError(f"{key}: must be {problem}{' (or null)' if nullable else ''}, got {cut(str(v))}")


def _validate(cfg: Any) -> Any:
    """Every number in its range (`check_ranges`, any tree), then the cross-field checks that no
    single range can express: the classification tree's here, another tree's in its own `validate()`
    method (detection's), run once, at load."""
    check_ranges(cfg)
    if not isinstance(cfg, Config):
        check = getattr(cfg, "validate", None)
        return check() if check else cfg
    o = cfg.optim
    if any(a >= b for a, b in zip(o.milestones, o.milestones[1:])):  # a repeated one would divide twice
        raise UserError(f"optim.milestones: must be strictly increasing, got {shown(list(o.milestones))}")
    if cfg.model.shortcut is not None and cfg.model.name.startswith(("plain", "cifar_plain")):
        raise UserError(f"model.shortcut: {cfg.model.name} is a plain network, it has no shortcuts")
    if cfg.data.scale_min > cfg.data.scale_max:
        raise UserError(f"data.scale_min must be <= data.scale_max, got {cfg.data.scale_min} > {cfg.data.scale_max}")
    return cfg


def from_dict(d: dict[str, Any], base: Any = None) -> Any:
    """Build a config tree from a nested dict (as in a preset YAML) on top of `base` (default: the
    default `Config()`; pass another frozen dataclass tree, e.g. detection's, to validate that)."""
    base = base if base is not None else Config()
    root = type(base)
    if not isinstance(d, dict):
        raise UserError(f"config must be a mapping of sections, got {type(d).__name__}")
    d = migrate(d, getattr(root, "RENAMED", {}))
    sections = _section_types(root)
    new = {}
    for section, section_tp in sections.items():
        values = d.get(section) or {}
        if not isinstance(values, dict):
            raise UserError(f"{section}: expected a mapping, got {shown(values)}")
        fields = _section_types(section_tp)
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise UserError(unknown_key(f"{section}.{unknown[0]}", root))
        checked = {k: _check(v, fields[k], f"{section}.{k}") for k, v in values.items()}
        new[section] = dataclasses.replace(getattr(base, section), **checked)
    unknown_sections = [k for k in d if k not in sections]
    if unknown_sections:
        name = cut(str(unknown_sections[0]), 40)
        close = difflib.get_close_matches(name, list(sections), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown config section {name!r}{hint} (sections: {', '.join(sections)})")
    return _validate(root(**new))


def unknown_key(key: str, root: type) -> str:
    """The message for a `section.key` that `root`'s tree does not have: the closest keys (same
    name in another section first, then by spelling) and where the full list is."""
    keys = valid_keys(root)
    name = key.rpartition(".")[2]
    close = [k for k in keys if k.rpartition(".")[2] == name] or difflib.get_close_matches(key, keys, n=2, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close[:3])}?" if close else ""
    listing = "resnetlab config keys" + ("" if root is Config else " --detection")
    return f"unknown config key {cut(key, 60)}{hint} (valid keys: `{listing}`)"


def migrate(d: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """`d` with the old `section.key` names of `renamed` moved to their new names (stored configs of
    older runs and presets stay readable); both names at once is a UserError."""
    if not renamed:
        return d
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for old, new in renamed.items():
        (s_old, k_old), (s_new, k_new) = old.split("."), new.split(".")
        section = d.get(s_old)
        if isinstance(section, dict) and k_old in section:
            if k_new in (d.get(s_new) or {}):
                raise UserError(f"{old} and {new} are both set; {old} is the old name of {new}, keep only {new}")
            d.setdefault(s_new, {})[k_new] = section.pop(k_old)
    return d


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `section.key=value` strings (value parsed as YAML: `optim.milestones=[400]`); the one
    `--set` parser of every command. A key given again wins (commands add theirs after the user's;
    the user's own --set refuses a repeated key where argparse reads it, `cli.args.Overrides`)."""
    keys = valid_keys(type(cfg))
    renamed = getattr(type(cfg), "RENAMED", {})
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key.count(".") != 1:
            raise UserError(f"override {shown(item)} must look like section.key=value (keys: `resnetlab config keys`)")
        if key in renamed:
            raise UserError(
                f"{key} is now called {renamed[key]} (as in classification configs): --set {renamed[key]}=..."
            )
        if key not in keys:
            raise UserError(unknown_key(key, type(cfg)))
        section, name = key.split(".")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself (a path with a colon)
        except YAMLRefused as e:
            raise UserError(f"--set {key}: {e}") from None
        nested.setdefault(section, {})[name] = value
    return from_dict(nested, base=cfg)


def configs_dir() -> Path:
    """The presets folder: `$RESNETLAB_CONFIGS`, else `configs/` of the source checkout (editable
    install), else the copy a wheel installs into `<prefix>/share/resnetlab/configs`."""
    env = os.environ.get("RESNETLAB_CONFIGS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "resnetlab" / "configs"


def preset_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def list_presets() -> list[str]:
    return preset_names(configs_dir())


def read_preset(name_or_path: str, folder: Path, what: str = "preset") -> dict[str, Any]:
    """The YAML mapping of a preset by name (`folder/NAME.yaml`) or of a path to a YAML file;
    a missing preset is a UserError listing those in `folder`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"no {what} {name_or_path!r}; presets: {', '.join(preset_names(folder))}")
    return read_yaml(path)


# ---- YAML ----------------------------------------------------------------------------------------

YAML_MAX_VALUES = 100_000  # a config holds about 60 values; a list key a few hundred at most
YAML_MAX_DEPTH = 20  # a config is 3 levels deep


class YAMLRefused(Exception):
    """Valid YAML that no config needs and that would be read wrong or at great cost."""


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load(text)` for configs (presets, run configs, --set values), which refuses
    (YAMLRefused, naming the key and its line):
    - a key given twice in one mapping: PyYAML keeps the last silently, so a second `optim:`
      section would replace the first whole;
    - aliases that expand to more than YAML_MAX_VALUES values: the parsed objects share what an
      alias names, but checking, printing or saving the config copies it out, and nine nested
      aliases in 400 bytes are a billion values (gigabytes, minutes);
    - nesting deeper than YAML_MAX_DEPTH, or an alias inside what it names.
    The node graph is checked before anything is built, in time linear in the text."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_values(node, "", 0, {}, set())
        return loader.construct_document(node)
    except RecursionError:  # PyYAML's composer recurses once per level
        raise YAMLRefused(f"nested deeper than {YAML_MAX_DEPTH} levels") from None
    except ValueError as e:  # a scalar PyYAML resolves but cannot build: a 5000-digit int, a 13th month
        raise yaml.constructor.ConstructorError(problem=cut(str(e), 60)) from None
    finally:
        loader.dispose()


_MERGE = "tag:yaml.org,2002:merge"


def _at(path: str) -> str:
    return f"{path}: " if path else ""


def _count_values(node: yaml.Node, path: str, depth: int, counted: dict[int, int], open_: set[int]) -> int:
    """The number of values under `node` with every alias expanded (each node counted once, then
    reused), refusing duplicate keys on the way. `path` is the dotted key of `node` ("optim.lr")."""
    if id(node) in counted:
        return counted[id(node)]
    line = node.start_mark.line + 1
    if id(node) in open_:
        raise YAMLRefused(f"{_at(path)}an alias refers to the value that contains it (line {line})")
    if depth > YAML_MAX_DEPTH:
        raise YAMLRefused(f"{_at(path)}nested deeper than {YAML_MAX_DEPTH} levels (line {line})")
    open_.add(id(node))
    total = 1
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = cut(str(key.value), 40) if isinstance(key, yaml.ScalarNode) else "?"
            dotted = f"{path}.{name}" if path else name
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                here = key.start_mark.line + 1
                if name in lines:
                    raise YAMLRefused(
                        f"{dotted} is given twice (lines {lines[name]} and {here}); the second would replace the first"
                    )
                lines[name] = here
            total += _count_values(key, dotted, depth + 1, counted, open_)
            total += _count_values(value, dotted, depth + 1, counted, open_)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_count_values(item, path, depth + 1, counted, open_) for item in node.value)
    open_.discard(id(node))
    if total > YAML_MAX_VALUES:
        raise YAMLRefused(f"{_at(path)}its aliases expand to more than {YAML_MAX_VALUES} values (line {line})")
    counted[id(node)] = total
    return total


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The one YAML reader: a mapping from `path`, or a UserError naming the file."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}); a preset is YAML text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML ({e.__class__.__name__}{where}: {cut(str(problem), 60)})") from None
    except YAMLRefused as e:
        raise UserError(f"{path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def flat_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(`section.key`, value in a, value in b) for every key whose values differ (missing: None)."""

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}

    fa, fb = flat(a), flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def load_preset(name_or_path: str) -> Config:
    """A preset by name (`cifar10-resnet20`) or a path to a YAML file."""
    return from_dict(read_preset(name_or_path, configs_dir()))


def load_config(preset: str | None, overrides: list[str] | None = None) -> Config:
    cfg = load_preset(preset) if preset else Config()
    return apply_overrides(cfg, overrides or [])


def dump(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def model_options(cfg: ModelConfig, *, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The keyword options of `create_model(cfg.name, ...)` for this model config: every option set
    away from its default, passed through when the model takes it (`models.model_option_names`), a
    one-line UserError when it does not; an option left at its default leaves the network's own."""
    from resnetlab.models.registry import model_option_names  # torch: only where a model is built

    try:
        accepted = model_option_names(cfg.name)
    except ValueError as e:
        raise UserError(f"model.name: {e}") from None
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
