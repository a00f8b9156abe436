"""`resnetlab evaluate | predict | import-weights | export`: test protocols and interop."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from resnetlab.cli.args import (
    FIGURE_SUFFIXES,
    NON_NEGATIVE,
    POSITIVE,
    add_device_and_quiet,
    int_at_least,
    output_file,
    pick,
    say_for,
)
from resnetlab.errors import UserError
from resnetlab.utils.text import printable

EVALUATE_EPILOG = """examples:
  resnetlab evaluate --checkpoint runs/r50/final.pt --protocol 10crop --data-dir /data
  resnetlab evaluate --checkpoint runs/r50/final.pt --protocol multiscale --json
  resnetlab evaluate --checkpoint a.pt b.pt c.pt --protocol 10crop     # ensemble (table 5)
  resnetlab evaluate --checkpoint runs/r20/final.pt                     # CIFAR: single view, test split
  resnetlab evaluate --checkpoint runs/folder/final.pt --split test     # an ImageFolder's test/ folder
"""


PREDICT_EPILOG = """examples:
  resnetlab predict cat.jpg dog.png --checkpoint runs/r50/final.pt
  resnetlab predict photos/ --checkpoint runs/ft/final.pt --csv > predictions.csv
  resnetlab predict 'shots/**/*.jpg' --checkpoint a.pt b.pt --top 3 --json   # ensemble of two
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="top-1/top-5 error of a checkpoint (or an ensemble) under the paper's test protocols",
        description=(
            "center: shorter side 256, central 224. 10crop: 4 corners + centre and their flips, softmax "
            "averaged (tables 2, 3). multiscale: fully-convolutional, scores averaged over the shorter "
            "sides 224, 256, 384, 480, 640 (table 4; --flip adds each scale's mirror image). Several "
            "checkpoints: softmax averaged (table 5). "
            "CIFAR/MNIST checkpoints: the single original image of the test split."
        ),
        epilog=EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CK", help="one checkpoint, or several")
    p.add_argument("--protocol", default="center", choices=("center", "10crop", "multiscale"))
    p.add_argument(
        "--data-dir",
        metavar="D",
        help="data.dir (default: the checkpoint's, named on the first line, else $RESNETLAB_DATA)",
    )
    p.add_argument(
        "--split",
        metavar="NAME",
        help="ImageFolder checkpoints: the folder to test, e.g. val or test (default: the checkpoint's "
        "data.eval_split, else val); built-in datasets have one test split",
    )
    p.add_argument("--batch-size", type=POSITIVE, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=4, help="DataLoader workers (default 4)")
    p.add_argument(
        "--scales",
        type=POSITIVE,
        nargs="+",
        metavar="S",
        help="multiscale: shorter sides for a 224 model (default the paper's 224 256 384 480 640)",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="multiscale: also average each scale's mirror image (not in the paper's sec. 3.4; default off)",
    )
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images instead of stopping")
    add_device_and_quiet(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (fields: docs/evaluate.md)")
    p.add_argument(
        "--plot",
        type=output_file(FIGURE_SUFFIXES),
        metavar="FIG",
        help="write the confusion matrix figure (.png, .pdf, .svg; checked before the evaluation, written after "
        "the results are printed)",
    )
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="top-5 classes of images (files, folders, globs), with probabilities",
        description="The centre view of each image (shorter side 256, central 224, or the training size "
        "for CIFAR-size models), in batches; class names from the checkpoint. An unreadable image is "
        "reported in its row and the others go on; the exit code is then 1.",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # "*" and a check in run_predict: `--checkpoint CK IMAGE` gives argparse's CK list the image too
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders (recursive), globs ('**/*.jpg')")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CK", help="one checkpoint, or an ensemble")
    p.add_argument("--top", type=POSITIVE, default=5, help="how many classes (default 5)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="image-reading worker processes (default 2)")
    add_device_and_quiet(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON list: {image, top: [[class, p], ...], error}")
    fmt.add_argument("--csv", action="store_true", help="CSV: image, class_1, prob_1, ..., class_k, prob_k, error")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "import-weights",
        help="turn a torchvision ResNet state-dict file (.pth) into a resnetlab checkpoint",
        description="torchvision's layout is 'v1.5' (stride on the 3x3) with shortcut B; its normalisation "
        "(per-channel mean and std) is recorded in the checkpoint meta.",
    )
    p.add_argument("pth", metavar="PATH.pth")
    p.add_argument("--model", required=True, help="resnet18 | resnet34 | resnet50 | resnet101 | resnet152")
    p.add_argument("--out", required=True, metavar="CK")
    p.set_defaults(func=run_import)

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, TorchScript or torch.export .pt2 (dynamic batch), or to its "
        "weights alone (weights: fp32, weights-fp16: half the file) for evaluate / predict / train.init_from",
    )
    p.add_argument("--checkpoint", required=True, metavar="CK")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "pt2", "weights", "weights-fp16"))
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument(
        "--image-size",
        type=int_at_least(1, 4096),  # the example batch is built at that size: 100000 asked for 240 GB
        metavar="S",
        help="input height = width, at most 4096 (default: training crop)",
    )
    p.set_defaults(func=run_export)


def run_evaluate(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import PAPER_SCALES, evaluate_checkpoints

    if (args.scales or args.flip) and args.protocol != "multiscale":
        given = "--scales" if args.scales else "--flip"
        raise UserError(f"{given} applies to --protocol multiscale, not to --protocol {args.protocol}")

    r = evaluate_checkpoints(
        args.checkpoint,
        **pick(
            args, "protocol", "data_dir", "split", "batch_size", "workers", "device", "skip_corrupt", "flip", "quiet"
        ),
        scales=tuple(args.scales or PAPER_SCALES),
        say=say_for(args.json),
    )
    # The results first: a figure that fails to write must not take them with it.
    if args.json:
        print(json.dumps(r), flush=True)
    else:
        what = "ensemble of " + str(len(r["checkpoints"])) if len(r["checkpoints"]) > 1 else r["checkpoints"][0]
        print(f"{what}: {r['protocol']} on {printable(r['data'])} ({r['split']}), {r['images']} images")
        top5 = "n/a with 5 classes or fewer" if r["top5_error"] is None else f"{r['top5_error']:.2f}%"
        print(f"top-1 error {r['top1_error']:.2f}%  top-5 error {top5}")
        if r["skipped"]:
            print(f"skipped {r['skipped']} unreadable images: {_some(r['skipped_files'], r['skipped'])}")
        if r.get("counted_once"):
            print(
                f"counted once: {r['counted_once']} files reached a second time (a link, a hard link) "
                f"were not counted again: {_some(r['counted_once_files'], r['counted_once'])}"
            )
        print(format_per_class(r["per_class"]), flush=True)
    if args.plot:
        from resnetlab.analysis.confusion import plot_confusion

        try:
            path = plot_confusion(r, args.plot)
        except OSError as e:  # checked before the evaluation; a full disk can still refuse it
            raise UserError(f"--plot {args.plot}: cannot write it ({e.strerror or e}); the results are above") from None
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _some(paths: list[str], count: int, shown: int = 3) -> str:
    """The first few of `count` file names, escaped for the terminal."""
    names = ", ".join(printable(p) for p in paths[:shown])
    return names + (f" and {count - min(shown, len(paths))} more" if count > min(shown, len(paths)) else "")


def format_per_class(rows: list[dict], limit: int = 20) -> str:
    """Top-1 accuracy per class, worst first; the 10 worst and 10 best when there are many classes."""
    tested = sorted((r for r in rows if r["images"]), key=lambda r: r["accuracy"])
    shown = tested if len(tested) <= limit else tested[: limit // 2] + tested[-limit // 2 :]
    names = [printable(r["class"])[:32] for r in shown]  # a folder name may hold a newline or a terminal escape
    width = max(len(n) for n in names)
    lines = [
        f"per-class top-1 accuracy ({len(tested)} classes{', worst and best 10' if len(shown) < len(tested) else ''}):"
    ]
    for i, (r, name) in enumerate(zip(shown, names)):
        if i == limit // 2 and len(shown) < len(tested):
            lines.append("  ...")
        lines.append(f"  {name:<{width}}  {r['accuracy']:6.2f}%  ({r['images']} images)")
    return "\n".join(lines)


def run_predict(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import predict

    if not args.images:
        given = printable(" ".join(args.checkpoint))
        raise UserError(
            f"no IMAGE given: --checkpoint took every path after it ({given}); "
            "put the images first (`resnetlab predict IMAGE... --checkpoint CK`) or after `--`"
        )
    rows = predict(args.images, args.checkpoint, **pick(args, "top", "device", "batch_size", "workers", "quiet"))
    if args.json:
        print(json.dumps(rows))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["image", *(f"{c}_{k}" for k in range(1, args.top + 1) for c in ("class", "prob")), "error"])
        for r in rows:
            cells = [x for name, p in r["top"] for x in (printable(name), f"{p:.6f}")]
            error = printable(r["error"] or "")
            writer.writerow([printable(r["image"]), *cells, *[""] * (2 * args.top - len(cells)), error])
    else:  # names from folders and files may hold newlines or terminal escapes: shown escaped
        for r in rows:
            print(printable(r["image"]) + (f": {printable(r['error'])}" if r["error"] else ""))
            for rank, (name, p) in enumerate(r["top"], 1):
                print(f"  {rank}. {p:.4f}  {printable(name)}")
    failed = sum(r["error"] is not None for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} images could not be read (see their rows)", file=sys.stderr)
    return 1 if failed else 0


def run_import(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import import_weights

    meta = import_weights(args.pth, args.model, args.out)
    print(f"wrote {args.out}: {meta['model']} (v1.5, shortcut B), {meta['num_classes']} classes")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.format, args.out, image_size=args.image_size)
    print(f"wrote {out} ({args.format}{'' if args.format.startswith('weights') else ', dynamic batch'})")
    return 0
