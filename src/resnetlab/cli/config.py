"""`resnetlab config show|keys`: the effective config of a preset plus overrides; every key explained.

resnetlab config show --preset cifar10-resnet20 --set train.max_iters=600
resnetlab config keys
resnetlab config keys --detection
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Any

from resnetlab.cli.args import add_overrides

EPILOG = """examples:
  resnetlab config show --preset cifar10-resnet20 --set train.max_iters=600 optim.milestones=[400]
  resnetlab config show --preset voc07-resnet101-c4 --detection
  resnetlab config keys                  # key, type, default, meaning
  resnetlab config keys --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="print the effective config of a preset (with overrides), or every key with its meaning",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="the resolved config as YAML (what `train` would write to config.yaml)")
    show.add_argument("--preset", metavar="NAME", help="configs/NAME.yaml or a YAML path (default: the defaults)")
    add_overrides(show)
    show.add_argument("--detection", action="store_true", help="the detection tree (configs/detection/)")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_show)
    keys = sub.add_parser("keys", help="every config key with its type, default and meaning")
    keys.add_argument("--detection", action="store_true", help="the detection tree")
    keys.add_argument("--json", action="store_true", help="one JSON list of {key, type, default, meaning}")
    keys.set_defaults(func=_keys)


def _show(args: argparse.Namespace) -> int:
    import yaml

    from resnetlab.config import load_config, to_dict

    if args.detection:
        from resnetlab.detection.config import load_detection_config

        cfg = load_detection_config(args.preset, args.set)
    else:
        cfg = load_config(args.preset, args.set)
    d = to_dict(cfg)
    print(json.dumps(d, indent=2) if args.json else yaml.safe_dump(d, sort_keys=False), end="\n" if args.json else "")
    return 0


def _keys(args: argparse.Namespace) -> int:
    if args.detection:
        from resnetlab.detection.config import DetectionConfig as root
    else:
        from resnetlab.config import Config as root
    rows = describe_keys(root)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for line in format_keys(rows):
        print(line)
    return 0


def format_keys(rows: list[dict[str, Any]]) -> list[str]:
    """One line per key (key, type, default, meaning); a comment written above a group of fields in
    the source is its own `# ...` line before them, never run into a key's meaning."""
    width = max(len(r["key"]) for r in rows)
    type_width = max(len(r["type"]) if len(r["type"]) <= 28 else 0 for r in rows)  # a longer one overflows
    default_width = max(len(json.dumps(r["default"])) if len(json.dumps(r["default"])) <= 16 else 0 for r in rows)
    lines = []
    for r in rows:
        if r["note"]:
            lines.append(f"# {r['note']}")
        default = json.dumps(r["default"])
        lines.append(
            f"{r['key']:<{width}}  {r['type']:<{type_width}}  {default:<{default_width}}  {r['meaning']}".rstrip()
        )
    return lines


def describe_keys(root: type) -> list[dict[str, Any]]:
    """[{key, type, default, meaning, note}] for every `section.key` of a config tree. The meaning is
    the comment written beside the field in its dataclass (the one place it is documented); the note
    is a comment on the lines above the field (a heading such as "ImageNet / ImageFolder only:"), or
    the meaning itself when the field has no comment of its own."""
    from resnetlab.config import to_dict

    rows = []
    defaults = to_dict(root())
    for section in dataclasses.fields(root):
        cls = typing.get_type_hints(root)[section.name]
        hints = typing.get_type_hints(cls)
        docs = field_comments(cls)
        for f in dataclasses.fields(cls):
            above, beside = docs.get(f.name, ("", ""))
            rows.append(
                {
                    "key": f"{section.name}.{f.name}",
                    "type": type_name(hints[f.name]),
                    "default": defaults[section.name][f.name],
                    "meaning": beside or above,
                    "note": above if beside else "",
                }
            )
    return rows


def type_name(tp: Any) -> str:
    """A field's type as a user writes its values: `float`, `int | null`, `fp32 | bf16 | fp16`
    (a Literal's choices), `list[str]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        return f"list[{type_name(args[0])}]"
    return getattr(tp, "__name__", str(tp))


_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """Field name -> (the comment lines just above it, e.g. "ImageNet / ImageFolder only:"; the
    comment on its own line) in the class source."""
    out: dict[str, tuple[str, str]] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = _FIELD.match(line)
        if m and not stripped.startswith(("def ", "@", '"""')):
            out[m.group(1)] = (" ".join(above), (m.group(2) or "").strip())
        above = []
    return out
