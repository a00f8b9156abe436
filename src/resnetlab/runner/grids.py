"""The experiment grids of the paper that `resnetlab reproduce NAME` trains, as data.

Kept apart from the plan and the pool (which need torch) so the CLI can list them without importing torch.
"""

from __future__ import annotations

GRIDS: dict[str, list[tuple[str, int]]] = {
    "table6": [("resnet", d) for d in (20, 32, 44, 56, 110)],  # + 1202 with with_1202
    "fig6-plain": [("plain", d) for d in (20, 32, 44, 56)],
    "degradation": [("plain", 20), ("plain", 56), ("resnet", 20), ("resnet", 56)],
    # Sec. 4.2 in one command: table 6's ResNets (110 with its warm-up) and fig. 6's plain nets.
    # Is bf16 within seed noise of fp32? The 20-layer pair, a short schedule, two seeds.
    "bf16-check": [("resnet", 20), ("plain", 20)],
    "cifar-section": [("resnet", d) for d in (20, 32, 44, 56, 110)] + [("plain", d) for d in (20, 32, 44, 56)],
}
PAPER_MILESTONES = (32000, 48000)
PAPER_ITERS = 64000
SHORT_FACTOR = 10  # --schedule short: the paper's schedule divided by this (6.4k iterations)
DATASETS = ("cifar10", "fashion-mnist", "mnist", "imagefolder")  # imagefolder: --data-dir, the CIFAR recipe
