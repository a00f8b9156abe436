"""`resnetlab info`: parameters, multiply-adds and stage shapes of a model; the paper's tables 1 and 6.

resnetlab info resnet50                  # paper layout: stride on the 1x1, shortcut B
resnetlab info resnet50 --v1.5 --json    # torchvision layout
resnetlab info cifar_resnet20 --in-channels 1 --input-size 28
resnetlab info --paper                   # table 1 FLOPs and table 6 params: paper vs measured
resnetlab info --list
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from resnetlab.cli.args import POSITIVE, int_at_least
from resnetlab.errors import UserError, one_line

if TYPE_CHECKING:  # resnetlab.models imports torch: only the handlers import it, not `--help`
    from resnetlab.models.complexity import Complexity

DEPTH = int_at_least(1, 2000)  # as model.depth (the paper's deepest is 1202): 2**31 - 1 tried to build it


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="parameters, mult-adds and stage shapes of a model; the paper's tables 1 and 6",
        description="Parameters, multiply-adds (the paper's 'FLOPs', counted by torch.utils.flop_counter) "
        "and per-stage output shapes of a model, for one image.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="a registered model (see --list)")
    p.add_argument("--input-size", type=POSITIVE, metavar="N", help="input N x N (default 224; 32 for cifar_*)")
    p.add_argument("--in-channels", type=POSITIVE, metavar="C", help="input channels (default 3)")
    p.add_argument("--num-classes", type=POSITIVE, metavar="K", help="classes (default 1000; 10 for cifar_*)")
    p.add_argument(
        "--depth", type=DEPTH, metavar="D", help="depth 6n+2 for the generic cifar_resnet/cifar_plain (at most 2000)"
    )
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="shortcut option of sec. 3.3 (default: paper's)")
    p.add_argument(
        "--v1.5", dest="v1_5", action="store_true", help="stride on the 3x3 of bottlenecks (torchvision layout)"
    )
    p.add_argument("--paper", action="store_true", help="table 1 (mult-adds) and table 6 (params): paper vs ours")
    p.add_argument("--list", action="store_true", help="list the registered models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.models import list_models

    if args.list:
        names = list_models()
        print(json.dumps(names) if args.json else "\n".join(names))
        return 0
    if args.paper:
        tables = paper_tables()
        print(json.dumps(tables, indent=2) if args.json else format_paper_tables(tables))
        return 0
    if not args.model:
        raise UserError("give a MODEL, --paper or --list")
    options = model_options(args)
    result = measure_named(args.model, input_size=args.input_size, **options)
    if args.json:
        print(json.dumps({"model": args.model, "options": options, **result.to_dict()}, indent=2))
    else:
        print(format_model(args.model, options, result))
    return 0


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options given on the command line: each model keeps the paper's defaults otherwise."""
    options: dict[str, Any] = {}
    for key in ("num_classes", "in_channels", "depth", "shortcut"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.v1_5:
        options["stride_in_1x1"] = False
    for key in ("num_classes", "in_channels", "depth"):
        if key in options and options[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {options[key]}")
    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input-size must be positive, got {args.input_size}")
    return options


def measure_named(name: str, *, input_size: int | None = None, **options: Any) -> Complexity:
    """`measure_model` with its errors turned into one-line UserErrors."""
    from resnetlab.models import list_models, measure_model

    if name not in list_models():
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    if "stride_in_1x1" in options and not name.startswith(("resnet", "plain")):
        raise UserError(f"--v1.5 applies to the ImageNet ResNets (resnet50, ...), not to {name}")
    if "shortcut" in options and not (name.startswith(("resnet", "cifar_resnet"))):
        raise UserError(f"--shortcut applies to the residual networks, not to {name} (it has no shortcuts)")
    if "depth" in options and name not in ("cifar_resnet", "cifar_plain"):
        raise UserError(f"--depth applies to the generic cifar_resnet/cifar_plain, not to {name}")
    if name in ("cifar_resnet", "cifar_plain") and "depth" not in options:
        raise UserError(f"{name} needs --depth (6n+2: 20, 32, 44, ...)")
    try:
        return measure_model(name, input_size=input_size, **options)
    except TypeError as e:  # an option the model does not take; create_model names the model
        raise UserError(one_line(e)) from None
    except ValueError as e:
        raise UserError(f"{name}: {one_line(e)}") from None
    except RuntimeError as e:  # e.g. the input shrinks to nothing before the last stage
        raise UserError(f"{name} cannot run on a {input_size}x{input_size} input: {one_line(e)}") from None


def paper_tables() -> dict[str, list[dict[str, Any]]]:
    """Table 1 at 224x224, in the paper's layout and in torchvision's v1.5 layout; table 6 params."""
    from resnetlab.models import CIFAR_DEPTHS, count_params, create_model, measure_model
    from resnetlab.models.complexity import PAPER_CIFAR_PARAMS, PAPER_MULT_ADDS

    table1 = []
    for name, paper in PAPER_MULT_ADDS.items():
        ours = measure_model(name).mult_adds
        v15 = measure_model(name, stride_in_1x1=False).mult_adds if name.startswith("resnet") else None
        table1.append(
            {"model": name, "paper": paper, "measured": ours, "rel_diff": (ours - paper) / paper, "v1.5": v15}
        )
    table6 = []
    for depth, paper in PAPER_CIFAR_PARAMS.items():
        # Parameters only: a forward pass of the 1202-layer net would cost seconds for nothing here.
        ours = count_params(create_model(f"cifar_resnet{depth}"))
        plain = count_params(create_model(f"cifar_plain{depth}"))
        table6.append(
            {
                "depth": depth,
                "n": CIFAR_DEPTHS[depth],
                "paper": paper,
                "measured": ours,
                "plain": plain,
                "rel_diff": (ours - paper) / paper,
            }
        )
    return {"table1": table1, "table6": table6}


def format_paper_tables(tables: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "Table 1: multiply-adds at 224x224 (paper layout: stride on the 1x1, shortcut B)",
        f"{'model':<11}{'paper':>8}{'measured':>10}{'diff':>8}{'v1.5':>8}",
    ]
    for r in tables["table1"]:
        v15 = f"{r['v1.5'] / 1e9:.2f}G" if r["v1.5"] is not None else "-"
        lines.append(
            f"{r['model']:<11}{r['paper'] / 1e9:>7.1f}G{r['measured'] / 1e9:>9.2f}G{r['rel_diff']:>+8.1%}{v15:>8}"
        )
    lines += [
        "",
        "Table 6: parameters of the CIFAR-10 ResNets (option A shortcuts)",
        f"{'depth':<7}{'n':>4}{'paper':>8}{'measured':>12}{'plain twin':>12}{'diff':>8}",
    ]
    for r in tables["table6"]:
        lines.append(
            f"{r['depth']:<7}{r['n']:>4}{r['paper'] / 1e6:>7.2f}M{r['measured']:>12,}{r['plain']:>12,}"
            f"{r['rel_diff']:>+8.1%}"
        )
    return "\n".join(lines)


def format_model(name: str, options: dict[str, Any], c: Complexity) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "paper defaults"
    lines = [
        f"{name} ({shown})",
        f"input      {_shape(c.input_shape)}",
        f"params     {c.params:,} ({c.params / 1e6:.2f}M)",
        f"mult-adds  {c.mult_adds:,} ({_giga(c.mult_adds)})",
    ]
    if c.stages:
        lines += ["", f"{'stage':<8}{'output':<22}{'mult-adds':>10}"]
        for stage, s in c.stages.items():
            lines.append(f"{stage:<8}{_shape(s.shape):<22}{_giga(s.mult_adds):>10}")
    else:
        lines.append(f"output     {_shape(c.output_shape)}")
    return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _giga(n: int) -> str:
    if n >= 1e8:
        return f"{n / 1e9:.3f}G"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"
