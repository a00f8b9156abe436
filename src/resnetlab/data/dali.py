"""NVIDIA DALI as the ImageFolder training loader (`data.loader: dali`, `pip install 'resnetlab[dali]'`).

Written against DALI's documented Python API. On a CUDA device decoding is "mixed" (nvjpeg) and the
rest runs on the GPU; on the CPU the same pipeline runs in DALI's CPU-only mode, which is how the
tests run it. The recipe is the paper's (shorter side in [scale_min, scale_max], random crop, flip);
PCA lighting and the mean are this package's usual device half (`Normalizer`, `lighting_shift`).
Departures from `data.loader: torch` (order and draws are DALI's, so a resume is not exact; which
damaged files it can skip): docs/evaluate.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from resnetlab.data.bundle import TrainSource
from resnetlab.data.images import Sample, TrainRecipe, lighting_shift, open_image
from resnetlab.data.ondevice import Normalizer
from resnetlab.data.order import mix_seed
from resnetlab.errors import UserError

_ALPHA = 14  # seed stream of the lighting draws (data.order and imagenet.py use others)


def import_dali():
    """(fn, types, pipeline_def, DALIGenericIterator), or one UserError line."""
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError:
        raise UserError(
            "data.loader=dali: NVIDIA DALI is not installed (pip install 'resnetlab[dali]'); "
            "data.loader=torch needs nothing more"
        ) from None
    return fn, types, pipeline_def, DALIGenericIterator


class DaliTrainSource(TrainSource):
    """Training batches from a DALI pipeline: file read, decode (nvjpeg on a GPU), scale, crop, flip."""

    def __init__(self, samples: list[Sample], recipe: TrainRecipe, *, normalizer: Normalizer, device: torch.device):
        fn, types, pipeline_def, DALIGenericIterator = import_dali()
        r = recipe
        samples, not_images = image_files(samples)
        if not_images and not r.skip_corrupt:
            raise UserError(
                f"cannot read image {not_images[0]}: not an image file, or a JPEG cut short (data.loader=dali; set "
                f"data.skip_corrupt=true to leave out the {len(not_images)} such file(s))"
            )
        if r.batch_size % r.world_size:
            raise UserError(f"train.batch_size={r.batch_size} is not divisible by the {r.world_size} processes")
        if len(samples) < r.batch_size:
            raise UserError(f"data.loader=dali: {len(samples)} training images, fewer than one batch ({r.batch_size})")
        self.normalize, self.device, self.seed, self.lighting = normalizer, device, r.seed, r.lighting
        self.local = r.batch_size // r.world_size
        self.skipped, self.skipped_files = len(not_images), set(not_images)  # the loop's counters (left out)
        self.lighting_scale = normalizer.scale * 255.0
        cuda = device.type == "cuda"

        @pipeline_def
        def paper_recipe():
            jpegs, labels = fn.readers.file(
                files=[p for p, _ in samples],
                labels=[y for _, y in samples],
                random_shuffle=True,
                shard_id=r.rank,
                num_shards=r.world_size,
                name="Reader",
            )
            images = fn.decoders.image(jpegs, device="mixed" if cuda else "cpu", output_type=types.RGB)
            sizes = fn.random.uniform(values=[float(s) for s in range(r.scale[0], r.scale[1] + 1)])
            images = fn.resize(images, resize_shorter=sizes, interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.crop_mirror_normalize(
                images,
                crop=(r.crop, r.crop),
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
            num_threads=max(1, r.workers),
            device_id=(device.index or 0) if cuda else None,  # None: DALI's CPU-only mode
            seed=mix_seed(r.seed, r.rank),
        )
        with _dali_errors():  # DALIGenericIterator runs the pipeline at once (its prefetch)
            pipe.build()
            # endless: the reader wraps around inside the pipeline, the iterator never stops (bound to the
            # reader it stops at each epoch's end and is reset: no faster on an H200, benchmarks/dali_epochs.py)
            self.iterator = DALIGenericIterator([pipe], ["images", "labels"])

    def batches(self, start_iter: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        it = start_iter
        while True:
            with _dali_errors():
                out = next(self.iterator)
            x, y = out[0]["images"], out[0]["labels"].reshape(-1).long()
            x = self.normalize(x)
            if self.lighting > 0:
                g = torch.Generator().manual_seed(mix_seed(self.seed, _ALPHA, it))
                alpha = torch.randn(len(x), 3, generator=g) * self.lighting
                x.add_(lighting_shift(alpha).to(self.device)[:, :, None, None] * self.lighting_scale)  # x is ours
            yield x, y
            it += 1


# The formats DALI's decoder reads, by their first bytes (WebP: "RIFF" + size + "WEBP").
_JPEG = b"\xff\xd8\xff"
_SIGNATURES = (_JPEG, b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  ")
_TAIL = 4096  # bytes at a JPEG's end searched for its end-of-image marker


def image_files(samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """(the samples DALI may see, the paths of the others): regular files of at most 256 MiB
    (`open_image`: never a FIFO or a device, which DALI's reader would block on or read without end)
    that start like an image DALI decodes, and for JPEGs, that end with the end-of-image marker. DALI
    must never see the others: on a file that is not an image its CPU decoder crashes the process (a
    segmentation fault, measured with DALI 2.4), and a JPEG cut short (the usual damage: an
    interrupted copy or download) stops the pipeline without naming the file. In a JPEG's coded data
    a 0xFF byte is always followed by 0x00 or a restart marker, so FF D9 near the end is the
    end-of-image marker, not data; the last _TAIL bytes are searched, as some writers pad after it."""
    kept, other = [], []
    for path, label in samples:
        try:
            with open_image(path) as f:  # a regular file, size-capped; a FIFO never blocks
                head = f.read(12)
                if head.startswith(_JPEG):
                    f.seek(max(0, f.seek(0, 2) - _TAIL))
                    ok = b"\xff\xd9" in f.read(_TAIL)
                else:
                    ok = head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        except (OSError, UserError):
            ok = False
        (kept if ok else other).append((path, label) if ok else path)
    return kept, other


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
