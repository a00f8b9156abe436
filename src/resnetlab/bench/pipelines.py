"""Our pipelines under test: the training step and data path that `resnetlab train` runs, on synthetic data.

Nothing here re-implements training: the step is `resnetlab.train.make_train_step`, the CIFAR batches
come from `resnetlab.data`'s on-device source (index slice + vectorised pad/crop/flip, on uint8 images
held on the device), the ImageNet batches from the device half of `ImageFolderTrainSource` (uint8 batch
-> device, /255, PCA lighting, mean subtraction); only the JPEG decoding in DataLoader workers, which
runs in other processes, is replaced by a ready uint8 batch.

A `Pipeline` is a set of no-argument callables the harness times: `step` (everything one iteration
does) and `components` (parts timed on their own, to say where the step's time goes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.data.imagenet import ImageFolderTrainSource
from resnetlab.data.images import TrainRecipe
from resnetlab.data.ondevice import DeviceEvalSource, DeviceTrainSource, Normalizer, image_stats
from resnetlab.models import create_model
from resnetlab.models.complexity import measure_model
from resnetlab.train.step import autocast_dtype, compile_model, make_sgd, make_train_step

CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10/100 training split
CIFAR_TEST_IMAGES = 10_000
IMAGENET_CROP = 224


@dataclass
class Pipeline:
    name: str  # "ours" | "reference"
    description: str
    batch_size: int
    mult_adds: int  # forward multiply-adds per image, as `resnetlab info` counts them
    step: Callable[[], object]
    components: dict[str, Callable[[], object]] = field(default_factory=dict)
    start_round: Callable[[], None] | None = None  # called before each round's warm-up


def family(model: str) -> str:
    """'cifar' (32x32, 10 classes) for the cifar_* models, else 'imagenet' (224x224, 1000 classes)."""
    return "cifar" if model.startswith("cifar") else "imagenet"


def input_size(model: str) -> int:
    return 32 if family(model) == "cifar" else IMAGENET_CROP


def num_classes(model: str) -> int:
    return 10 if family(model) == "cifar" else 1000


def synthetic_uint8(n: int, size: int, *, device: torch.device | str = "cpu", seed: int = 0) -> Tensor:
    """(n, 3, size, size) random uint8 images: the shape and dtype of the real data, not its content."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(device)


def cifar_train_source(
    device: torch.device, batch_size: int, *, images: int = CIFAR_TRAIN_IMAGES, seed: int = 0
) -> DeviceTrainSource:
    """The training source `build_data` makes for CIFAR, on synthetic uint8 images of CIFAR's shape."""
    x = synthetic_uint8(images, 32, device=device, seed=seed)
    y = torch.randint(0, 10, (images,), generator=torch.Generator().manual_seed(seed)).to(device)
    mean, _ = image_stats(x[:5000])  # per-pixel mean (the paper's); a sample is enough here
    return DeviceTrainSource(x, y, normalizer=Normalizer(mean, None, device), batch_size=batch_size, seed=seed)


class _RepeatBatch:
    """Stands in for the ImageNet DataLoader: yields the same collated uint8 batch forever."""

    def __init__(self, batch: tuple) -> None:
        self.batch = batch

    def __iter__(self) -> Iterator[tuple]:
        return itertools.repeat(self.batch)


def imagenet_train_source(device: torch.device, batch_size: int, *, seed: int = 0) -> ImageFolderTrainSource:
    """`ImageFolderTrainSource` whose DataLoader is replaced by one ready uint8 224x224 batch (in pinned
    memory on CUDA), so what is timed is its device half: copy, /255, PCA lighting, mean subtraction."""
    imgs = synthetic_uint8(batch_size, IMAGENET_CROP, seed=seed)
    if device.type == "cuda":
        imgs = imgs.pin_memory()
    labels = torch.randint(0, 1000, (batch_size,), generator=torch.Generator().manual_seed(seed))
    alphas = torch.randn(batch_size, 3, generator=torch.Generator().manual_seed(seed)) * 0.1  # data.lighting
    mean, _ = image_stats(imgs)
    recipe = TrainRecipe(batch_size, seed, IMAGENET_CROP, (256, 480), lighting=0.1, workers=0, skip_corrupt=False)
    source = ImageFolderTrainSource(
        [("synthetic", 0)] * batch_size, recipe, normalizer=Normalizer(mean, None, device), device=device
    )
    source.loader = _RepeatBatch((imgs, labels, alphas, [], [], []))
    return source


def imagefolder_train_source(device: torch.device, batch_size: int, *, dir: str, workers: int, decode: str):
    """The training source `resnetlab train` builds for data.name=imagefolder (mean from 500 images)."""
    from resnetlab.config import load_config
    from resnetlab.data.imagenet import _loader, build_imagefolder

    overrides = [
        "data.name=imagefolder",
        f"data.dir={dir}",
        f"data.workers={workers}",
        "data.loader=dali" if decode == "dali" else f"data.decode={decode}",
        "data.mean_samples=500",
        "data.skip_corrupt=true",
        f"train.batch_size={batch_size}",
    ]
    source = build_imagefolder(load_config(None, overrides), device).train
    if decode != "dali":
        source.loader = _loader(source.loader.dataset, workers, device, persistent=False, batch_sampler=source.sampler)
    return source


@dataclass(frozen=True)
class ModelSetup:
    """The network under test and how it runs: what the training and the inference pipelines share."""

    model: str
    batch_size: int
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"

    def prepare(self, *, train: bool) -> tuple[nn.Module, nn.Module]:
        """(model, what to call): the model on the device in the asked memory format, maybe compiled."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the training loop: fixed shapes, let cuDNN time its kernels
        model = create_model(self.model).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train(train)
        return model, (compile_model(model, self.compile_mode) if self.compile else model)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> torch.autocast:
        dtype = autocast_dtype(self.precision, self.device)
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def pipeline(self, data: str, **timed) -> Pipeline:
        """Our pipeline record for this setup; `data` says where its batches come from, `timed` holds
        step, components and start_round."""
        compiled = f", compiled ({self.compile_mode})" if self.compile else ""
        layout = "channels_last" if self.channels_last else "NCHW"
        return Pipeline(
            name="ours",
            description=f"{self.model}, {self.precision}, {layout}{compiled}; {data}",
            batch_size=self.batch_size,
            mult_adds=measure_model(self.model).mult_adds,
            **timed,
        )


def ours_train(
    setup: ModelSetup, *, train_images: int = CIFAR_TRAIN_IMAGES, imagefolder: dict | None = None
) -> Pipeline:
    """One training iteration as `run_training` does it: next batch from the source, `make_train_step`.

    imagefolder: {"dir", "workers", "decode"}: ImageNet batches from JPEG files through the real
    `build_imagefolder` source (decode, augmentation, DataLoader workers) instead of a ready batch.

    Components: `data` (the next batch alone), `fwd_bwd` (forward, loss, backward on a fixed batch),
    `optimizer` (the SGD update alone, on a throwaway optimizer with lr 0 so the weights stay sane).
    """
    model_name, batch_size, device = setup.model, setup.batch_size, setup.device
    model, call = setup.prepare(train=True)
    optimizer = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)  # sec. 3.4 / 4.2
    step = make_train_step(call, optimizer, device=device, precision=setup.precision, channels_last=setup.channels_last)
    if family(model_name) == "cifar":
        source = cifar_train_source(device, batch_size, images=train_images)
        data = "on-device uint8 CIFAR, vectorised pad-4 crop + flip (resnetlab.data)"
    elif imagefolder:
        source = imagefolder_train_source(device, batch_size, **imagefolder)
        data = (
            f"JPEG files of {imagefolder['dir']} through build_imagefolder ({imagefolder['workers']} workers, "
            f"decode on {imagefolder['decode']}), scale/crop/flip/lighting/mean (resnetlab.data)"
        )
    else:
        source = imagenet_train_source(device, batch_size)
        data = "synthetic uint8 224x224 batch, device-side /255 + lighting + mean (resnetlab.data)"
    streams = [source.batches(0)]
    data_stream = streams[0] if imagefolder else source.batches(0)  # one DataLoader feeds one stream

    def train_step() -> object:
        x, y = next(streams[0])
        return step(x, y)

    def start_round() -> None:
        # From files: fresh workers every round (the source's loader is not persistent here), so no
        # round starts on batches queued while another pipeline was timed; warm-up >= the queue.
        streams[0].close()
        streams[0] = source.batches(0)

    def data_only() -> object:
        return next(data_stream)

    fixed_x, fixed_y = next(data_stream)
    fixed_x = fixed_x.to(memory_format=setup.memory_format)

    def fwd_bwd() -> object:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # as make_train_step: a new CUDA-graph-tree iteration
        with setup.autocast():
            loss = F.cross_entropy(call(fixed_x).float(), fixed_y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    timing_optimizer = make_sgd(model, lr=0.0, momentum=0.9, weight_decay=1e-4)

    def optimizer_only() -> object:
        if next(model.parameters()).grad is None:
            fwd_bwd()  # the update needs gradients to exist
        return timing_optimizer.step()

    return setup.pipeline(
        f"{data}; resnetlab.train.make_train_step",
        step=train_step,
        # From files, the input alone is `bench data`'s figure (fresh workers, its queue drained first),
        # which run_benchmark adds: timing next() on this stream would read batches queued during steps.
        components={**({} if imagefolder else {"data": data_only}), "fwd_bwd": fwd_bwd, "optimizer": optimizer_only},
        start_round=start_round if imagefolder else None,
    )


def ours_infer(setup: ModelSetup) -> Pipeline:
    """Inference as evaluation does it: normalised uint8 batches from the device, eval mode, no grad."""
    model_name, batch_size, device = setup.model, setup.batch_size, setup.device
    _, call = setup.prepare(train=False)
    if family(model_name) == "cifar":
        images = max(CIFAR_TEST_IMAGES // batch_size, 1) * batch_size
        x = synthetic_uint8(images, 32, device=device)
        y = torch.zeros(images, dtype=torch.int64, device=device)
        split = DeviceEvalSource(x, y, normalizer=Normalizer(image_stats(x)[0], None, device), batch_size=batch_size)
        stream = itertools.chain.from_iterable(iter(split.batches, None))  # the test split, endlessly
        data = "on-device uint8 CIFAR test split (resnetlab.data)"
    else:
        source = imagenet_train_source(device, batch_size)
        source.loader.batch = (*source.loader.batch[:2], torch.zeros(batch_size, 3), [], [], [])  # no lighting
        stream = source.batches(0)
        data = "synthetic uint8 224x224 batch, device-side /255 + mean (resnetlab.data)"

    @torch.inference_mode()
    def infer_step() -> object:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        x, _ = next(stream)
        with setup.autocast():
            return call(x.to(memory_format=setup.memory_format))

    return setup.pipeline(data, step=infer_step, components={"data": lambda: next(stream)})
