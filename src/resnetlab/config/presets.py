"""Presets: the YAML files of `configs/`, read by name or path, and a config written back as YAML."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from resnetlab.config.loader import apply_overrides, from_dict
from resnetlab.config.safe_yaml import read_yaml
from resnetlab.config.schema import Config, to_dict
from resnetlab.errors import UserError
from resnetlab.utils.text import cut


def configs_dir() -> Path:
    """The presets folder: `$RESNETLAB_CONFIGS`, else `configs/` of the source checkout (editable
    install), else the copy a wheel installs into `<prefix>/share/resnetlab/configs`."""
    env = os.environ.get("RESNETLAB_CONFIGS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[3] / "configs"
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
    try:
        found = path.is_file()
    except OSError:  # a name too long for the file system
        found = False
    if not found:
        raise UserError(f"no {what} {cut(repr(name_or_path), 80)}; presets: {', '.join(preset_names(folder))}")
    return read_yaml(path)


def load_preset(name_or_path: str) -> Config:
    """A preset by name (`cifar10-resnet20`) or a path to a YAML file."""
    return from_dict(read_preset(name_or_path, configs_dir()))


def load_config(preset: str | None, overrides: list[str] | None = None) -> Config:
    cfg = load_preset(preset) if preset else Config()
    return apply_overrides(cfg, overrides or [])


def dump(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
