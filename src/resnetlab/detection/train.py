"""Fine-tune Faster R-CNN end to end (approximate joint training, as torchvision does).

`run_detection_training(cfg, out_dir, resume=False)` is a plain loop, read top to bottom. The run's
life (folder lock, config check on resume, metrics.jsonl and TensorBoard, SIGINT / SIGTERM
checkpoints, NaN stop) is `resnetlab.train.lifecycle`'s, shared with classification. `--resume`
goes on from checkpoint.pt exactly: model, optimizer, scheduler, RNG and data order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.detection.config import DetectionConfig
from resnetlab.detection.data import TrainOrder, build_detection_set, same_classes, train_loader
from resnetlab.detection.evaluate import evaluate_detector
from resnetlab.detection.metrics import coco_tools
from resnetlab.detection.models import build_detector, read_pretrained
from resnetlab.errors import UserError, one_line
from resnetlab.models.registry import model_option_names
from resnetlab.train.lifecycle import Run, open_run
from resnetlab.utils import distributed
from resnetlab.utils.checkpoint import load


def detector_kwargs(cfg: DetectionConfig, num_classes: int) -> tuple[dict[str, Any], dict | None]:
    """The plain keyword arguments of `build_detector` (stored in checkpoint meta) and the
    pretrained backbone state (None from scratch)."""
    m, d = cfg.model, cfg.data
    state, options = None, {}
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if m.pretrained:
        pre = read_pretrained(m.pretrained, m.name)
        state, options, mean, std = pre["state_dict"], pre["options"], pre["image_mean"], pre["image_std"]
    elif "stride_in_1x1" in _option_names(m.name):  # from scratch: the layout the config names
        options = {"stride_in_1x1": m.stride_in_1x1}
    if m.depth is not None:
        options["depth"] = m.depth
    kwargs = {
        "backbone": m.name,
        "num_classes": num_classes,
        "arch": m.arch,
        "backbone_options": options,
        "pool": m.pool,
        "pool_size": m.pool_size,
        "freeze_bn": m.freeze_bn,
        "freeze_at": m.freeze_at,
        "anchor_sizes": list(m.anchor_sizes),
        "aspect_ratios": list(m.aspect_ratios),
        "min_size": d.min_size,
        "max_size": d.max_size,
        "image_mean": mean,
        "image_std": std,
        "rpn_pre_nms_top_n_train": m.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": m.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": m.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": m.rpn_post_nms_top_n_test,
        "rpn_batch_size_per_image": m.rpn_batch_size_per_image,
        "box_batch_size_per_image": m.box_batch_size_per_image,
        "box_bg_iou_low": m.box_bg_iou_low,
        "box_score_thresh": m.box_score_thresh,
        "box_nms_thresh": m.box_nms_thresh,
        "box_detections_per_img": m.detections_per_img,
    }
    return kwargs, state


def _option_names(name: str) -> frozenset[str]:
    try:
        return model_option_names(name)
    except ValueError as e:
        raise UserError(f"model.name: {one_line(e)}") from None


def check_backbone(cfg: DetectionConfig) -> None:
    m = cfg.model
    if m.freeze_bn and not m.pretrained and m.name != "vgg16":
        raise UserError(
            "model.freeze_bn=true keeps the BN statistics of a trained backbone, but model.pretrained is not set: "
            "--set model.pretrained=PATH (a resnetlab checkpoint or a torchvision .pth), or model.freeze_bn=false "
            "to train from scratch"
        )


def load_detector(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A detector from any checkpoint this module wrote: `build_detector(**meta["detector"])`."""
    ckpt = load(path)
    meta = ckpt.get("meta", {})
    if meta.get("task") != "detection":
        raise UserError(f"{path} is not a detection checkpoint (train one with `resnetlab detect train`)")
    model = build_detector(**meta["detector"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def lr_factor(it: int, *, milestones: tuple[int, ...], gamma: float, warmup_iters: int, warmup_factor: float) -> float:
    """Step schedule (divide by 10 at each milestone), times an optional linear warm-up."""
    factor = gamma ** sum(it >= m for m in milestones)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def run_detection_training(
    cfg: DetectionConfig, out_dir: str | Path, *, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train the detector of `cfg` into `out_dir`; its life (lock, resume, signals, NaN, metrics,
    TensorBoard, the progress bar: none with `quiet` or off a terminal) is `resnetlab.train.lifecycle`'s,
    the same as classification's."""
    check_backbone(cfg)
    coco_tools()  # its evaluations need pycocotools: say so now, not at the first evaluation
    with open_run(cfg, out_dir, resume=resume, quiet=quiet) as run:
        return _train(cfg, run)


def _train(cfg: DetectionConfig, run: Run) -> dict[str, Any]:
    t = cfg.train
    s = _build(cfg, run)  # data order, detector, optimizer, lr scheduler; the checkpoint's state loaded
    summary: dict[str, Any] = {"out": str(run.out), "stopped": None, "test": s.meta["test"], "is_main": run.is_main}
    done = run.start_iter
    with run.steps(desc="detect train") as bar:
        while done < t.max_iters:
            images, targets = next(s.batches)
            _step(s, run, images, targets, it=done + 1)
            done += 1
            due = run.after_step(done)
            lr = s.optimizer.param_groups[0]["lr"]
            if due.log:
                bar.set_postfix(loss=f"{s.losses.mean('loss'):.3f}", lr=f"{lr:.2g}")
                run.log(done, {"train/loss": s.losses.mean("loss"), "lr": lr})
            if due.eval:
                summary["metrics"] = _evaluate_and_log(s, run, done, lr)
            if due.checkpoint:
                run.save_checkpoint(s.state(run), done)
            if due.stop:
                break
    summary.update(iterations=done, stopped=run.stopped, exit_code=run.exit_code)
    run.end(done, run.record(_unwrap(s.model), s.meta))
    return summary


# ---- the steps of a run --------------------------------------------------------------------------


class _LossMeans:
    """Sums of each loss term (and their total, "loss") over the iterations since the last evaluation."""

    def __init__(self, sums: dict[str, float] | None = None, iters: int = 0) -> None:
        self.sums, self.iters = dict(sums or {}), iters

    def add(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(total.detach())
        self.iters += 1

    def mean(self, key: str) -> float:
        return self.sums.get(key, 0.0) / max(self.iters, 1)


@dataclass
class _Training:
    """What one detection run trains with (all of it in its checkpoint)."""

    cfg: DetectionConfig
    model: nn.Module  # DistributedDataParallel under torchrun; `_unwrap` gives the detector
    meta: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    test_set: Any
    batches: Iterator[Any]
    losses: _LossMeans

    def state(self, run: Run) -> dict[str, Any]:
        return run.state(
            _unwrap(self.model),
            self.meta,
            self.optimizer,
            scheduler=self.scheduler.state_dict(),
            loss_sums=self.losses.sums,
            loss_iters=self.losses.iters,
        )


def _build(cfg: DetectionConfig, run: Run) -> _Training:
    """The data (a deterministic order by (seed, iteration): exact resume), detector, optimizer and lr
    scheduler of `cfg`, in `run.checkpoint`'s state if resumed."""
    t, o, info, device = cfg.train, cfg.optim, run.info, run.device
    torch.manual_seed(t.seed + info.rank)  # RPN/RoI sampling draws from this RNG
    train_set = build_detection_set(cfg.data, cfg.data.train, train=True)
    test_set = build_detection_set(cfg.data, [cfg.data.test], train=False)
    classes = train_set.classes
    same_classes(test_set, classes, "the training set")
    kwargs, backbone_state = detector_kwargs(cfg, len(classes) + 1)
    model = build_detector(**kwargs, backbone_state=backbone_state).to(device)
    meta = {
        "task": "detection",
        "detector": kwargs,
        "classes": classes,
        "num_classes": len(classes) + 1,
        "dataset": cfg.data.name,
        "test": test_set.names[0],
    }

    lr = o.lr * (t.batch_size / o.base_batch_size if o.base_batch_size else 1.0)
    # One lr and weight decay for every trainable tensor (Caffe's Faster R-CNN doubled the bias lr
    # and left biases undecayed; torchvision's reference does not).
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    schedule = dict(milestones=o.milestones, gamma=o.gamma, warmup_iters=o.warmup_iters, warmup_factor=o.warmup_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **schedule))
    losses = _LossMeans()
    if (ckpt := run.checkpoint) is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
        losses = _LossMeans(ckpt["loss_sums"], int(ckpt["loss_iters"]))
        run.restore(model, optimizer)
    model = run.parallel(model)
    model.train()

    order = TrainOrder(
        len(train_set),
        t.batch_size,
        seed=t.seed,
        start_iter=run.start_iter,
        hflip=cfg.data.hflip,
        rank=info.rank,
        world=info.world_size,
    )
    batches = iter(train_loader(train_set, order, cfg.data.workers))
    return _Training(cfg, model, meta, optimizer, scheduler, test_set, batches, losses)


def _step(s: _Training, run: Run, images: list[torch.Tensor], targets: list[dict], *, it: int) -> None:
    """One SGD step on a batch: the four losses, agreed finite across ranks, backward, update."""
    device = run.device
    images = [im.to(device, non_blocking=True).float().div_(255) for im in images]
    targets = [{"boxes": x["boxes"].to(device), "labels": x["labels"].to(device)} for x in targets]
    losses = s.model(images, targets)  # RPN objectness + box, head classifier + box (torchvision)
    loss = sum(losses.values())
    # Agreed over ranks before backward, so every rank stops at the same step.
    mean_loss = float(distributed.all_reduce_sum(loss.detach().float().clone())) / run.info.world_size
    run.check_finite([mean_loss], it)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    s.scheduler.step()
    s.losses.add(losses, loss)


def _evaluate_and_log(s: _Training, run: Run, it: int, lr: float) -> dict[str, Any]:
    """Every process detects on its share of the test images; all get the metrics. A metrics.jsonl
    row, TensorBoard, a line above the progress bar; the loss means start again."""
    t = s.cfg.train
    metrics = evaluate_detector(
        _unwrap(s.model),
        s.test_set,
        device=run.device,
        batch_size=t.eval_batch_size,
        workers=s.cfg.data.workers,
        max_images=t.eval_max_images,
        rank=run.info.rank,
        world_size=run.info.world_size,
        quiet=run.quiet or not run.is_main,
    )
    row = {
        "iter": it,
        "lr": lr,
        "train_loss": s.losses.mean("loss"),
        **{f"train_{k}": s.losses.mean(k) for k in s.losses.sums if k != "loss"},
        **{k: v for k, v in metrics.items() if k != "ap50_per_class"},
        "time": run.elapsed(),
    }
    run.log(it, {f"test/{k}": v for k, v in metrics.items() if k.endswith(("map", "map50"))}, row)
    if run.is_main:
        voc = f"  mAP@0.5 (VOC07) {metrics['voc07_map50']:.1f}" if "voc07_map50" in metrics else ""
        run.bar.write(
            f"iter {it}: loss {row['train_loss']:.3f}{voc}  "
            f"COCO mAP@[.5,.95] {metrics['coco_map']:.1f} mAP@.5 {metrics['coco_map50']:.1f}"
        )
    s.losses = _LossMeans()
    return metrics
