"""Error curves (figs. 1, 4, 6): training error (thin, dashed) and test error (bold) vs iterations.

One colour per depth; plain and residual runs in two panels (plain | residual) when both are given,
as in the paper's fig. 6.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from resnetlab.analysis.runs import RunRecord  # noqa: E402


def depth_colours(depths: list[int]) -> dict[int, tuple]:
    """A fixed colour per depth, shallow to deep along tab10 (the same depth gets the same colour
    in both panels)."""
    cmap = plt.get_cmap("tab10")
    return {d: cmap(i % 10) for i, d in enumerate(sorted(set(depths)))}


def plot_curves(runs: list[RunRecord], out: str | Path, *, title: str | None = None) -> Path:
    """Write the figure to `out` (format from its suffix) and return the path."""
    kinds = [k for k in ("plain", "resnet") if any(r.kind == k for r in runs)]
    colours = depth_colours([r.depth for r in runs])
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), sharey=True, squeeze=False)
    top = max(max(row.get("train_error", 0.0), row["test_error"]) for r in runs for row in r.metrics)
    # Runs before eval_split was recorded evaluated the test set unless told otherwise.
    splits = {row.get("eval_split", "test") for r in runs for row in r.metrics}
    evaluated = splits.pop() if len(splits) == 1 else "test / val"
    for ax, kind in zip(axes[0], kinds):
        labelled: set[int] = set()
        for run in sorted((r for r in runs if r.kind == kind), key=lambda r: r.depth):
            colour = colours[run.depth]
            iters = [row["iter"] for row in run.metrics]
            train = [(row["iter"], row["train_error"]) for row in run.metrics if row.get("train_error") is not None]
            label = None if run.depth in labelled else run.label
            labelled.add(run.depth)
            if train:
                ax.plot(*zip(*train), color=colour, linewidth=0.9, linestyle="--")
            ax.plot(iters, [row["test_error"] for row in run.metrics], color=colour, linewidth=2.2, label=label)
        ax.set_title("plain networks" if kind == "plain" else "residual networks (ResNets)")
        ax.set_xlabel("iterations")
        ax.set_ylim(0, min(100.0, top * 1.05) or 1.0)
        ax.grid(alpha=0.3)
        ax.legend(title=f"dashed: training, bold: {evaluated}", fontsize=9, title_fontsize=8)
    axes[0][0].set_ylabel("error (%)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Lay out, write (creating the folder; atomically: a failed write leaves the previous file) and
    close a figure; returns the path. Its suffix is the format (`cli.args.FIGURE_SUFFIXES`)."""
    from resnetlab.utils.files import atomic_path

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, format=out.suffix[1:].lower() or None)
    finally:
        plt.close(fig)
    return out
