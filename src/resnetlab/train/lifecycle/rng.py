"""Random state: seeding a run, and every rank's RNG states in a checkpoint (exact resume)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from resnetlab.train.lifecycle.run import Run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """`rng_state`'s states set again. A checkpoint loaded onto the GPU (map_location) holds them
    there; the generators take CPU byte tensors only, hence `.cpu()`."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.cpu().numpy().astype("uint32"), pos, has_gauss, cached))


def gather_rng_states(run: Run) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), for a checkpoint: each rank draws its own stream."""
    mine = rng_state(run.device)
    if not run.info.enabled:
        return [mine]
    states: list[Any] = [None] * run.info.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def restore_rng_states(run: Run, states: list[dict[str, Any]]) -> None:
    set_rng_state(states[run.info.rank] if run.info.rank < len(states) else states[0], run.device)
