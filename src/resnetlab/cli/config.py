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
import typing
from typing import Any

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
    show.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
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
    width = max(len(r["key"]) for r in rows)
    type_width = min(max(len(r["type"]) for r in rows), 28)
    for r in rows:
        default = json.dumps(r["default"])
        print(f"{r['key']:<{width}}  {r['type']:<{type_width}}  {default:<14}  {r['meaning']}".rstrip())
    return 0


def describe_keys(root: type) -> list[dict[str, Any]]:
    """[{key, type, default, meaning}] for every `section.key` of a config tree. The meaning is the
    comment written beside the field in its dataclass (the one place it is documented)."""
    from resnetlab.config import to_dict

    rows = []
    defaults = to_dict(root())
    for section in dataclasses.fields(root):
        cls = typing.get_type_hints(root)[section.name]
        docs = field_comments(cls)
        for f in dataclasses.fields(cls):
            rows.append(
                {
                    "key": f"{section.name}.{f.name}",
                    "type": str(f.type).replace("typing.", ""),
                    "default": defaults[section.name][f.name],
                    "meaning": docs.get(f.name, ""),
                }
            )
    return rows


_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class source, preceded by any comment lines just
    above it (e.g. "ImageNet / ImageFolder only:")."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = _FIELD.match(line)
        if m and not stripped.startswith(("def ", "@", '"""')):
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return out
