"""The order in which a grid's runs start, and a grid resumed from partly trained folders.

`--procs N` starts the runs with the most work left first (depth x iterations left), so that N slots
finish together; the same command after a stop skips the finished runs and resumes each partial one
from its own checkpoint's iteration. Tiny runs: stand-in workers, or real training on the fake source
of tests/train (seconds).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.config import Config, ModelConfig, load_config
from resnetlab.errors import Terminated
from resnetlab.runner import pool
from resnetlab.runner.plan import plan
from resnetlab.runner.pool import run_jobs
from resnetlab.utils import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import train_fake_data  # noqa: E402

QUICK_WORKER = """
import sys
from pathlib import Path
out = Path(sys.argv[2])
(out / "final.pt").write_bytes(b"")
"""


def stub_config(kind, depth):
    return Config(model=ModelConfig(name=f"cifar_{kind}{depth}"))


def started(lines: list[str]) -> list[str]:
    """The runs in the order the pool started them, from its log lines `[cpu i] NAME (train|resume)`."""
    return [line.split("] ")[1].split(" (")[0] for line in lines if line.endswith(("(train)", "(resume)"))]


@pytest.fixture
def quick_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "POLL_S", 0.05)
    (tmp_path / "worker.py").write_text(QUICK_WORKER)
    return (sys.executable, str(tmp_path / "worker.py"))


def test_procs_start_the_longest_runs_first(tmp_path, quick_pool):
    """Table 6's five ResNets on two CPU slots: 110 first, 20 last (the grid's order is 20 ... 110)."""
    jobs = plan("table6", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config)
    lines = []
    assert run_jobs(jobs, procs=2, threads=1, worker=quick_pool, log=lines.append) == []
    assert started(lines) == ["resnet110-seed0", "resnet56-seed0", "resnet44-seed0", "resnet32-seed0", "resnet20-seed0"]
    assert "[order]  longest first (depth x iterations left): resnet110-seed0, resnet56-seed0, " in "\n".join(lines)


def test_a_resumed_run_counts_only_the_iterations_it_has_left(tmp_path, quick_pool):
    """ResNet-110 checkpointed at iteration 7 of 8 has 110 x 1 layer-iterations left, less than
    ResNet-20's 20 x 8: it starts last. Ties (plain and ResNet of one depth) keep the grid's order."""
    jobs = plan("cifar-section", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config)
    r110 = next(j for j in jobs if j.name == "resnet110-seed0")
    r110.out_dir.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 7}, r110.out_dir / "checkpoint.pt")
    lines = []
    run_jobs(jobs, procs=2, threads=1, worker=quick_pool, log=lines.append)
    depths = [56, 44, 32, 20]
    assert started(lines) == [f"{kind}{d}-seed0" for d in depths for kind in ("resnet", "plain")] + ["resnet110-seed0"]
    assert any(re.fullmatch(r"\[cpu \d\] resnet110-seed0 \(resume\)", line) for line in lines)  # given --resume


class Recorder:
    """The fake source in place of `build_data`, noting where each run's training stream starts
    (model name and depth -> start iterations) and sending SIGTERM to this process at `sigterm_at` =
    (name, depth, iteration): the run's own handler takes it, as a `kill` would, at a known step."""

    def __init__(self) -> None:
        self.starts: dict[str, list[int]] = {}
        self.sigterm_at: tuple[str, int] | None = None

    def __call__(self, cfg, device, **kw):
        bundle = train_fake_data.build_fake_data(cfg, device, **kw)
        net, stream = f"{cfg.model.name}{cfg.model.depth}", bundle.train.batches

        def batches(start_iter: int):
            self.starts.setdefault(net, []).append(start_iter)
            for it, batch in enumerate(stream(start_iter), start_iter):
                if (net, it) == self.sigterm_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        bundle.train.batches = batches
        return bundle


@pytest.fixture
def recorder(monkeypatch):
    import resnetlab.train.loop as loop

    rec = Recorder()
    monkeypatch.setattr(loop, "build_data", rec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield rec
    torch.set_num_threads(threads)


DEPTH = {20: 8, 56: 14}  # the degradation grid's depths, shrunk


def tiny_config(kind, depth):
    return load_config(
        "cifar10-resnet20",
        [*train_fake_data.TINY, f"model.name=cifar_{kind}", f"model.depth={DEPTH[depth]}"],
    )


def test_a_partly_trained_grid_resumes_each_run_where_it_stopped(tmp_path, recorder):
    """plain-20 finishes, plain-56 is stopped by SIGTERM during iteration 5 (it checkpoints at 5 and the
    grid stops: `Terminated`, exit 143 in the CLI), the ResNets never start. The same command again:
    plain-20 is not trained again, plain-56 resumes at iteration 5, the ResNets start at 0."""
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, eval_every=4, device="cpu",
                config_fn=tiny_config)  # fmt: skip
    recorder.sigterm_at = ("cifar_plain14", 4)  # plain-56 (14 layers here), fetching the batch of iteration 4
    lines = []
    with pytest.raises(Terminated):
        run_jobs(jobs, log=lines.append)
    assert [j.state() for j in jobs] == ["done", "resume", "new", "new"]
    assert int(checkpoint.load(jobs[1].out_dir / "checkpoint.pt")["iteration"]) == 5  # the step it was in
    assert lines[-1].startswith("[stop]   SIGTERM: 3 run(s) unfinished (checkpointed): plain56-seed0, resnet20")
    recorder.starts.clear()

    lines = []
    assert run_jobs(jobs, log=lines.append) == []  # the same command
    assert all(j.state() == "done" for j in jobs)
    assert recorder.starts == {"cifar_plain14": [5], "cifar_resnet8": [0], "cifar_resnet14": [0]}  # plain-20: none
    assert lines[:2] == ["[skip]   plain20-seed0: final.pt exists", "[resume] plain56-seed0 (1/3)"]
    done = [checkpoint.load(j.out_dir / "final.pt")["iteration"] for j in jobs]
    assert done == [8, 8, 8, 8]
