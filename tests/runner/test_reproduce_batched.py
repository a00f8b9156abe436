"""`reproduce --batch-runs K`: the grid's stackable runs trained K at a time as one computation.

The reference is the same grid trained one run at a time (`run_training`): the batched grid must give
the same errors and ordinary run folders. Real training on the tiny fake source of tests/train (a
ResNet-8 / ResNet-14 on 8x8 images), so the whole file takes seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.analysis.report import report
from resnetlab.config import load_config
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.runner.plan import plan
from resnetlab.runner.pool import batch_groups, run_jobs
from resnetlab.utils import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import train_fake_data  # noqa: E402

DEPTH = {20: 8, 56: 14}  # the degradation grid's depths, shrunk; the 20s and the 56s still pair up


def tiny_config(kind, depth):
    return load_config(
        "cifar10-resnet20", [*train_fake_data.TINY, f"model.name=cifar_{kind}", f"model.depth={DEPTH[depth]}"]
    )


def grid(out, iters=8, **kw):
    return plan("degradation", out=out, schedule_name="short", iters=iters, device="cpu", config_fn=tiny_config, **kw)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_batched_grid_gives_the_separate_grids_results_in_ordinary_folders(tmp_path, fake_data):
    quiet = dict(device=torch.device("cpu"), dataset="cifar10", responses=False, log=lambda _: None)
    alone = grid(tmp_path / "alone", eval_every=4)
    run_jobs(alone, log=lambda _: None)
    rows_alone = report(alone, tmp_path / "alone", **quiet)

    lines = []
    batched = grid(tmp_path / "batched", eval_every=4)
    assert run_jobs(batched, batch_runs=2, log=lines.append) == []
    assert "[train] plain20-seed0 + resnet20-seed0 (batched) (1/2)" in lines
    assert "[train] plain56-seed0 + resnet56-seed0 (batched) (2/2)" in lines
    rows_batched = report(batched, tmp_path / "batched", **quiet)

    assert [r.label for r in rows_batched] == [r.label for r in rows_alone]
    for a, b in zip(rows_batched, rows_alone):
        assert a.params == b.params
        assert all(abs(x - y) <= 100 / 64 for x, y in zip(a.errors, b.errors))  # one of 64 test images at most
    for job_b, job_a in zip(batched, alone):
        # An ordinary run folder: config, metrics, final weights that load into the registry's network.
        assert job_b.state() == "done" and (job_b.out_dir / "config.yaml").is_file()
        final = checkpoint.load(job_b.out_dir / "final.pt")
        create_model(final["meta"]["model"], **final["meta"]["model_options"]).load_state_dict(final["model"])
        ours, theirs = metrics(job_b.out_dir), metrics(job_a.out_dir)
        assert [r["iter"] for r in ours] == [r["iter"] for r in theirs] == [4, 8]
        for x, y in zip(ours, theirs):
            assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
    # The same command again: everything is finished, nothing trains.
    run_jobs(batched, batch_runs=2, batched_fn=lambda *a, **k: pytest.fail("trained again"), log=lambda _: None)


def test_the_budget_stops_a_batched_group_and_the_group_resumes(tmp_path, fake_data, monkeypatch):
    from resnetlab.runner import stop
    from resnetlab.train import run_training

    monkeypatch.setattr(stop, "RESIGNAL_S", 0.2)
    monkeypatch.setenv("FAKE_SLEEP", "0.05")  # 0.1 s an iteration for the pair: the budget ends it mid-way
    jobs = grid(tmp_path / "g", iters=40, eval_every=10)
    left = run_jobs(jobs, batch_runs=2, log=lambda _: None, budget_s=1.5)
    assert sorted(j.name for j in left) == sorted(j.name for j in jobs)
    pair = [j for j in jobs if j.name in ("plain20-seed0", "resnet20-seed0")]
    reached = {int(checkpoint.load(j.out_dir / "checkpoint.pt")["iteration"]) for j in pair}
    assert len(reached) == 1 and 0 < reached.pop() < 40  # both stopped at the same step, checkpointed
    assert all(j.state() == "resume" for j in pair) and not any(j.out_dir.exists() for j in jobs if j not in pair)

    monkeypatch.delenv("FAKE_SLEEP")
    lines = []
    assert run_jobs(jobs, batch_runs=2, log=lines.append) == []  # the next window
    assert "[resume] plain20-seed0 + resnet20-seed0 (batched) (1/2)" in lines
    assert all(j.state() == "done" for j in jobs)
    assert [r["iter"] for r in metrics(pair[0].out_dir)] == [10, 20, 30, 40]
    # Stopped, resumed and batched, the run ends where it would have ended alone.
    run_training(pair[1].cfg, tmp_path / "straight")
    ours, theirs = (checkpoint.load(p)["model"] for p in (pair[1].out_dir / "final.pt", tmp_path / "straight/final.pt"))
    for key in theirs:
        if theirs[key].is_floating_point():
            assert float((ours[key] - theirs[key]).norm()) <= 1e-4 * float(theirs[key].norm()) + 1e-7, key


def test_groups_pair_the_twins_in_grid_order(tmp_path):
    jobs = plan("cifar-section", out=tmp_path)  # the presets, 64k iterations; nothing trains
    units = batch_groups(jobs, 2, log=lambda _: None)
    assert [[j.name.removesuffix("-seed0") for j in u] for u in units] == [
        ["resnet20", "plain20"],
        ["resnet32", "plain32"],
        ["resnet44", "plain44"],
        ["resnet56", "plain56"],
        ["resnet110"],
    ]
    units = batch_groups(plan("degradation", out=tmp_path, seeds=2), 3, log=lambda _: None)
    assert [[j.name for j in u] for u in units] == [
        ["plain20-seed0", "plain20-seed1", "resnet20-seed0"],
        ["plain56-seed0", "plain56-seed1", "resnet56-seed0"],
        ["resnet20-seed1"],
        ["resnet56-seed1"],
    ]
    assert batch_groups(jobs, 1, log=lambda _: None) == [[j] for j in jobs]


def test_a_group_not_at_the_same_point_trains_one_by_one(tmp_path):
    jobs = grid(tmp_path)
    first = jobs[0].out_dir  # plain20: checkpointed at iteration 2 by an earlier, unbatched command
    first.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 2}, first / "checkpoint.pt")
    lines = []
    units = batch_groups(jobs, 2, log=lines.append)
    assert [[j.name for j in u] for u in units] == [["plain20-seed0"], ["resnet20-seed0"], ["plain56-seed0",
                                                    "resnet56-seed0"]]  # fmt: skip
    assert lines == [
        "[batch]  plain20-seed0 + resnet20-seed0 (batched): not at the same point "
        "(plain20-seed0 at iteration 2, resnet20-seed0 new); trained one by one"
    ]
    with pytest.raises(UserError, match="--batch-runs must be >= 1"):
        run_jobs(jobs, batch_runs=0, log=lambda _: None)


PAIR_WORKER = """
import sys
from pathlib import Path
args = sys.argv[1:]
pairs = [a for a in args if not a.startswith("--")]
for out in pairs[1::2]:
    (Path(out) / "argv.txt").write_text(" ".join(Path(a).parent.name if a.endswith("job.yaml") else a.split("/")[-1]
                                                 for a in args))
    (Path(out) / "final.pt").write_bytes(b"")
"""


def test_a_batched_group_is_one_worker_and_one_job_per_slot(tmp_path):
    jobs = grid(tmp_path)
    (tmp_path / "worker.py").write_text(PAIR_WORKER)
    worker = (sys.executable, str(tmp_path / "worker.py"))
    run_jobs(jobs, gpus=1, jobs_per_gpu=2, batch_runs=2, worker=worker, log=lambda _: None)
    assert all(j.state() == "done" for j in jobs)
    argv = {j.name: (j.out_dir / "argv.txt").read_text() for j in jobs}
    assert (
        argv["plain20-seed0"] == argv["resnet20-seed0"] == "plain20-seed0 plain20-seed0 resnet20-seed0 resnet20-seed0"
    )
    assert argv["plain56-seed0"] == "plain56-seed0 plain56-seed0 resnet56-seed0 resnet56-seed0"
    assert "its log is" in (jobs[2].out_dir / "train.log").read_text()  # resnet20 points to plain20's log


def test_the_worker_trains_a_pair_as_one_group(tmp_path, fake_data, monkeypatch):
    from resnetlab.config import dump
    from resnetlab.runner import worker
    from resnetlab.train import batched

    with pytest.raises(SystemExit) as e:
        worker.main(["a.yaml", "out", "b.yaml"])
    assert e.value.code == 2
    calls = []
    real = batched.train_batched
    monkeypatch.setattr(batched, "train_batched", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    jobs = grid(tmp_path / "g", iters=4)[::2]  # plain20, resnet20
    args = []
    for job in jobs:
        job.out_dir.mkdir(parents=True)
        dump(job.cfg, job.out_dir / "job.yaml")
        args += [str(job.out_dir / "job.yaml"), str(job.out_dir)]
    assert worker.main(args) == 0
    assert calls == [[j.out_dir for j in jobs]] and all(j.state() == "done" for j in jobs)
