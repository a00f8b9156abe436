"""Many processes with `torchrun` + `torch.distributed`: NCCL on GPUs, gloo on CPU.

`torchrun --nproc_per_node N` (or `--nnodes`) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; a
plain `python` run has none of them and is world size 1, where every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from resnetlab.errors import UserError
from resnetlab.utils.device import resolve_device

# How long a process waits for the others on the host side: mostly for rank 0's work while the rest
# wait (downloading and unpacking CIFAR-10, decoding a folder into its cache, writing a checkpoint,
# evaluating). NCCL's default timeout, 10 minutes, is shorter than decoding a large folder: its
# watchdog would abort the waiting ranks. These waits go through a gloo group with this timeout.
HOST_WAIT = timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 is the only process that writes files and prints."""
        return self.rank == 0

    joined: bool = False  # in a process group (started by torchrun, whatever the world size)

    @property
    def enabled(self) -> bool:
        """DDP and collectives are on: the process joined a group (torchrun, even with one process,
        so that one GPU exercises the same NCCL + DDP path as many)."""
        return self.joined or self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when started by torchrun; return (info, this process's device).

    On CUDA each process takes GPU `LOCAL_RANK` and NCCL; on CPU the backend is gloo.
    """
    if not launched_by_torchrun():
        return DistInfo(), resolve_device(device_name)
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        joined=True,
    )
    device = resolve_device(device_name)
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs here")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    cpu_group()  # now, while every rank is here: creating a group is a collective
    return info, device


_CPU_GROUP = None


def cpu_group():
    """A gloo group over all processes for the host side: small messages (the stop vote, a verdict, an
    error) and waiting for rank 0 (`barrier`), with the timeout `HOST_WAIT`. They never wait on the
    GPU stream nor interleave with the model's collectives. Call on every rank."""
    global _CPU_GROUP
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo", timeout=HOST_WAIT)
    return _CPU_GROUP


def cleanup() -> None:
    global _CPU_GROUP
    _CPU_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (and returned). Identity for one process."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s Python object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=cpu_group())
    return box[0]


def barrier() -> None:
    """Every process waits here for the others (up to `HOST_WAIT`). Identity for one process."""
    if _active():
        dist.barrier(group=cpu_group())
