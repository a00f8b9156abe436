"""The runner of `resnetlab reproduce`: a grid of the paper planned, trained and resumed.

- `grids`: the paper's grids as data (no torch: the CLI lists them at `--help`).
- `plan`: the schedule, one `Job` per run (its config and folder, done / resume / new) and the grid's plan.
- `pool`: runs the unfinished jobs, in this process one after another or N worker processes at once
  (CPU slots or GPUs), the longest first; batched groups.
- `stop`: why a grid stops early (the wall-clock budget, SIGTERM, SIGINT) and how the runs are told.
- `worker`: one pool job in its own process (`python -m resnetlab.runner.worker`).

The report of a finished grid (table, curves, responses) is `resnetlab.analysis.report`: it reads run
folders and knows nothing of the runner. Imports: cli -> runner -> train (run_training, train_batched,
run-folder rules) -> data / models; nothing here imports `resnetlab.cli` or `resnetlab.analysis`.
"""
