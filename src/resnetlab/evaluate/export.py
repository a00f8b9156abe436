"""Interop: `import_weights` (torchvision .pth -> our checkpoint) and `export_checkpoint` (ONNX,
TorchScript, torch.export's .pt2, or our own checkpoint slimmed to its weights, optionally in fp16).

Exported models take the normalised input (N, C, H, W) float32 of the contract, with a dynamic batch
dimension, and return logits (N, K); the ONNX file carries the model name, classes and the
per-channel mean/std in its metadata.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from resnetlab.config import Config, DataConfig, ModelConfig, model_options, to_dict
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import imagenet_categories, load_model, read_weights, torchvision_stats
from resnetlab.models import IMAGENET_DEPTHS
from resnetlab.models.complexity import smallest_input
from resnetlab.utils.checkpoint import load, save_atomic
from resnetlab.utils.files import atomic_path

FORMATS = ("onnx", "torchscript", "pt2", "weights", "weights-fp16")


def import_weights(pth: str | Path, model_name: str, out: str | Path) -> dict:
    """A torchvision ResNet state-dict file as our checkpoint: v1.5 (stride on the 3x3), shortcut B,
    torchvision's per-channel mean and std (luma-weighted for a one-channel conv1). Returns the meta written."""
    if model_name not in {f"resnet{d}" for d in IMAGENET_DEPTHS}:
        raise UserError(f"--model must be one of resnet18/34/50/101/152 for torchvision weights, got {model_name!r}")
    if not Path(pth).is_file():
        raise UserError(f"{pth} does not exist")
    weights = read_weights(pth, what="import-weights")
    if weights.model is not None:
        raise UserError(f"{pth} is a resnetlab checkpoint already, not a torchvision state dict")
    try:
        model = weights.build(model_name)  # v1.5, shortcut B, the file's head and input channels
    except UserError as e:
        raise UserError(f"{pth} is not a torchvision {model_name} state dict ({str(e).split(' (', 1)[-1]}") from None
    cfg = Config(
        model=ModelConfig(name=model_name, shortcut="B", stride_in_1x1=False),
        data=DataConfig(name="imagenet", mean="channel", normalize_std=True),
    )
    num_classes, in_channels = model.fc.out_features, model.conv1.in_channels
    mean, std = torchvision_stats(in_channels)
    meta = {
        "dataset": "imagenet",
        "classes": imagenet_categories() if num_classes == 1000 else [str(i) for i in range(num_classes)],
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": 224,
        "mean": mean,
        "std": std,
        "model": model_name,
        "model_options": model_options(cfg.model, num_classes=num_classes, in_channels=in_channels),
        "source": f"torchvision weights {Path(pth).name}",
    }
    config = to_dict(cfg)
    del config["data"]["dir"]  # no folder of this machine's: evaluate reads --data-dir or $RESNETLAB_DATA
    save_atomic({"model": model.state_dict(), "config": config, "meta": meta}, out)
    return meta


def export_checkpoint(ckpt: str | Path, fmt: str, out: str | Path, *, image_size: int | None = None) -> Path:
    """Write the checkpoint's model as ONNX or TorchScript, batch dimension dynamic. `image_size`
    (default: the training crop) fixes H = W of the exported graph."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = check_out_file(out, f"model{SUFFIXES[fmt]}")
    loaded = load_model(ckpt, torch.device("cpu"))
    if fmt.startswith("weights"):
        _export_weights(ckpt, out, half=fmt == "weights-fp16")
        return out
    if fmt == "onnx":  # before the work: the extra may not be installed
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError("--format onnx needs the export extra: pip install 'resnetlab[export]'") from None
    model = loaded.model.float().eval()
    size = image_size or loaded.image_size
    name, options = loaded.meta["model"], loaded.meta["model_options"]
    smallest = smallest_input(name, **options)
    if size < smallest:
        given = f"--image-size {size}" if image_size else f"the checkpoint's image size {size}"
        raise UserError(f"{given} is too small for {name}: it takes {smallest} pixels or more (its total stride)")
    example = torch.randn(2, int(loaded.meta.get("in_channels", 3)), size, size)
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(out) as tmp:
        warnings.simplefilter("ignore")  # tracer / exporter chatter
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(tmp))
        elif fmt == "pt2":
            _export_pt2(model, example, tmp, {**loaded.meta, "image_size": size})
        else:
            _export_onnx(model, example, tmp, {**loaded.meta, "image_size": size})
    return out


SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2", "weights": ".pt", "weights-fp16": ".pt"}


def _export_weights(ckpt: str | Path, out: Path, *, half: bool) -> None:
    """Our checkpoint without the optimizer and the loop's state: the weights, config and meta that
    `evaluate`, `predict` and `train.init_from` read. `half`: floating tensors stored as fp16 (half
    the file; a CIFAR ResNet-56 is 1.7 MB); loading copies them back into the fp32 model, so the
    network computes in fp32 with weights rounded to fp16. A tensor with a value beyond fp16's range
    (65,504) stays fp32: a plain-56's first BN layers keep running variances up to ~3e5, which fp16
    would make inf (and its test error 80 % instead of 46 %). The meta (mean, std) stays fp32, and its
    `weights_dtype` says whether the values were rounded to fp16 (also when stored again as fp32)."""
    source = load(ckpt)
    state = {k: _stored(v, half) if v.is_floating_point() else v for k, v in source["model"].items()}
    rounded = half or source["meta"].get("weights_dtype") == "fp16"  # fp16 weights stay rounded in fp32 storage
    meta = {**source["meta"], "weights_dtype": "fp16" if rounded else "fp32"}
    save_atomic({"model": state, "config": source.get("config") or {}, "meta": meta}, out)


def _stored(t: torch.Tensor, half: bool) -> torch.Tensor:
    """`t` as `_export_weights` stores it: fp32, or fp16 when asked and no finite value overflows."""
    if half and bool((t.half().isfinite() | ~t.isfinite()).all()):
        return t.half()
    return t.float()


def check_out_file(out: str | Path, example: str) -> Path:
    """`--out` as a file to write: a UserError when it is a folder or its folder does not exist
    (nothing creates folders the user did not ask for: a typo would otherwise make one)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write, e.g. --out {out / example}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist (create it first)")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {out}: folder {out.parent} is not writable")
    return out


def _export_pt2(model: torch.nn.Module, example: torch.Tensor, out: Path, meta: dict) -> None:
    """`torch.export` (the successor of TorchScript): an ExportedProgram with a dynamic batch, saved
    with the same metadata as the ONNX file in `extra_files["resnetlab.json"]`. Load it with
    `torch.export.load(path).module()`."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(out), extra_files={"resnetlab.json": json.dumps(_metadata(meta))})


def _metadata(meta: dict) -> dict[str, str]:
    """What a user of an exported file needs beside the graph: classes, the input size the graph takes
    (--image-size, else the training crop) and the normalisation. A per-pixel mean is given by its
    channel means (`mean_per_pixel` says so): the map itself is in the checkpoint."""
    mean, std = meta["mean"], meta.get("std")
    return {
        "resnetlab.model": meta["model"],
        "resnetlab.classes": json.dumps(list(meta.get("classes") or [])),
        "resnetlab.image_size": str(meta["image_size"]),
        "resnetlab.input": "(uint8 / 255 - mean) / std, mean per pixel or per channel as trained",
        "resnetlab.channel_mean": json.dumps(mean.float().mean((1, 2)).tolist()),
        "resnetlab.mean_per_pixel": str(mean.shape[-1] > 1),
        "resnetlab.channel_std": json.dumps(std.flatten().tolist() if std is not None else None),
    }


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, meta: dict) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,  # one self-contained file (fine below ONNX's 2 GB limit: ResNet-152 is 240 MB)
        verbose=False,
    )
    proto = onnx.load(str(out))
    for key, value in _metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
