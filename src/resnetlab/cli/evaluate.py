"""`resnetlab evaluate | predict | import-weights | export`: test protocols and interop."""

from __future__ import annotations

import argparse
import json

EVALUATE_EPILOG = """examples:
  resnetlab evaluate --checkpoint runs/r50/final.pt --protocol 10crop --data-dir /data
  resnetlab evaluate --checkpoint runs/r50/final.pt --protocol multiscale --json
  resnetlab evaluate --checkpoint a.pt b.pt c.pt --protocol 10crop     # ensemble (table 5)
  resnetlab evaluate --checkpoint runs/r20/final.pt                     # CIFAR: single view, test split
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="top-1/top-5 error of a checkpoint (or an ensemble) under the paper's test protocols",
        description=(
            "center: shorter side 256, central 224. 10crop: 4 corners + centre and their flips, softmax "
            "averaged (tables 2, 3). multiscale: fully-convolutional, scores averaged over flips and shorter "
            "sides 224, 256, 384, 480, 640 (table 4). Several checkpoints: softmax averaged (table 5). "
            "CIFAR/MNIST checkpoints: the single original image of the test split."
        ),
        epilog=EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CK", help="one checkpoint, or several")
    p.add_argument("--protocol", default="center", choices=("center", "10crop", "multiscale"))
    p.add_argument("--data-dir", metavar="D", help="data.dir (default: the checkpoint's, else $RESNETLAB_DATA)")
    p.add_argument("--split", default="val", help="ImageFolder split folder (default val)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    p.add_argument(
        "--scales",
        type=int,
        nargs="+",
        metavar="S",
        help="multiscale: shorter sides for a 224 model (default the paper's 224 256 384 480 640)",
    )
    p.add_argument("--no-flip", action="store_true", help="multiscale: leave out the mirror images")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("predict", help="top-5 classes of images, with probabilities")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CK")
    p.add_argument("--top", type=int, default=5, help="how many classes (default 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
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

    p = subparsers.add_parser("export", help="export a checkpoint to ONNX or TorchScript (dynamic batch)")
    p.add_argument("--checkpoint", required=True, metavar="CK")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--image-size", type=int, metavar="S", help="input height = width (default: training crop)")
    p.set_defaults(func=run_export)


def run_evaluate(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import PAPER_SCALES, evaluate_checkpoints

    r = evaluate_checkpoints(
        args.checkpoint,
        protocol=args.protocol,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        skip_corrupt=args.skip_corrupt,
        scales=tuple(args.scales or PAPER_SCALES),
        flip=not args.no_flip,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    what = "ensemble of " + str(len(r["checkpoints"])) if len(r["checkpoints"]) > 1 else r["checkpoints"][0]
    print(f"{what}: {r['protocol']} on {r['data']} ({r['split']}), {r['images']} images")
    print(f"top-1 error {r['top1_error']:.2f}%  top-5 error {r['top5_error']:.2f}%")
    if r["skipped"]:
        print(f"skipped {r['skipped']} unreadable images")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import predict

    results = predict(args.images, args.checkpoint, top=args.top, device=args.device)
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(r["image"])
        for rank, (name, p) in enumerate(r["top"], 1):
            print(f"  {rank}. {p:.4f}  {name}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import import_weights

    meta = import_weights(args.pth, args.model, args.out)
    print(f"wrote {args.out}: {meta['model']} (v1.5, shortcut B), {meta['num_classes']} classes")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from resnetlab.evaluate import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.format, args.out, image_size=args.image_size)
    print(f"wrote {out} ({args.format}, dynamic batch)")
    return 0
