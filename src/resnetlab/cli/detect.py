"""`resnetlab detect train|evaluate|predict`: Faster R-CNN with our ResNets (sec. 4.3, appendix A)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnetlab.cli.args import NON_NEGATIVE, add_device_and_quiet, add_overrides, float_in, output_file
from resnetlab.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("detect", help="object detection: Faster R-CNN on VOC / COCO (tables 7, 8)")
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="fine-tune a detector from a preset (configs/detection/)")
    t.add_argument("--preset", help="preset name (voc07-resnet101-c4, ...) or a YAML path")
    t.add_argument("--out", help="run folder (config.yaml, metrics.jsonl, checkpoints); required to train")
    add_overrides(t, "config overrides, e.g. model.pretrained=r101.pt")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly")
    t.add_argument("--device", help="shortcut for --set train.device=DEVICE")
    t.add_argument("--list", action="store_true", help="list the detection presets and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar (none is drawn off a terminal either)")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="mAP of a detection checkpoint on its test split, beside the paper's")
    e.add_argument("--checkpoint", required=True)
    add_overrides(e, "data.* overrides (data.dir, data.test)")
    e.add_argument("--max-images", type=NON_NEGATIVE, default=0, help="only the first N test images (0: all)")
    add_device_and_quiet(e)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=_evaluate)

    r = sub.add_parser("predict", help="draw a detector's boxes, labels and scores on an image")
    r.add_argument("image")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--out", required=True, type=output_file((".png",)), help="output image (.png)")
    r.add_argument("--threshold", type=float_in(0, 1), default=0.5, help="minimum score to draw")
    r.add_argument("--device", default="auto")
    r.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> int:
    from resnetlab.detection.config import list_detection_presets, load_detection_config
    from resnetlab.detection.train import run_detection_training

    if args.list:
        print("\n".join(list_detection_presets()))
        return 0
    if not args.out:
        raise UserError("detect train needs --out DIR (the run folder)")
    overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_detection_config(args.preset, overrides)
    # a failed run leaves no folder behind
    summary = run_detection_training(cfg, args.out, resume=args.resume, quiet=args.quiet)
    if summary["stopped"] or not summary["is_main"]:
        return summary["exit_code"]  # 130 SIGINT, 143 SIGTERM; under torchrun only rank 0 reports
    metrics = summary.get("metrics")
    if metrics:
        from resnetlab.detection.evaluate import format_report

        print(format_report(metrics, summary["test"], cfg.model.name))
    print(f"done: {Path(args.out) / 'final.pt'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from resnetlab.config import apply_overrides
    from resnetlab.detection.config import detection_config_from_dict
    from resnetlab.detection.data import build_detection_set, same_classes
    from resnetlab.detection.evaluate import evaluate_detector, format_report
    from resnetlab.detection.metrics import coco_tools
    from resnetlab.detection.train import load_detector
    from resnetlab.utils.device import resolve_device

    coco_tools()  # needed for the metrics at the end: say so before the whole test set is run
    device = resolve_device(args.device)
    model, ckpt = load_detector(args.checkpoint, device)
    cfg = detection_config_from_dict(ckpt["config"])
    allowed = ("data.dir", "data.test", "data.download", "data.workers")  # the rest is the trained model's
    refused = [s for s in args.set if s.split("=", 1)[0] not in allowed]
    if refused:
        raise UserError(
            f"detect evaluate: {refused[0].split('=', 1)[0]} is the trained model's (its image sizes and classes "
            f"are in the checkpoint); it takes only {', '.join(allowed)}"
        )
    cfg = apply_overrides(cfg, args.set)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes=tuple(ckpt["meta"]["classes"])))
    test_set = build_detection_set(cfg.data, [cfg.data.test], train=False)
    same_classes(test_set, list(ckpt["meta"]["classes"]), f"the checkpoint {args.checkpoint}")
    metrics = evaluate_detector(
        model,
        test_set,
        device=device,
        batch_size=cfg.train.eval_batch_size,
        workers=0,
        max_images=args.max_images,
        quiet=args.quiet,
    )
    metrics = {"test": test_set.names[0], "backbone": ckpt["meta"]["detector"]["backbone"], **metrics}
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_report(metrics, test_set.names[0], metrics["backbone"]))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from resnetlab.detection.predict import predict_image
    from resnetlab.detection.train import load_detector
    from resnetlab.utils.device import resolve_device

    device = resolve_device(args.device)
    model, ckpt = load_detector(args.checkpoint, device)
    found = predict_image(model, ckpt["meta"]["classes"], args.image, args.out, threshold=args.threshold, device=device)
    for label, score_, box in found:
        print(f"{label:<16} {score_:.2f}  [{', '.join(f'{v:.0f}' for v in box)}]")
    print(f"{len(found)} detections -> {args.out}")
    return 0
