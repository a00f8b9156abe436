"""The report of a finished grid (`resnetlab reproduce`): table 6 (Markdown + CSV), the error curves
(figs. 1/4/6) and the layer responses (fig. 7), read from the grid's finished run folders.

It reads runs, not the runner: a job is anything with `kind`, `depth`, `seed`, `out_dir`, `cfg` and
`state()` ("done" once `final.pt` is there), as `resnetlab.runner.plan.Job` has.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnetlab.analysis.curves import plot_curves
from resnetlab.analysis.responses import checkpoint_responses, plot_responses
from resnetlab.analysis.runs import load_run, model_label
from resnetlab.analysis.table import Row, to_markdown, write_csv
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import read_weights


def report(
    jobs: list[Any],
    out: str | Path,
    *,
    dataset: str,
    device: Any,
    responses: bool = True,
    max_images: int | None = None,
    log: Callable = print,
    quiet: bool = False,
) -> list[Row]:
    """Table (Markdown + CSV), curves and responses figures of the finished jobs, written into `out`."""
    out = Path(out)
    finished = [j for j in jobs if j.state() == "done"]
    if not finished:
        raise UserError(f"no finished runs under {out}")
    by_net: dict[tuple[str, int], list[Any]] = {}
    for job in finished:
        by_net.setdefault((job.kind, job.depth), []).append(job)
    rows, runs = [], []
    for (kind, depth), net_jobs in by_net.items():
        net_runs = [load_run(j.out_dir) for j in net_jobs]
        runs += net_runs
        model = read_weights(net_jobs[0].out_dir / "final.pt", what="checkpoint").build()
        rows.append(
            Row(
                label=model_label(kind, depth),
                kind=kind,
                depth=depth,
                params=sum(p.numel() for p in model.parameters()),
                errors=tuple(r.final_test_error for r in net_runs),
                train_errors=tuple(r.final_train_error for r in net_runs if r.final_train_error is not None),
            )
        )
    val = finished[0].cfg.data.val_split
    split = runs[0].metrics[-1].get("eval_split") or "test"  # an ImageFolder's val/ folder, say
    eval_set = f"validation ({val} held-out training images)" if val else split
    write_text(out / "table.md", to_markdown(rows, dataset=dataset, eval_set=eval_set))
    write_csv(rows, out / "table.csv")
    plot_curves(runs, out / "curves.png", title=f"{dataset}, {runs[0].metrics[-1]['iter']} iterations")
    log(f"wrote {out / 'table.md'}, {out / 'table.csv'}, {out / 'curves.png'}")
    if responses:
        # Fig. 7 on seed 0 of each network.
        results = []
        for net_jobs in by_net.values():
            job = min(net_jobs, key=lambda j: j.seed)
            results.append(
                checkpoint_responses(job.out_dir / "final.pt", device=device, max_images=max_images, quiet=quiet)
            )
        plot_responses(results, out / "responses.png")
        write_text(out / "responses.json", json.dumps(results, indent=1) + "\n")
        log(f"wrote {out / 'responses.png'}, {out / 'responses.json'}")
    return rows


def write_text(path: Path, text: str) -> None:
    """`path` replaced by `text` at once: a report stopped half-way keeps the previous file."""
    from resnetlab.utils.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
