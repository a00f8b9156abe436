"""Layer responses (fig. 7): the std of each 3x3 layer's output after BN, before the ReLU / addition.

Definition used here (and tested): for one layer, take every element of its BN output over the whole
test set, i.e. all N x C x H x W values pooled together, and report their population standard deviation

    std = sqrt( E[y^2] - E[y]^2 ),   E over all N*C*H*W elements (ddof = 0).

This is the "std of the layer's response" in the paper's fig. 7: one number per layer, not an average
of per-channel stds. We accumulate per-channel sums of y and y^2 in float64 (exact enough for 10k
images, and the per-channel split keeps each float64 sum small) and pool the channels at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from resnetlab.analysis.runs import model_label, parse_model_name
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import read_weights
from resnetlab.models import BasicBlock, Bottleneck
from resnetlab.utils.progress import progress


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after every 3x3 conv inside the blocks, in network order: `(name, bn)`.

    BasicBlock: bn1 and bn2 (both convs are 3x3) -> 2 per block, 6n for a CIFAR 6n+2 network.
    Bottleneck: bn2 only (its 3x3 conv; the 1x1 convs are not "3x3 layers") -> 1 per block.
    The stem conv (3x3 for CIFAR, 7x7 for ImageNet) is left out: fig. 7 plots the block layers.
    """
    layers: list[tuple[str, nn.BatchNorm2d]] = []
    for name, module in model.named_modules():  # registration order = network order
        if isinstance(module, BasicBlock):
            layers += [(f"{name}.bn1", module.bn1), (f"{name}.bn2", module.bn2)]
        elif isinstance(module, Bottleneck):
            layers.append((f"{name}.bn2", module.bn2))
    if not layers:
        name = type(model).__name__
        raise UserError(f"{name} has no residual/plain blocks to measure (fig. 7 is of ResNets and plain nets)")
    return layers


class ResponseMeter:
    """Running per-channel float64 sums of y and y^2 for one layer; `std` pools all elements."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # (C,) sum of y
        self.total_sq: torch.Tensor | None = None  # (C,) sum of y^2
        self.count = 0  # elements per channel seen so far (N * H * W)

    def update(self, y: torch.Tensor) -> None:
        # (N, C, H, W) -> (C,); float64 before squaring so nothing is lost in low precision.
        y = y.detach().to(torch.float64)
        s, s2 = y.sum((0, 2, 3)), (y * y).sum((0, 2, 3))
        if self.total is None:
            self.total, self.total_sq = s, s2
        else:
            self.total += s
            self.total_sq += s2
        self.count += y.numel() // y.shape[1]

    def std(self) -> float:
        if self.total is None or self.count == 0:
            raise ValueError("no responses recorded")
        n = self.count * self.total.numel()
        mean = self.total.sum().item() / n
        var = self.total_sq.sum().item() / n - mean * mean
        return max(var, 0.0) ** 0.5


@torch.no_grad()
def layer_responses(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | Iterable[torch.Tensor],
    *,
    max_images: int | None = None,
    layers: list[tuple[str, nn.Module]] | None = None,
    on_output: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None,
) -> dict[str, float]:
    """Std of each layer's response over `batches` (eval mode), `{layer name: std}` in network order.

    `batches` yields `x` or `(x, y)` already on the model's device; `layers` defaults to
    `response_layers(model)` (any `(name, module)` list works, e.g. a lone BN in tests).
    `on_output(logits, y)` sees each batch's output (to count errors in the same pass).
    """
    layers = layers if layers is not None else response_layers(model)
    meters = {name: ResponseMeter() for name, _ in layers}
    # Measured inside the hook: the ReLU after `bn1` is in-place, so a stored reference to the BN
    # output would hold its ReLU'd values by the time the forward ends.
    handles = [
        module.register_forward_hook(lambda _m, _inp, out, meter=meters[name]: meter.update(out))
        for name, module in layers
    ]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x, y in _pairs(batches):
            if max_images is not None:
                if seen >= max_images:
                    break
                x = x[: max_images - seen]
                y = None if y is None else y[: x.shape[0]]
            out = model(x)
            if on_output is not None:
                on_output(out, y)
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no images to measure responses on")
    return {name: meter.std() for name, meter in meters.items()}


def _pairs(batches: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for batch in batches:
        yield (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)


# ---- from checkpoints, and the figure ---------------------------------------------------------


def checkpoint_responses(
    path: str | Path,
    *,
    device: torch.device,
    data_dir: str | None = None,
    max_images: int | None = None,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Rebuild the model of checkpoint `path` and measure its responses on its own test set (a
    progress bar on a terminal unless `quiet`; `data_dir`, else the checkpoint's own data.dir,
    named through `say`).

    Returns `{"checkpoint", "model", "label", "images", "layers": {name: std}}`.
    """
    from resnetlab.config import from_dict  # the boundary: config read here only
    from resnetlab.data import build_data
    from resnetlab.data.ondevice import Normalizer
    from resnetlab.evaluate.checkpoints import resolve_data_dir

    weights = read_weights(path, what="checkpoint")
    meta, config = weights.meta, weights.config
    model = weights.build().to(device)
    response_layers(model)  # a network without blocks is refused before the data is read
    # The test split itself, even when the run evaluated on a held-out part of the training set.
    data_dir = resolve_data_dir(config, data_dir, say)
    cfg = from_dict(config)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_split=0, dir=data_dir))
    test = build_data(cfg, device).test
    # Normalise with the mean (and std) the model was trained with, stored in its checkpoint: with
    # val_split=0 the data would bring the 50k-image mean, not the 45k one a 45k/5k model learned on.
    if meta.get("mean") is not None and isinstance(getattr(test, "normalize", None), Normalizer):
        std = meta.get("std")
        test.normalize = Normalizer(
            torch.as_tensor(meta["mean"]), None if std is None else torch.as_tensor(std), device
        )
    wrong = [0, 0]  # top-1 errors, images: the test error comes free with the same forward passes

    def count(logits: torch.Tensor, y: torch.Tensor | None) -> None:
        if y is not None:
            wrong[0] += (logits.argmax(1) != y).sum().item()
            wrong[1] += y.numel()

    images = len(test) if max_images is None else min(max_images, len(test))
    test = sample_of(test, images)
    per_batch = getattr(test, "batch_size", None)
    batches = progress(
        test.batches(),
        total=-(-images // per_batch) if per_batch else None,
        desc=f"responses {Path(path).name}",
        unit="batch",
        quiet=quiet,
    )
    layers = layer_responses(model, batches, max_images=max_images, on_output=count)
    kind, depth = parse_model_name(meta["model"], meta.get("model_options", {}).get("depth"))
    return {
        "checkpoint": str(path),
        "model": meta["model"],
        "label": model_label(kind, depth),
        "kind": kind,
        "depth": depth,
        "images": images,
        "weights": meta.get("weights_dtype", "fp32"),  # "fp16": exported weights (a restored run's final.pt)
        "test_error": 100.0 * wrong[0] / wrong[1] if wrong[1] else None,  # top-1 %, on these images
        "layers": layers,
    }


def sample_of(test, n: int):
    """`n` images of a test set held on the device, drawn at random with a fixed seed (0), in their
    stored order: the first `n` of a folder sorted by class would be one or two classes. Other test
    sets (read from files batch by batch) are returned whole: `layer_responses` takes their first `n`.
    """
    from resnetlab.data.ondevice import DeviceEvalSource

    if n >= len(test) or not isinstance(test, DeviceEvalSource):
        return test
    keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n].sort().values
    keep = keep.to(test.images.device)
    return DeviceEvalSource(test.images[keep], test.labels[keep], normalizer=test.normalize, batch_size=test.batch_size)


def plot_responses(results: list[dict], out: str | Path) -> Path:
    """Fig. 7: std per layer in network order (top) and sorted by magnitude, largest first (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnetlab.analysis.curves import depth_colours, save_figure

    colours = depth_colours([res["depth"] for res in results])  # the same colours as the curves figure
    fig, (ax_order, ax_sorted) = plt.subplots(2, 1, figsize=(7, 7))
    for res in results:
        stds = list(res["layers"].values())
        xs = range(1, len(stds) + 1)
        style = dict(
            color=colours[res["depth"]], linestyle="-" if res["kind"] == "resnet" else "--", label=res["label"]
        )
        ax_order.plot(xs, stds, marker=".", markersize=3, **style)
        ax_sorted.plot(xs, sorted(stds, reverse=True), **style)
    for ax, xlabel in ((ax_order, "layer index (original)"), (ax_sorted, "layer index (sorted by magnitude)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    ax_order.set_title(
        "responses of 3x3 layers after BN, before ReLU/addition (test set)\nsolid: ResNet, dashed: plain"
    )
    return save_figure(fig, out)
