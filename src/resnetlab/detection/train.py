"""Fine-tune Faster R-CNN end to end (approximate joint training, as torchvision does).

`run_detection_training(cfg, out_dir, resume=False)` is a plain loop, read top to bottom. The run's
life (folder lock, config check on resume, metrics.jsonl and TensorBoard, SIGINT / SIGTERM
checkpoints, NaN stop) is `resnetlab.train.lifecycle`'s, shared with classification. `--resume`
goes on from checkpoint.pt exactly: model, optimizer, scheduler, RNG and data order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.config import to_dict
from resnetlab.detection.config import DetectionConfig
from resnetlab.detection.data import TrainOrder, build_detection_set, train_loader
from resnetlab.detection.evaluate import evaluate_detector
from resnetlab.detection.models import build_detector, read_pretrained
from resnetlab.errors import UserError
from resnetlab.models.registry import model_option_names
from resnetlab.train.lifecycle import Run, gather_rng_states, open_run, progress_bar, restore_rng_states
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
        raise UserError(f"model.name: {e}") from None


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


def run_detection_training(cfg: DetectionConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train the detector of `cfg` into `out_dir`; its life (lock, resume, signals, NaN, metrics,
    TensorBoard) is `resnetlab.train.lifecycle`'s, the same as classification's."""
    check_backbone(cfg)
    with open_run(cfg, out_dir, resume=resume) as run:
        return _train(cfg, run)


def _train(cfg: DetectionConfig, run: Run) -> dict[str, Any]:
    t, o, info, device = cfg.train, cfg.optim, run.info, run.device
    torch.manual_seed(t.seed + info.rank)  # RPN/RoI sampling draws from this RNG

    # Data: deterministic order by (seed, iteration) -> exact resume.
    train_set = build_detection_set(cfg.data, cfg.data.train, train=True)
    test_set = build_detection_set(cfg.data, [cfg.data.test], train=False)
    classes = train_set.classes
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
    loss_sums: dict[str, float] = {}
    loss_iters = 0
    if (ckpt := run.checkpoint) is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        loss_sums, loss_iters = dict(ckpt["loss_sums"]), int(ckpt["loss_iters"])
        restore_rng_states(run, ckpt["rng"])
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

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

    def state() -> dict[str, Any]:
        return {
            "model": _unwrap(model).state_dict(),
            "config": to_dict(cfg),
            "meta": meta,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loss_sums": loss_sums,
            "loss_iters": loss_iters,
            "rng": gather_rng_states(run),  # each process samples RoIs with its own RNG stream
        }

    model.train()
    summary: dict[str, Any] = {"out": str(run.out), "stopped": None, "test": meta["test"], "is_main": info.is_main}
    bar = progress_bar(t.max_iters, run, desc="detect train")
    t0 = time.perf_counter()
    done = run.start_iter
    try:
        while done < t.max_iters:
            images, targets = next(batches)
            images = [im.to(device, non_blocking=True).float().div_(255) for im in images]
            targets = [{"boxes": x["boxes"].to(device), "labels": x["labels"].to(device)} for x in targets]
            losses = model(images, targets)  # RPN objectness + box, head classifier + box (torchvision)
            loss = sum(losses.values())
            # Agreed over ranks before backward, so every rank stops at the same step.
            mean_loss = float(distributed.all_reduce_sum(loss.detach().float().clone())) / info.world_size
            run.check_finite([mean_loss], done + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            for k, v in losses.items():
                loss_sums[k] = loss_sums.get(k, 0.0) + float(v.detach())
            loss_sums["loss"] = loss_sums.get("loss", 0.0) + float(loss.detach())
            loss_iters += 1
            done += 1
            bar.update(1)
            lr_now = optimizer.param_groups[0]["lr"]
            if done % t.log_every == 0:
                bar.set_postfix(loss=f"{loss_sums['loss'] / loss_iters:.3f}", lr=f"{lr_now:.2g}")
                run.log(done, {"train/loss": loss_sums["loss"] / loss_iters, "lr": lr_now})

            if done % t.eval_every == 0 or done == t.max_iters:
                # Every process detects on its share of the test images; all get the metrics.
                metrics = evaluate_detector(
                    _unwrap(model),
                    test_set,
                    device=device,
                    batch_size=t.eval_batch_size,
                    workers=cfg.data.workers,
                    max_images=t.eval_max_images,
                    rank=info.rank,
                    world_size=info.world_size,
                )
                row = {
                    "iter": done,
                    "lr": lr_now,
                    "train_loss": loss_sums["loss"] / max(loss_iters, 1),
                    **{f"train_{k}": v / max(loss_iters, 1) for k, v in loss_sums.items() if k != "loss"},
                    **{k: v for k, v in metrics.items() if k != "ap50_per_class"},
                    "time": time.perf_counter() - t0,
                }
                scalars = {f"test/{k}": v for k, v in metrics.items() if k.endswith(("map", "map50"))}
                run.log(done, scalars, row)
                if info.is_main:
                    voc = f"  mAP@0.5 (VOC07) {metrics['voc07_map50']:.1f}" if "voc07_map50" in metrics else ""
                    bar.write(
                        f"iter {done}: loss {row['train_loss']:.3f}{voc}  "
                        f"COCO mAP@[.5,.95] {metrics['coco_map']:.1f} mAP@.5 {metrics['coco_map50']:.1f}"
                    )
                summary["metrics"] = metrics
                loss_sums, loss_iters = {}, 0

            stopping = run.stop_requested()
            if done % t.checkpoint_every == 0 or stopping or done == t.max_iters:
                run.save_checkpoint(state(), done)
            if stopping:
                break
    finally:
        bar.close()
    summary.update(iterations=done, stopped=run.stopped, exit_code=run.exit_code)
    if run.stopped:
        run.announce_stop(done)
        return summary
    run.finish({"model": _unwrap(model).state_dict(), "config": to_dict(cfg), "meta": meta, "iteration": done})
    return summary
