"""The confusion matrix of `resnetlab evaluate --plot`: rows the true class, columns the top-1
prediction, each row divided by its image count (so the diagonal is the per-class accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnetlab.analysis.curves import plt, save_figure
from resnetlab.utils.text import printable

MAX_LABELLED = 40  # more classes than this: no names on the axes (they would overlap)


def plot_confusion(result: dict[str, Any], out: str | Path) -> Path:
    """`result`: what `evaluate_checkpoints` returns. Writes the figure (.png, .pdf, .svg)."""
    import numpy as np

    counts = np.asarray(result["confusion_matrix"], dtype=float)  # (K, K)
    rows = counts.sum(1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(counts)
    side = min(max(4.0, 0.35 * k + 2), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= MAX_LABELLED:
        names = [printable(str(c))[:24] for c in result["classes"]]  # no raw newlines or escapes
        ax.set_xticks(range(k), names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if frac[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class")
    what = "ensemble" if len(result["checkpoints"]) > 1 else Path(result["checkpoints"][0]).name
    ax.set_title(
        f"{what}: {result['protocol']} on {result['split']}, {result['images']} images, "
        f"top-1 error {result['top1_error']:.2f}%",
        fontsize=9,
    )
    return save_figure(fig, out)
