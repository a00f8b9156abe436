"""The typed loader: a nested dict or `section.key=value` overrides -> a validated config tree.

Values are checked against each field's type; an unknown key is an error that names the closest
valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

import yaml

from resnetlab.config.ranges import check_ranges
from resnetlab.config.safe_yaml import YAMLRefused, parse_yaml
from resnetlab.config.schema import Config, section_types
from resnetlab.errors import UserError, one_line
from resnetlab.utils.text import cut, shown


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
        try:
            number = float(value)  # an int past 1e308 does not fit
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):  # .nan, .inf, "nan", "inf" pass every comparison below unnoticed
            raise UserError(f"{key}: must be a finite number, got {cut(str(value), 40)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {shown(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def valid_keys(root: type = None) -> list[str]:  # type: ignore[assignment]
    """Every `section.key` of a config tree (default: the classification `Config`)."""
    keys = []
    for section, section_tp in section_types(root or Config).items():
        keys += [f"{section}.{k}" for k in section_types(section_tp)]
    return keys


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
    sections = section_types(root)
    new = {}
    for section, section_tp in sections.items():
        values = d.get(section)
        values = {} if values is None else values  # `optim:` with nothing under it: no change
        if not isinstance(values, dict):  # `optim: []`, `train: false` were read as empty sections
            raise UserError(f"{section}: expected a mapping, got {shown(values)}")
        fields = section_types(section_tp)
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
            raise UserError(f"--set {key}: {one_line(e)}") from None
        key_type = section_types(section_types(type(cfg))[section])[name]
        nested.setdefault(section, {})[name] = _as_typed(value, raw.strip(), key_type)
    return from_dict(nested, base=cfg)


def _as_typed(value: Any, text: str, tp: Any) -> Any:
    """YAML 1.1 reads `off` and `yes` as booleans and `2024` as a number: where the key does not take
    that value, the text as typed (a folder named 2024; an error that shows `off`, not False)."""
    if not isinstance(value, (bool, int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return value  # .nan and .inf: "must be a finite number, got nan" names them better
    try:
        return _check(value, tp, "")
    except UserError:
        return text


def flat_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(`section.key`, value in a, value in b) for every key whose values differ (missing: None)."""

    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}

    fa, fb = flat(a), flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
