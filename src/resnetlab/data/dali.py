"""NVIDIA DALI as the ImageFolder training loader (`data.loader: dali`, `pip install 'resnetlab[dali]'`).

Written against DALI's documented Python API (`pipeline_def`, `fn.readers.file`,
`fn.decoders.image(device="mixed")`, `fn.resize(resize_shorter=...)`, `fn.crop_mirror_normalize`,
`nvidia.dali.plugin.pytorch.DALIGenericIterator`). On a CUDA device the decoding is "mixed" (nvjpeg,
the hardware JPEG engines where the GPU has them) and the rest runs on the GPU; on the CPU the same
pipeline runs in DALI's CPU-only mode (`device_id=None`), which is how this project's tests run it
(tests/data/test_dali.py, when DALI is installed; benchmarks/README.md has its figures).

The recipe is the paper's, as DALI's own ImageNet examples write it: shorter side drawn uniformly in
[scale_min, scale_max], a random crop x crop window, a horizontal flip with probability 1/2, all on
the GPU; PCA lighting and the mean are this package's usual device half (`Normalizer`, `lighting_shift`).
Departures from `data.loader: torch`, all named:
- order and augmentation come from DALI's reader shuffle and its random generators (seeded with
  train.seed and the rank), not from (seed, iteration): a resumed run sees a different order;
- a file DALI cannot decode stops the run with DALI's error (data.skip_corrupt is not applied).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from resnetlab.data.bundle import TrainSource
from resnetlab.data.imagenet import Sample, lighting_shift
from resnetlab.data.ondevice import Normalizer
from resnetlab.data.order import mix_seed
from resnetlab.errors import UserError

_ALPHA = 14  # seed stream of the lighting draws (data.order and imagenet.py use others)


def import_dali():
    """(fn, types, pipeline_def, DALIGenericIterator, LastBatchPolicy), or one UserError line."""
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError:
        raise UserError(
            "data.loader=dali: NVIDIA DALI is not installed (pip install 'resnetlab[dali]', CUDA only); "
            "data.loader=torch needs nothing more"
        ) from None
    return fn, types, pipeline_def, DALIGenericIterator, LastBatchPolicy


class DaliTrainSource(TrainSource):
    """Training batches from a DALI pipeline: file read, decode (nvjpeg on a GPU), scale, crop, flip."""

    def __init__(
        self,
        samples: list[Sample],
        *,
        normalizer: Normalizer,
        device: torch.device,
        batch_size: int,
        seed: int,
        crop: int,
        scale: tuple[int, int],
        lighting: float,
        workers: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        fn, types, pipeline_def, DALIGenericIterator, LastBatchPolicy = import_dali()
        if batch_size % world_size:
            raise UserError(f"train.batch_size={batch_size} is not divisible by the {world_size} processes")
        self.normalize, self.device, self.seed, self.lighting = normalizer, device, seed, lighting
        self.local = batch_size // world_size
        self.skipped, self.skipped_files = 0, set()  # the loop's counters; DALI stops on unreadable files
        self.lighting_scale = normalizer.scale * 255.0
        cuda = device.type == "cuda"

        @pipeline_def
        def paper_recipe():
            jpegs, labels = fn.readers.file(
                files=[p for p, _ in samples],
                labels=[y for _, y in samples],
                random_shuffle=True,
                shard_id=rank,
                num_shards=world_size,
                name="Reader",
            )
            images = fn.decoders.image(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB)
            sizes = fn.random.uniform(values=[float(s) for s in range(scale[0], scale[1] + 1)])
            images = fn.resize(images, resize_shorter=sizes, interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.crop_mirror_normalize(
                images,
                crop=(crop, crop),
                crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
                crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
                mirror=fn.random.coin_flip(probability=0.5),
                dtype=types.FLOAT,  # 0..255: our Normalizer divides by 255 and subtracts the mean
                output_layout="CHW",
                mean=[0.0, 0.0, 0.0],
                std=[1.0, 1.0, 1.0],
            )
            return images, labels.gpu() if cuda else labels

        pipe = paper_recipe(
            batch_size=self.local,
            num_threads=max(1, workers),
            device_id=(device.index or 0) if cuda else None,  # None: DALI's CPU-only mode
            seed=mix_seed(seed, rank),
        )
        with _dali_errors():  # DALIGenericIterator runs the pipeline at once (its prefetch)
            pipe.build()
            self.iterator = DALIGenericIterator(
                [pipe],
                ["images", "labels"],
                reader_name="Reader",
                last_batch_policy=LastBatchPolicy.DROP,
                auto_reset=True,
            )

    def batches(self, start_iter: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        it, ended = start_iter, False
        while True:
            with _dali_errors():
                out = next(self.iterator, None)
            if out is None:  # an epoch's end: auto_reset starts the next one
                if ended:
                    raise UserError(f"data.loader=dali: fewer training images than one batch ({self.local})")
                ended = True
                continue
            ended = False
            x, y = out[0]["images"], out[0]["labels"].reshape(-1).long()
            x = self.normalize(x)
            if self.lighting > 0:
                g = torch.Generator().manual_seed(mix_seed(self.seed, _ALPHA, it))
                alpha = torch.randn(len(x), 3, generator=g) * self.lighting
                x = x + lighting_shift(alpha).to(self.device)[:, :, None, None] * self.lighting_scale
            yield x, y
            it += 1


@contextmanager
def _dali_errors() -> Iterator[None]:
    """A DALI pipeline error (e.g. a file it cannot decode: DALI neither names nor skips it) becomes one
    UserError line with DALI's reason instead of its multi-page traceback."""
    try:
        yield
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next(
            (ln for ln in lines if "failure" in ln.lower() or "error:" in ln.lower()), lines[-1] if lines else ""
        )
        raise UserError(
            f"data.loader=dali stopped: {reason} (DALI stops on a file it cannot decode and does not name it; "
            "data.loader=torch with data.skip_corrupt=true names and skips such files)"
        ) from None
