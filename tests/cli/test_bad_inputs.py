"""Bad input through the `resnetlab` command, one process per case (docs/reliability.md): a child forked
from a server that imported torch once (`forked.py`), a sample of cases through `python -m resnetlab`.

Each case must: exit non-zero (2: a checked error; 1 would mean the last-resort handler caught
something nobody checked), print exactly one line on stderr, without "Traceback", that names what
the user typed; and leave the files exactly as they were (no run folder, no output, no marker file
from the hostile pickle). The inputs are tiny and written once for the whole table.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetlab.data.readers import CIFAR_ARCHIVES
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forked import ForkServer  # noqa: E402

TRAIN = ["train", "--preset", "cifar10-resnet20", "--out", "{w}/run", "--device", "cpu", "--set"]
FM = ["data.name=fashion-mnist", "data.dir={w}/fm", "data.download=false", "train.batch_size=8"]
SPIDER = ["data.name=imagefolder", "data.dir={w}/spider", "data.workers=2", "data.mean_samples=4", "train.batch_size=4"]
SPIDER += ["train.max_iters=2", "train.eval_every=2"]
DETECT = ["detect", "train", "--preset", "shapes-cifar-c4", "--out", "{w}/det", "--device", "cpu", "--set"]

# Nine nested aliases of nine items: 300 bytes that expand to 9**9 strings (~9 GB, 40 s before issue 22).
BOMB = (
    "["
    + ", ".join(
        ["&a [x, x, x, x, x, x, x, x, x]"]
        + [f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    )
    + "]"
)

# (id, argv with {w} = the work folder, a fragment the one line must contain[, exit status, default 2])
CASES = [
    ("seed negative", TRAIN + ["train.seed=-1"], "train.seed"),
    ("seed above 2**32", TRAIN + ["train.seed=4294967296"], "train.seed"),
    ("vgg16 on 28 px", TRAIN + ["model.name=vgg16", "train.max_iters=1", *FM], "model.name=vgg16"),
    ("preset not UTF-8", ["train", "--preset", "{w}/latin1.yaml", "--out", "{w}/run"], "UTF-8"),
    ("preset not a mapping", ["train", "--preset", "{w}/list.yaml", "--out", "{w}/run"], "mapping"),
    # PyYAML's own errors under an explicit tag (KeyError, IndexError, AttributeError) were "unexpected"
    ("preset with a bad tagged value", ["train", "--preset", "{w}/tagged.yaml", "--out", "{w}/run"], "tagged.yaml"),
    ("preset name too long", ["train", "--preset", "a" * 300, "--out", "{w}/run"], "no preset 'aaaa"),
    ("float key past 1e308", TRAIN + ["optim.lr=1" + "0" * 400], "optim.lr: must be a finite number"),
    ("missing preset", ["train", "--preset", "nope", "--out", "{w}/run"], "'nope'"),
    ("unknown config key", TRAIN + ["foo.bar=1"], "foo.bar"),
    ("wrong type", TRAIN + ["optim.lr=abc"], "optim.lr"),
    ("override without =", TRAIN + ["optim.lr"], "optim.lr"),
    ("milestones decreasing", TRAIN + ["optim.milestones=[5,2]"], "optim.milestones"),
    ("plain net with shortcut", TRAIN + ["model.name=cifar_plain20", "model.shortcut=B"], "model.shortcut"),
    ("resume without a run", ["train", "--out", "{w}/run", "--resume"], "--preset"),
    ("CIFAR missing offline", TRAIN + ["data.dir={w}/nodata", "data.download=false"], "data.download=true"),
    ("hostile CIFAR pickle", TRAIN + ["data.dir={w}/planted", "data.download=false"], "data_batch_1"),
    ("hostile CIFAR via a checkpoint", ["evaluate", "--checkpoint", "{w}/cifar.pt", "--device", "cpu"], "data_batch_1"),
    ("predict --top -3", ["predict", "{w}/good.jpg", "--checkpoint", "{w}/fm.pt", "--top", "-3"], "--top"),
    ("export --image-size 100000", ["export", "--checkpoint", "{w}/fm.pt", "--format", "pt2", "--out", "{w}/m.pt2",
                                    "--image-size", "100000"], "from 1 to 4096"),  # fmt: skip
    # an empty path is the working folder: a run claimed in it, evaluate reading it as data
    ("train --out ''", ["train", "--preset", "cifar10-resnet20", "--out", ""], "--out is empty"),
    ("evaluate --data-dir=", ["evaluate", "--checkpoint", "{w}/fm.pt", "--data-dir="], "--data-dir is empty"),
    ("predict a blank image path", ["predict", "{w}/good.jpg", " ", "--checkpoint", "{w}/fm.pt"], "argument 3 "),
    ("data.dir empty", TRAIN + ["data.dir="], "data.dir: must not be empty"),
    ("predict images after --checkpoint", ["predict", "--checkpoint", "{w}/fm.pt", "{w}/good.jpg"], "no IMAGE given"),
    # a line break typed in a path is shown escaped, not as a space (that would name another path)
    ("a path with a line break", ["evaluate", "--checkpoint", "{w}/no\nck.pt"], "{w}/no\\nck.pt"),
    ("evaluate --workers -1", ["evaluate", "--checkpoint", "{w}/fm.pt", "--workers", "-1"], "--workers"),
    ("evaluate --scales 0", ["evaluate", "--checkpoint", "{w}/fm.pt", "--scales", "0"], "--scales"),
    ("evaluate --protocol bogus", ["evaluate", "--checkpoint", "{w}/fm.pt", "--protocol", "x"], "--protocol"),
    ("evaluate --split, built-in data", ["evaluate", "--checkpoint", "{w}/fm.pt", "--split", "test"], "--split test"),
    ("image_size negative", TRAIN + ["data.name=imagefolder", "data.dir={w}", "data.image_size=-1"], "data.image_size"),
    ("no val/ folder", TRAIN + ["data.name=imagefolder", "data.dir={w}/tree"], "data.eval_split"),
    ("reproduce --eval-every 0", ["reproduce", "table6", "--eval-every", "0", "--out", "{w}/rep"], "--eval-every"),
    ("reproduce --budget-s 0", ["reproduce", "cifar-section", "--budget-s", "0", "--out", "{w}/rep"], "--budget-s"),
    (
        "reproduce --no-tf32 with train.tf32",
        ["reproduce", "table6", "--no-tf32", "--set", "train.tf32=true", "--out", "{w}/rep"],
        "--no-tf32",
    ),
    ("reproduce --batch-runs 0", ["reproduce", "table6", "--batch-runs", "0", "--out", "{w}/rep"], "--batch-runs"),
    ("reproduce folder, no dir", ["reproduce", "table6", "--dataset", "imagefolder", "--out", "{w}/r"], "--data-dir"),
    ("reproduce --procs 0", ["reproduce", "degradation", "--procs", "0", "--out", "{w}/rep"], "--procs"),
    ("reproduce --threads 0", ["reproduce", "degradation", "--threads", "0", "--out", "{w}/rep"], "--threads"),
    ("reproduce --nets unknown", ["reproduce", "degradation", "--nets", "resnet19", "--out", "{w}/rep"], "resnet19"),
    (
        "reproduce --jobs-per-gpu on the CPU",  # was silently one run at a time
        ["reproduce", "degradation", "--jobs-per-gpu", "2", "--device", "cpu", "--out", "{w}/rep"],
        "--jobs-per-gpu 2 is for runs sharing the GPUs of --device auto or cuda, and --device cpu is cpu here; "
        "on the CPU use --procs N",
    ),
    ("info plain18 --shortcut B", ["info", "plain18", "--shortcut", "B"], "--shortcut"),
    ("info --input-size -1", ["info", "resnet18", "--input-size", "-1"], "--input-size"),
    ("info unknown model", ["info", "resnet19"], "resnet19"),
    ("info --depth past 2000", ["info", "cifar_resnet", "--depth", "1999999994"], "from 1 to 2000"),
    ("bench --batch-size 0", ["bench", "train", "--batch-size", "0"], "--batch-size"),
    (
        "export --image-size 0",
        ["export", "--checkpoint", "{w}/fm.pt", "--format", "onnx", "--out", "{w}/x.onnx", "--image-size", "0"],
        "--image-size",
    ),  # fmt: skip
    (
        "detect predict --threshold 2",
        ["detect", "predict", "{w}/good.jpg", "--checkpoint", "{w}/fm.pt", "--out", "{w}/o.png", "--threshold", "2"],
        "--threshold",
    ),  # fmt: skip
    ("missing checkpoint", ["evaluate", "--checkpoint", "{w}/nope.pt"], "nope.pt"),
    # issue 27: a terminal escape typed in a path is shown escaped; it was removed, and the line named
    # fm.pt, which exists, as missing
    ("checkpoint typed with an escape", ["evaluate", "--checkpoint", "{w}/fm\x1b[0m.pt"], "fm\\x1b[0m.pt does not"),
    ("truncated checkpoint", ["evaluate", "--checkpoint", "{w}/truncated.pt"], "truncated"),
    ("checkpoint of another model", ["evaluate", "--checkpoint", "{w}/other.pt"], "cifar_resnet32"),
    (
        "responses of a truncated checkpoint",
        ["analyze", "responses", "--checkpoint", "{w}/truncated.pt", "--json"],
        "truncated",
    ),  # fmt: skip
    ("curves of a missing run", ["analyze", "curves", "{w}/norun", "--out", "{w}/c.png"], "norun"),
    ("meta: a string as mean (evaluate)", ["evaluate", "--checkpoint", "{w}/strmean.pt"], "meta['mean'] is '0.5'"),
    ("meta: a string as mean (predict)", ["predict", "{w}/good.jpg", "--checkpoint", "{w}/strmean.pt"], "strmean.pt"),
    (
        "meta: a list as model options (export)",
        ["export", "--checkpoint", "{w}/listopts.pt", "--format", "onnx", "--out", "{w}/x.onnx"],
        "meta['model_options'] is [",
    ),  # fmt: skip
    (
        "meta: a list as model options (analyze)",
        ["analyze", "responses", "--checkpoint", "{w}/listopts.pt", "--json"],
        "listopts.pt",
    ),  # fmt: skip
    ("--out name too long", [*TRAIN[:3], "--out", "{w}/" + "x" * 300, "--set", "train.max_iters=1"], "x" * 300),
    (
        "metrics.jsonl a folder",
        [*TRAIN[:3], "--out", "{w}/mdir", "--set", "train.max_iters=1"],
        "metrics.jsonl is not a file",
    ),
    (
        "corrupt JPEG",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/corrupt", "--workers", "0"],
        "b0.jpg",
    ),  # fmt: skip
    (
        "zero-byte JPEG",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/zero", "--workers", "0"],
        "b0.jpg",
    ),  # fmt: skip
    # predict reports a bad image in its row (stdout) and goes on with the others; exit status 1.
    ("predict a missing image", ["predict", "{w}/nope.jpg", "--checkpoint", "{w}/fm.pt"], "could not be read", 1),
    (
        "predict a corrupt image",
        ["predict", "{w}/corrupt/val/b/b0.jpg", "--checkpoint", "{w}/fm.pt"],
        "could not be read",
        1,
    ),  # fmt: skip
    (
        "empty ImageFolder",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/emptyfolder", "--workers", "0"],
        "emptyfolder",
    ),  # fmt: skip
    (
        "class folder without images",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/noimages", "--workers", "0"],
        "holds no images",
    ),  # fmt: skip
    (
        "non-image among images",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/mixed", "--workers", "0"],
        "readme.jpg",
    ),  # fmt: skip
    # issue 22: files in image folders that are not images, or not files; outputs checked before the work
    (
        "FIFO named like an image",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/fifo", "--workers", "0"],
        "pipe.jpg: a FIFO, not a regular file",
    ),  # fmt: skip
    (
        "link to /dev/zero",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/devzero", "--workers", "0"],
        "zero.jpg: a character device, not a regular file",
    ),  # fmt: skip
    (
        "float TIFF outside [0, 1]",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/floattiff", "--workers", "0"],
        "b0.tif: mode F",
    ),  # fmt: skip
    (
        "one file in two classes",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/twoclasses", "--workers", "0"],
        "same file in two classes",
    ),  # fmt: skip
    (
        "evaluate --plot below a file",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/mixed", "--plot", "{w}/good.jpg/cm.png"],
        "good.jpg/cm.png",
    ),  # fmt: skip
    (
        "evaluate --plot a folder",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/mixed", "--plot", "{w}/fm"],
        "is a folder",
    ),  # fmt: skip
    (
        "evaluate --plot not a figure",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/mixed", "--plot", "{w}/cm.txt"],
        "cm.txt",
    ),  # fmt: skip
    (
        "evaluate --plot where nothing can be written",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/mixed", "--plot", "/proc/cm.png"],
        "cannot write in /proc",
    ),  # fmt: skip
    (
        "evaluate --data-dir without the data set",
        ["evaluate", "--checkpoint", "{w}/fm.pt", "--data-dir", "{w}/emptyfolder", "--device", "cpu"],
        "--data-dir {w}/emptyfolder: no fashion-mnist",
    ),  # fmt: skip
    (
        "import-weights of a full pickle",
        ["import-weights", "{w}/whole.pth", "--model", "resnet18", "--out", "{w}/imported.pt"],
        "not a plain tensor dictionary",
    ),  # fmt: skip
    (
        "import-weights of a truncated file",
        ["import-weights", "{w}/truncated.pt", "--model", "resnet18", "--out", "{w}/imported.pt"],
        "truncated",
    ),  # fmt: skip
    # issue 22: hostile configs, values that passed validation, flags that were "unexpected" (exit 1)
    ("aliases expanding to 387M values", TRAIN + [f"train.freeze={BOMB}"], "train.freeze: its aliases expand"),
    ("alias bomb in a preset", ["train", "--preset", "{w}/bomb.yaml", "--out", "{w}/run"], "bomb.yaml"),
    ("section given twice in a preset", ["train", "--preset", "{w}/twice.yaml", "--out", "{w}/run"], "optim is given"),
    ("key given twice in --set", TRAIN + ["optim.lr=0.1", "optim.lr=0.2"], "optim.lr is given twice"),
    ("key given twice in two --set", TRAIN + ["optim.lr=0.1", "--set", "optim.lr=0.2"], "optim.lr is given twice"),
    ("alias inside itself", TRAIN + ["train.freeze=&a [stem, *a]"], "train.freeze"),
    ("optim.lr NaN", TRAIN + ["optim.lr=.nan"], "optim.lr: must be a finite number"),
    ("optim.momentum inf", TRAIN + ["optim.momentum=inf"], "optim.momentum: must be a finite number"),
    ("optim.weight_decay NaN", TRAIN + ["optim.weight_decay=nan"], "optim.weight_decay"),
    ("optim.warmup_lr inf", TRAIN + ["optim.warmup_lr=.inf"], "optim.warmup_lr"),
    ("optim.plateau_threshold NaN", TRAIN + ["optim.plateau_threshold=.nan"], "optim.plateau_threshold"),
    ("optim.momentum 1", TRAIN + ["optim.momentum=1"], "optim.momentum: must be in [0, 1)"),
    ("milestones repeated", TRAIN + ["optim.milestones=[5,5]"], "optim.milestones: must be strictly increasing"),
    ("data.mean_samples negative", TRAIN + ["data.mean_samples=-1"], "data.mean_samples"),
    ("data.workers negative", TRAIN + ["data.workers=-5", *FM], "data.workers: must be in [0, 256]"),
    ("train.batch_size 1e20", TRAIN + ["train.batch_size=1e20"], "train.batch_size: must be in [1, 65536]"),
    ("unknown key close to one", TRAIN + ["train.frezze=[stem]"], "did you mean train.freeze?"),
    (
        "predict --batch-size 10**20",
        ["predict", "{w}/good.jpg", "--checkpoint", "{w}/fm.pt", "--batch-size", "100000000000000000000"],
        "--batch-size",
    ),  # fmt: skip
    (
        "export --image-size 1",
        ["export", "--checkpoint", "{w}/fm.pt", "--format", "torchscript", "--out", "{w}/x.pt", "--image-size", "1"],
        "--image-size 1",
    ),  # fmt: skip
    (
        "export --out a folder",
        ["export", "--checkpoint", "{w}/fm.pt", "--format", "onnx", "--out", "{w}/fm"],
        "is a folder",
    ),  # fmt: skip
    (
        "export into a missing folder",
        ["export", "--checkpoint", "{w}/fm.pt", "--format", "onnx", "--out", "{w}/nodir/x.onnx"],
        "nodir does not exist",
    ),  # fmt: skip
    # issue 27: a decompression bomb named as one; checkpoints of small-image folders (the CIFAR recipe)
    (
        "20000x20000 PNG (ImageNet recipe)",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/bomb", "--workers", "0"],
        "b0.png: 400,000,000 pixels",
    ),  # fmt: skip
    (
        "20000x20000 PNG (CIFAR recipe)",
        ["evaluate", "--checkpoint", "{w}/small.pt", "--data-dir", "{w}/bomb", "--split", "val", "--workers", "0"],
        "b0.png: 400,000,000 pixels",
    ),  # fmt: skip
    (
        "20000x20000 PNG (train)",
        TRAIN + ["data.name=imagefolder", "data.dir={w}/bombtree", "data.workers=0"],
        "huge.png: 400,000,000 pixels",
    ),  # fmt: skip
    (
        "small-folder checkpoint, corrupt image",
        ["evaluate", "--checkpoint", "{w}/small.pt", "--data-dir", "{w}/corrupt", "--split", "val", "--workers", "0"],
        "corrupt or not an image (--skip-corrupt skips it)",
    ),  # fmt: skip
    (
        "small-folder checkpoint, images not square",
        ["evaluate", "--checkpoint", "{w}/small.pt", "--data-dir", "{w}/tree", "--split", "test", "--workers", "0"],
        "a0.jpg is 40x30, not square); {w}/small.pt was trained on 32x32 images",
    ),  # fmt: skip
    (
        "small-folder checkpoint, 48-pixel images",
        ["evaluate", "--checkpoint", "{w}/small.pt", "--data-dir", "{w}/sq48", "--split", "val", "--workers", "0"],
        "holds 48x48 images, but {w}/small.pt was trained on 32x32",
    ),  # fmt: skip
    ("data.cache unknown", TRAIN + ["data.cache=elsewhere"], "data.cache: 'elsewhere' is not one of"),
    # issue 27: typed values that passed the config's checks and failed deep inside the run, exit 1
    # (a tensor size overflow, a 2**62-pixel resize, ENAMETOOLONG): every such key has a real bound
    *[
        (f"{key} past its bound", TRAIN + [f"{key}={value}"], f"{key}: must be")
        for key, value in [
            ("data.pad", 2147483647),
            ("data.image_size", 2147483647),
            ("data.eval_split", "v" * 300),
            ("data.dir", "{w}/" + "d" * 300),
            ("train.init_from", "{w}/" + "w" * 300 + ".pt"),
        ]
    ],
    # issue 27: an image in an old format that PIL half-recognises (a SPIDER image from a stack, named
    # .jpg: PIL raises AttributeError) is an unreadable file, through DataLoader workers too; before,
    # the command said "unexpected" and never exited (the workers ignore SIGTERM)
    (
        "SPIDER image, evaluate with workers",
        ["evaluate", "--checkpoint", "{w}/folder.pt", "--data-dir", "{w}/spider", "--workers", "2"],
        "spider/val/b/b1.jpg",  # (its exception type, or not: the data helper is dropping it)
    ),  # fmt: skip
    ("SPIDER image, predict", ["predict", "{w}/spider/val/b", "--checkpoint", "{w}/folder.pt"], "could not be read", 1),
    (
        "SPIDER image, train (CIFAR recipe) with workers",
        TRAIN + [*SPIDER, "data.recipe=cifar"],
        "b1.jpg: corrupt or not an image",
    ),  # fmt: skip
    (
        "SPIDER image, train (ImageNet recipe) with workers",
        TRAIN + [*SPIDER, "data.recipe=imagenet", "data.crop=32", "data.scale_min=32", "data.scale_max=40"],
        "b1.jpg: corrupt or not an image",
    ),  # fmt: skip
    (
        "COCO json without annotations",
        DETECT
        + [
            "data.name=coco",
            "data.dir={w}/coco",
            "data.train=[val2017]",
            "data.test=val2017",
            "data.download=false",
        ],
        "'annotations'",
    ),  # fmt: skip
    (
        "VOC box outside the image",
        DETECT
        + [
            "data.name=voc",
            "data.dir={w}/voc",
            "data.train=[2007-trainval]",
            "data.test=2007-test",
            "data.download=false",
            "data.classes=[dog]",
            "train.max_iters=1",
            "train.batch_size=1",
        ],
        "outside the 40x30 image",
    ),  # fmt: skip
]


# ---- the inputs ---------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape) + array.tobytes())


def _jpeg(path: Path, w: int = 40, h: int = 30) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def spider_stack_member() -> bytes:
    """A SPIDER image (the electron-microscopy format of 1978, which PIL reads without a magic number)
    that is one image of a stack saved alone (header word 27, its number in the stack, is 1): PIL
    recognises it and then raises AttributeError ('SpiderImageFile' object has no attribute 'stkoffset')."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32)).save(buf, format="SPIDER")  # little-endian floats
    data = bytearray(buf.getvalue())
    data[26 * 4 : 27 * 4] = struct.pack("<f", 1.0)
    return bytes(data)


def _checkpoint(path: Path, model: str, meta: dict, config: dict, weights_of: str | None = None, **options) -> None:
    net = create_model(weights_of or model, **options)
    full = {"model": model, "model_options": options, "num_classes": options["num_classes"], **meta}
    save_atomic({"model": net.state_dict(), "config": config, "meta": full}, path)


def _world(w: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, tests in (("fm", 10), ("fm2", 6)):  # fm2: another copy, for --data-dir
        raw = w / folder / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for split, n in (("train", 20), ("t10k", tests)):
            _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
            _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    (w / "latin1.yaml").write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    (w / "list.yaml").write_text("- model\n- data\n")
    (w / "tagged.yaml").write_text("train:\n  compile: !!bool maybe\n  max_iters: !!int\n")
    (w / "bomb.yaml").write_text(f"train:\n  freeze: {BOMB}\n")
    (w / "twice.yaml").write_text("optim:\n  lr: 0.1\ntrain:\n  max_iters: 5\noptim:\n  momentum: 0.5\n")

    small = {"dataset": "fashion-mnist", "classes": [str(i) for i in range(10)], "in_channels": 1,
             "image_size": 28, "mean": torch.zeros(1, 28, 28), "std": None}  # fmt: skip
    fm_config = {"data": {"name": "fashion-mnist", "dir": str(w / "fm"), "download": False}, "train": {"batch_size": 8}}
    _checkpoint(w / "fm.pt", "cifar_resnet20", small, fm_config, num_classes=10, in_channels=1)
    _checkpoint(w / "other.pt", "cifar_resnet32", small, fm_config, "cifar_resnet20", num_classes=10, in_channels=1)
    for name, bad in (("strmean", {"mean": "0.5"}), ("listopts", {"model_options": [1, "in_channels"]})):
        ckpt = torch.load(w / "fm.pt", weights_only=True)  # written by hand or by another tool
        save_atomic({**ckpt, "meta": {**ckpt["meta"], **bad}}, w / f"{name}.pt")
    (w / "mdir" / "metrics.jsonl").mkdir(parents=True)  # a folder where a run writes its metrics
    blob = (w / "fm.pt").read_bytes()
    (w / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save(create_model("cifar_resnet20"), w / "whole.pth")  # a whole module: a full pickle

    cifar = {"dataset": "cifar10", "classes": [str(i) for i in range(10)], "in_channels": 3, "image_size": 32,
             "mean": torch.zeros(3, 32, 32), "std": None}  # fmt: skip
    planted = w / "planted" / CIFAR_ARCHIVES["cifar10"].folder
    planted.mkdir(parents=True)
    for name in CIFAR_ARCHIVES["cifar10"].files:
        (planted / name).write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}))
    (planted / "data_batch_1").write_bytes(pickle.dumps({"labels": _Payload(w / "marker")}, protocol=2))
    cifar_config = {"data": {"name": "cifar10", "dir": str(w / "planted"), "download": False}}
    _checkpoint(w / "cifar.pt", "cifar_resnet20", cifar, cifar_config, num_classes=10)

    folder = {"dataset": "imagefolder", "classes": ["a", "b"], "in_channels": 3, "image_size": 32,
              "mean": torch.zeros(3, 1, 1), "std": None}  # fmt: skip
    _checkpoint(w / "folder.pt", "cifar_resnet20", folder, {"data": {"name": "imagefolder"}}, num_classes=2)
    (w / "emptyfolder" / "val").mkdir(parents=True)
    _jpeg(w / "noimages" / "val" / "a" / "a0.jpg")
    (w / "noimages" / "val" / "b").mkdir(parents=True)
    for c in "ab":
        _jpeg(w / "mixed" / "val" / c / f"{c}0.jpg")
    (w / "mixed" / "val" / "b" / "readme.jpg").write_text("not an image")

    _jpeg(w / "good.jpg")
    # issue 22: a FIFO named like an image (reading it would block for ever), a link to /dev/zero (it
    # would read until memory runs out), a float TIFF whose pixels are not in [0, 1], a file in two classes
    for kind in ("fifo", "devzero", "floattiff", "twoclasses"):
        _jpeg(w / kind / "val" / "a" / "a0.jpg")
        (w / kind / "val" / "b").mkdir(parents=True)
    os.mkfifo(w / "fifo" / "val" / "b" / "pipe.jpg")
    (w / "devzero" / "val" / "b" / "zero.jpg").symlink_to("/dev/zero")
    from PIL import Image

    ramp = np.linspace(0, 1000, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(ramp).save(w / "floattiff" / "val" / "b" / "b0.tif")
    (w / "twoclasses" / "val" / "b" / "a0.jpg").symlink_to(w / "twoclasses" / "val" / "a" / "a0.jpg")
    for split in ("train", "val"):  # 32 px, square: either recipe reads them; b1.jpg is the SPIDER image
        for name in ("a0", "a1", "b0"):
            _jpeg(w / "spider" / split / name[0] / f"{name}.jpg", 32, 32)
        (w / "spider" / split / "b" / "b1.jpg").write_bytes(spider_stack_member())
    for split in ("train", "test"):  # a tree with test/ but no val/
        _jpeg(w / "tree" / split / "a" / "a0.jpg")
    for kind, blob in (("corrupt", (w / "good.jpg").read_bytes()[:40]), ("zero", b"")):
        _jpeg(w / kind / "val" / "a" / "a0.jpg")
        (w / kind / "val" / "b").mkdir(parents=True)
        (w / kind / "val" / "b" / "b0.jpg").write_bytes(blob)

    # issue 27: a 20000x20000 PNG header (refused by PIL on opening), small-image folders and a checkpoint
    # trained on one with the CIFAR recipe
    from tests.data.test_smallfolder import bomb_png

    _jpeg(w / "bomb" / "val" / "a" / "a0.jpg", 32, 32)
    bomb_png(w / "bomb" / "val" / "b" / "b0.png")
    for split in ("train", "val"):
        for c in "ab":
            _jpeg(w / "bombtree" / split / c / f"{c}0.jpg", 32, 32)
            _jpeg(w / "small32" / split / c / f"{c}0.jpg", 32, 32)
            _jpeg(w / "sq48" / split / c / f"{c}0.jpg", 48, 48)
    bomb_png(w / "bombtree" / "train" / "b" / "huge.png")
    small = {**folder, "mean": torch.zeros(3, 32, 32), "recipe": "cifar"}
    small_config = {"data": {"name": "imagefolder", "recipe": "cifar", "eval_split": "val"}}
    _checkpoint(w / "small.pt", "cifar_resnet20", small, small_config, num_classes=2)

    (w / "coco" / "annotations").mkdir(parents=True)
    _jpeg(w / "coco" / "val2017" / "1.jpg")
    (w / "coco" / "annotations" / "instances_val2017.json").write_text(
        '{"images": [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 30}], '
        '"categories": [{"id": 1, "name": "dog"}]}'
    )

    voc = w / "voc" / "VOCdevkit" / "VOC2007"
    _jpeg(voc / "JPEGImages" / "000001.jpg")
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "000001.xml").write_text(
        "<annotation><filename>000001.jpg</filename><size><width>40</width><height>30</height><depth>3</depth>"
        "</size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
        "<xmax>90</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("trainval", "test"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("000001\n")


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("bad-inputs")
    w = base / "w"
    w.mkdir()
    _world(w)
    env = {
        **os.environ,
        "RESNETLAB_DATA": str(w / "nodata"),
        "XDG_CACHE_HOME": str(base / "cache"),
        "MPLCONFIGDIR": str(base / "mpl"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", ""),
    }
    env.pop(__import__("resnetlab.cli", fromlist=["DEBUG_ENV"]).DEBUG_ENV, None)
    return w, env


def test_the_table_is_long_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    server = ForkServer(world[1], tmp_path_factory.mktemp("forked"))
    yield server
    server.close()


def _real(argv: list[str], w: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv], cwd=w, env=env, capture_output=True, text=True, timeout=300
    )


def _check(r: subprocess.CompletedProcess, w: Path, before: dict, fragment: str, status: int) -> None:
    lines = r.stderr.splitlines()
    assert r.returncode == status, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert fragment in lines[0] and (status != 2 or lines[0].startswith("error: ")), lines[0]
    assert _snapshot(w) == before  # nothing written, nothing half-written, nothing unpacked
    assert not (w / "marker").exists()  # the hostile pickle never ran


def _case(c: tuple, w: Path) -> tuple[list[str], str, int]:
    argv, fragment, status = (*c[1:], 2)[:3]
    return [a.replace("{w}", str(w)) for a in argv], fragment.replace("{w}", str(w)), status


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(world, server, case):
    w, _ = world
    argv, fragment, status = _case(case, w)
    before = _snapshot(w)
    _check(server.run(argv, cwd=w), w, before, fragment, status)


# One case a command, and the ones that train, read data, unpickle or start workers: the real command
# answers as the forked one does (same status, same line), so the table holds for `resnetlab` itself.
REAL = ["vgg16 on 28 px", "hostile CIFAR pickle", "hostile CIFAR via a checkpoint", "predict --top -3"]
REAL += ["evaluate --protocol bogus", "reproduce --procs 0", "missing preset", "SPIDER image, evaluate with workers"]


@pytest.mark.parametrize("name", REAL)
def test_the_real_command_answers_as_the_forked_one(world, server, name):
    w, env = world
    argv, fragment, status = _case(next(c for c in CASES if c[0] == name), w)
    before = _snapshot(w)
    real = _real(argv, w, env)
    _check(real, w, before, fragment, status)
    forked = server.run(argv, cwd=w)
    assert (forked.returncode, forked.stderr, forked.stdout) == (real.returncode, real.stderr, real.stdout)


def test_data_from_the_checkpoint_is_named_and_data_dir_overrides_it(world):
    """A checkpoint names a folder its author chose: evaluate says so, and --data-dir reads another."""
    w, env = world

    def evaluate(*extra):
        argv = [sys.executable, "-m", "resnetlab", "evaluate", "--checkpoint", str(w / "fm.pt"), "--device", "cpu"]
        r = subprocess.run([*argv, *extra], cwd=w, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    out = evaluate()
    assert f"data: {w / 'fm'} (data.dir from the checkpoint's config; --data-dir DIR" in out and "10 images" in out
    out = evaluate("--data-dir", str(w / "fm2"))
    assert "data.dir from the checkpoint" not in out and "6 images" in out


def test_a_failed_torchvision_download_leaves_no_cache_folder(world, tmp_path):
    """`train.init_from=torchvision:...` offline (a proxy that refuses at once stands for no network):
    one line, and neither the run folder nor torch's cache folders (TORCH_HOME/hub/checkpoints) stay."""
    w, env = world
    home = tmp_path / "torch-home"
    proxy = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
    env = {**env, "TORCH_HOME": str(home), "https_proxy": proxy, "HTTPS_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}
    before = _snapshot(w)
    argv = [
        a.replace("{w}", str(w)) for a in [*TRAIN, "train.init_from=torchvision:ResNet18_Weights.IMAGENET1K_V1", *FM]
    ]
    r = subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv], cwd=w, env=env, capture_output=True, text=True, timeout=300
    )
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "cannot fetch" in lines[0], r.stderr[-3000:]
    assert not home.exists() and _snapshot(w) == before


def test_a_cache_that_cannot_be_written_is_one_warning_not_an_error(world, tmp_path):
    """The user cache folder cannot be made ($XDG_CACHE_HOME is a file): `train` and `evaluate` of a
    small-image folder compute in memory, say so in one warning line and succeed."""
    w, env = world
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    env = {**env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    sets = ["data.name=imagefolder", f"data.dir={w / 'small32'}", "data.workers=0", "train.batch_size=2"]
    commands = [
        ["evaluate", "--checkpoint", str(w / "small.pt"), "--data-dir", str(w / "small32"), "--workers", "0"],
        [*TRAIN[:3], "--out", str(tmp_path / "run"), "--device", "cpu", "--set", *sets, "train.max_iters=1"],
    ]
    before = _snapshot(w)
    for argv in commands:
        r = subprocess.run(
            [sys.executable, "-m", "resnetlab", *argv], cwd=w, env=env, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
        warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: cannot write the cache")]
        assert len(warnings) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert _snapshot(w) == before and (tmp_path / "run" / "final.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_skip_corrupt_skips_the_spider_image_and_trains(world, tmp_path, recipe):
    """With data.skip_corrupt the SPIDER image is left out and named, under both recipes, with workers
    (before: "unexpected" and a command that never exited)."""
    w, env = world
    argv = [*TRAIN, *SPIDER, f"data.recipe={recipe}", "data.skip_corrupt=true", "train.batch_size=2"]
    argv = [a.replace("{w}", str(w)) for a in argv if a != "train.batch_size=4"]
    argv[argv.index("{w}/run".replace("{w}", str(w)))] = str(tmp_path / "run")
    if recipe == "imagenet":
        argv += ["data.crop=32", "data.scale_min=32", "data.scale_max=40"]
    r = subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv], cwd=w, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "b1.jpg" in r.stdout and (tmp_path / "run" / "final.pt").exists()
