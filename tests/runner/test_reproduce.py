"""The `reproduce` runner: grids, schedules, skip finished runs, resume killed ones, the report."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.analysis.report import report
from resnetlab.config import DataConfig
from resnetlab.errors import UserError
from resnetlab.runner.plan import Job, plan, schedule
from resnetlab.runner.pool import run_jobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_stubs import StubTrainer, tiny_config  # noqa: E402


def test_short_schedule_keeps_the_paper_shape():
    assert schedule("paper") == ((32000, 48000), 64000)
    assert schedule("short") == ((3200, 4800), 6400)  # the paper's / 10
    assert schedule("short", 400) == ((200, 300), 400)
    with pytest.raises(UserError):
        schedule("short", 2)


def test_plan_grids_and_overrides(tmp_path):
    jobs = plan("table6", out=tmp_path, seeds=2, with_1202=True, config_fn=tiny_config)
    assert [(j.kind, j.depth) for j in jobs[::2]] == [("resnet", d) for d in (20, 32, 44, 56, 110, 1202)]
    jobs = plan(
        "degradation",
        out=tmp_path,
        dataset="fashion-mnist",
        schedule_name="short",
        iters=80,
        config_fn=tiny_config,
        overrides=["data.val_split=100"],
    )
    assert [j.name for j in jobs] == ["plain20-seed0", "plain56-seed0", "resnet20-seed0", "resnet56-seed0"]
    cfg = jobs[1].cfg
    assert cfg.model.name == "cifar_plain56" and cfg.data.name == "fashion-mnist" and cfg.data.val_split == 100
    assert cfg.optim.milestones == (40, 60) and cfg.train.max_iters == 80 and cfg.train.eval_every == 5
    with pytest.raises(UserError, match="unknown experiment"):
        plan("table7", out=tmp_path, config_fn=tiny_config)


def test_presets_are_used(tmp_path):
    (job,) = [j for j in plan("fig6-plain", out=tmp_path) if j.depth == 56]
    assert job.cfg.model.name == "cifar_plain56" and job.cfg.train.max_iters == 64000


def test_skips_finished_and_resumes_killed(tmp_path):
    jobs = plan("degradation", out=tmp_path, seeds=2, schedule_name="short", iters=8, config_fn=tiny_config)
    trainer = StubTrainer(kill={"plain56-seed1"})
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, train_fn=trainer, log=lambda _: None)
    assert trainer.calls == [("plain20-seed0", False), ("plain20-seed1", False), ("plain56-seed0", False),
                             ("plain56-seed1", False)]  # fmt: skip
    trainer.calls.clear()
    run_jobs(jobs, train_fn=trainer, log=lambda _: None)  # the same command again
    assert trainer.calls[0] == ("plain56-seed1", True)  # resumed from its checkpoint
    assert [c for c in trainer.calls if c[0].startswith("plain20")] == []  # finished: skipped
    assert len(trainer.calls) == 5 and all(j.state() == "done" for j in jobs)

    rows = report(jobs, tmp_path, dataset="cifar10", device=torch.device("cpu"), responses=False, log=lambda _: None)
    by_label = {r.label: r for r in rows}
    assert by_label["ResNet-56"].errors == (10.0, 11.0)  # seeds 0 and 1
    assert by_label["ResNet-56"].params == by_label["plain-56"].params  # option A: identical twins
    table = (tmp_path / "table.md").read_text()
    assert "| ResNet-56 | 56 | 0.85M | 2 | 1.00 (1.50 ± 0.71) | 10.00 (10.50 ± 0.71) | 6.97 | 0.85M |" in table
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "table.csv").is_file()


FAKE_WORKER = """
import os, sys, time
from pathlib import Path
cfg, out = Path(sys.argv[1]), Path(sys.argv[2])
assert cfg.is_file() and "train.device" not in sys.argv
(out / "gpu.txt").write_text(os.environ["CUDA_VISIBLE_DEVICES"] + " " + str("--resume" in sys.argv))
time.sleep(0.2)
(out / "final.pt").write_bytes(b"")
"""


def test_one_subprocess_per_gpu(tmp_path):
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    jobs[1].out_dir.mkdir(parents=True)
    (jobs[1].out_dir / "checkpoint.pt").write_bytes(b"")  # killed earlier: resumed
    run_jobs(jobs, gpus=2, worker=(sys.executable, str(tmp_path / "worker.py")), log=lambda _: None)
    assert all(j.state() == "done" for j in jobs)
    gpus = [(j.out_dir / "gpu.txt").read_text().split() for j in jobs]
    assert {g for g, _ in gpus} == {"0", "1"} and [r for _, r in gpus] == ["False", "True", "False", "False"]
    assert "device: cuda" in (jobs[0].out_dir / "job.yaml").read_text()


CONCURRENT_WORKER = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[2])
(out / "start").write_text(repr(time.time()))
time.sleep(1.0)
(out / "end").write_text(repr(time.time()))
(out / "final.pt").write_bytes(b"")
"""


def test_jobs_share_one_gpu_when_asked(tmp_path):
    """--jobs-per-gpu 2 on one GPU: two runs at a time (their lifetimes overlap), all four finish."""
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(CONCURRENT_WORKER)
    run_jobs(jobs, gpus=1, jobs_per_gpu=2, worker=(sys.executable, str(tmp_path / "worker.py")), log=lambda _: None)
    assert all(j.state() == "done" for j in jobs)
    spans = [(float((j.out_dir / "start").read_text()), float((j.out_dir / "end").read_text())) for j in jobs]
    assert spans[1][0] < spans[0][1]  # the second started before the first ended
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once == 2
    with pytest.raises(UserError, match="jobs-per-gpu"):
        run_jobs(jobs, gpus=1, jobs_per_gpu=0, log=lambda _: None)


FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.slow  # ~10 s alone, ~50 s on the shared 2-core machine (reading Fashion-MNIST dominates)
@pytest.mark.skipif(not FASHION.is_file(), reason="needs Fashion-MNIST")
def test_real_tiny_run_end_to_end(tmp_path):
    from resnetlab.config import load_config

    cfg = load_config(
        "cifar10-resnet20",
        ["model.name=cifar_resnet", "model.depth=8", "data.name=fashion-mnist", "data.val_split=64"]
        + ["train.max_iters=3", "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=8"]
        + ["train.device=cpu", "train.eval_batch_size=64", f"data.dir={tmp_path / 'data'}"],
    )
    job = Job("resnet", 8, 0, tmp_path / "resnet8-seed0", cfg)
    run_jobs([job], log=lambda _: None)
    assert job.state() == "done"
    (job.out_dir / "final.pt").unlink()  # as if killed after the last checkpoint (iteration 2)
    run_jobs([job], log=lambda _: None)
    assert job.state() == "done"
    iters = [json.loads(line)["iter"] for line in (job.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert iters == [2, 3]
    run_jobs([job], train_fn=lambda *a, **k: pytest.fail("finished run trained again"), log=lambda _: None)
    # responses on the real checkpoint: 2 layers per block, 3 blocks of depth 8.
    from resnetlab.analysis.responses import checkpoint_responses

    res = checkpoint_responses(job.out_dir / "final.pt", device=torch.device("cpu"), max_images=32)
    assert res["label"] == "ResNet-8" and len(res["layers"]) == 6 and res["images"] == 32
    assert all(v > 0 for v in res["layers"].values())
    assert 0 <= res["test_error"] <= 100


def test_a_changed_recipe_does_not_reuse_the_old_run(tmp_path):
    trainer = StubTrainer()
    quiet = dict(log=lambda _: None)
    run_jobs(
        plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config),
        train_fn=trainer,
        **quiet,
    )
    assert len(trainer.calls) == 4
    # Where and how it runs is not the recipe: the finished runs are reused.
    same = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config, device="cpu",
                overrides=["data.workers=1"])  # fmt: skip
    run_jobs(same, train_fn=trainer, **quiet)
    assert len(trainer.calls) == 4 and all(j.state() == "done" for j in same)
    # Another lr is another recipe: refused with the diff, nothing trained.
    changed = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config,
                   overrides=["optim.lr=0.2"])  # fmt: skip
    with pytest.raises(UserError, match=r"plain20-seed0 holds a run of another recipe: optim.lr: 0.1 there, 0.2 now"):
        run_jobs(changed, train_fn=trainer, **quiet)
    assert len(trainer.calls) == 4
    with pytest.raises(UserError, match="no finished runs"):  # the table is never built from the old runs
        report(changed, tmp_path, dataset="cifar10", device="cpu", responses=False, **quiet)
    # --rerun-changed: fresh folders beside the old ones, which stay as they were.
    fresh = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config,
                 overrides=["optim.lr=0.2"], rerun_changed=True)  # fmt: skip
    assert [j.out_dir.name for j in fresh] == ["plain20-seed0-r1", "plain56-seed0-r1", "resnet20-seed0-r1",
                                               "resnet56-seed0-r1"]  # fmt: skip
    run_jobs(fresh, train_fn=trainer, **quiet)
    assert len(trainer.calls) == 8 and all(j.state() == "done" for j in fresh)
    assert all(j.state() == "other" for j in changed)
    again = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config,
                 overrides=["optim.lr=0.2"], rerun_changed=True)  # fmt: skip
    assert [j.out_dir for j in again] == [j.out_dir for j in fresh]  # the same command finds them again


def test_cifar_section_is_table6_and_fig6_in_one_grid(tmp_path):
    jobs = plan("cifar-section", out=tmp_path)  # the presets
    assert [j.name for j in jobs] == [f"resnet{d}-seed0" for d in (20, 32, 44, 56, 110)] + [
        f"plain{d}-seed0" for d in (20, 32, 44, 56)
    ]
    by_name = {j.name: j.cfg for j in jobs}
    assert all(c.train.max_iters == 64000 and c.optim.milestones == (32000, 48000) for c in by_name.values())
    assert by_name["resnet110-seed0"].optim.warmup_lr == 0.01  # sec. 4.2: 0.01 until training error < 80%
    assert by_name["resnet56-seed0"].optim.warmup_lr is None


def test_folder_data_overrides(tmp_path):
    from resnetlab.runner.plan import data_overrides

    assert data_overrides("cifar10", None) == ["data.name=cifar10"]
    assert data_overrides("fashion-mnist", tmp_path) == ["data.name=fashion-mnist", f"data.dir={tmp_path}"]
    with pytest.raises(UserError, match="--dataset imagefolder needs --data-dir"):
        data_overrides("imagefolder", None)
    with pytest.raises(UserError, match="no train/ folder"):
        data_overrides("imagefolder", tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="neither test/ nor val/"):
        data_overrides("imagefolder", tmp_path)
    (tmp_path / "val").mkdir()
    assert data_overrides("imagefolder", tmp_path)[-1] == "data.eval_split=val"
    (tmp_path / "test").mkdir()  # CIFAR-10's JPEG folder: train/ + test/, evaluated on test/
    assert data_overrides("imagefolder", tmp_path) == [
        "data.name=imagefolder",
        f"data.dir={tmp_path}",
        "data.recipe=cifar",
        "data.eval_split=test",
    ]
    if "recipe" in {f.name for f in dataclasses.fields(DataConfig)}:  # issue 21's keys, once merged
        folder = dict(out=tmp_path / "o", dataset="imagefolder", data_dir=tmp_path, config_fn=tiny_config)
        jobs = plan("cifar-section", **folder)
        assert jobs[0].cfg.data.recipe == "cifar" and jobs[0].cfg.data.eval_split == "test"
        jobs = plan("cifar-section", **folder, overrides=["data.val_split=5000"])
        assert jobs[0].cfg.data.val_split == 5000 and jobs[0].cfg.data.eval_split == "val"  # not set: held out


CPU_WORKER = """
import json, os, sys, time
from pathlib import Path
out = Path(sys.argv[2])
start = time.time()
time.sleep(1.0)
seen = {"argv": sys.argv[3:], "omp": os.environ.get("OMP_NUM_THREADS"), "mkl": os.environ.get("MKL_NUM_THREADS")}
(out / "seen.json").write_text(json.dumps({**seen, "start": start, "end": time.time()}))
(out / "final.pt").write_bytes(b"")
"""


def test_cpu_procs_run_workers_at_once_with_their_threads(tmp_path):
    """--procs 2 --threads 3: two CPU workers at a time (their lifetimes overlap, never three), each
    told train.device=cpu in its job.yaml and 3 threads (environment and flag), logged as [cpu i]."""
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config, device="auto")
    (tmp_path / "worker.py").write_text(CPU_WORKER)
    lines = []
    run_jobs(jobs, procs=2, threads=3, worker=(sys.executable, str(tmp_path / "worker.py")), log=lines.append)
    assert all(j.state() == "done" for j in jobs)
    seen = [json.loads((j.out_dir / "seen.json").read_text()) for j in jobs]
    assert all(s["argv"] == ["--threads", "3"] and s["omp"] == "3" and s["mkl"] == "3" for s in seen)
    spans = [(s["start"], s["end"]) for s in seen]
    assert spans[1][0] < spans[0][1]  # the second started before the first ended
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) == 2
    assert jobs[0].cfg.train.device == "auto"  # planned for auto, told cpu
    assert all("device: cpu" in (j.out_dir / "job.yaml").read_text() for j in jobs)
    started = [line.split("]")[0] + "]" for line in lines if line.endswith("(train)")]
    assert sorted(set(started)) == ["[cpu 0]", "[cpu 1]"] and len(started) == 4
    assert not any("[gpu" in line for line in lines)


def test_cpu_procs_default_threads_share_the_usable_cores(tmp_path, monkeypatch):
    """Without --threads: usable cores // procs, at least 1 (8 cores, 3 processes: 2 threads each)."""
    import os

    jobs = plan("bf16-check", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(CPU_WORKER)
    worker = (sys.executable, str(tmp_path / "worker.py"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    run_jobs(jobs, procs=3, worker=worker, log=lambda _: None)
    assert [json.loads((j.out_dir / "seen.json").read_text())["omp"] for j in jobs] == ["2", "2"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    more = plan("bf16-check", out=tmp_path / "one-core", schedule_name="short", iters=8, config_fn=tiny_config)
    run_jobs(more, procs=2, worker=worker, log=lambda _: None)
    assert [json.loads((j.out_dir / "seen.json").read_text())["argv"] for j in more] == [["--threads", "1"]] * 2


def test_procs_are_for_the_cpu_and_threads_apply_in_process(tmp_path):
    jobs = plan("bf16-check", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    with pytest.raises(UserError, match="--procs 2 runs on the CPU; on GPUs use --jobs-per-gpu"):
        run_jobs(jobs, gpus=1, procs=2, log=lambda _: None)
    with pytest.raises(UserError, match="--threads must be >= 1"):
        run_jobs(jobs, threads=0, log=lambda _: None)
    # --threads without --procs: the runs in this process get that many intra-op threads, then torch's again.
    before, seen = torch.get_num_threads(), []
    trainer = StubTrainer()

    def train(cfg, out_dir, *, resume=False):
        seen.append(torch.get_num_threads())
        return trainer(cfg, out_dir, resume=resume)

    run_jobs(jobs, threads=before + 1, train_fn=train, log=lambda _: None)
    assert seen == [before + 1, before + 1] and torch.get_num_threads() == before


def test_nets_trains_and_reports_only_those(tmp_path):
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config,
                nets=["resnet20", "plain20"])  # fmt: skip
    assert [j.name for j in jobs] == ["plain20-seed0", "resnet20-seed0"]  # the grid's order
    trainer = StubTrainer()
    run_jobs(jobs, train_fn=trainer, log=lambda _: None)
    assert [c[0] for c in trainer.calls] == ["plain20-seed0", "resnet20-seed0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain20-seed0", "resnet20-seed0"]
    rows = report(jobs, tmp_path, dataset="cifar10", device=torch.device("cpu"), responses=False, log=lambda _: None)
    assert [r.label for r in rows] == ["plain-20", "ResNet-20"]
    assert (tmp_path / "curves.png").is_file() and "plain-56" not in (tmp_path / "table.md").read_text()
    (job,) = plan("table6", out=tmp_path / "t6", with_1202=True, config_fn=tiny_config, nets=["resnet1202"])
    assert job.name == "resnet1202-seed0"
    with pytest.raises(UserError) as e:
        plan("degradation", out=tmp_path, config_fn=tiny_config, nets=["resnet20", "resnet19"])
    names = "plain20, plain56, resnet20, resnet56"
    assert str(e.value) == f"--nets resnet19: not in degradation, whose networks are {names}"


def test_a_worker_error_is_one_line_in_the_runs_log(tmp_path):
    # The worker's stderr is the run's train.log: a run folder in use (another process holds its lock,
    # as when a grid is started twice) is the same one line as `resnetlab train` prints, no traceback.
    import fcntl
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "c.yaml").write_text("train: {max_iters: 1}\n")
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("pid 1 on elsewhere\n")
        lock.flush()
        done = subprocess.run(
            [sys.executable, "-m", "resnetlab.runner.worker", str(tmp_path / "c.yaml"), str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --out {out} is in use by pid 1 on elsewhere; wait for that run to end or choose another --out"
    ]


def test_the_workers_old_name_still_runs_it():
    # Older grids' commands.txt, and pools started before the move, run `-m resnetlab.analysis.worker`.
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "resnetlab.analysis.worker", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m resnetlab.runner.worker"), done.stderr


def test_a_failing_run_in_one_process_does_not_hold_back_the_others(tmp_path):
    """--procs 1: a run that fails (a NaN loss, say) was raised at once, and the next session started
    with it again, so no run after it ever trained. Now the others train; the failure is named."""

    class FailingTrainer(StubTrainer):
        def __call__(self, cfg, out_dir, *, resume=False):
            if Path(out_dir).name == "plain20-seed0":
                self.calls.append((Path(out_dir).name, resume))
                raise UserError("loss is nan at iteration 7; training stopped")
            return super().__call__(cfg, out_dir, resume=resume)

    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    trainer, lines = FailingTrainer(), []
    with pytest.raises(UserError, match=r"^1 run\(s\) failed: plain20-seed0$"):
        run_jobs(jobs, train_fn=trainer, log=lines.append)
    assert [name for name, _ in trainer.calls] == [j.name for j in jobs]  # plain20 first, then every other
    assert "[fail]   plain20-seed0: loss is nan at iteration 7; training stopped" in lines
    assert [j.state() for j in jobs] == ["new", "done", "done", "done"]
