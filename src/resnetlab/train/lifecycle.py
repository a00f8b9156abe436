"""A training run's life in its folder, the same for every loop (`train`, `detect train`, `reproduce`).

    with open_run(cfg, out, resume=resume) as run:
        ... build data and model; if run.checkpoint: load the loop's entries, then run.restore(model, opt)
        it = run.start_iter
        with run.steps() as bar:                      # progress bar and clock
            while it < cfg.train.max_iters:
                ... one step ...; it += 1
                due = run.after_step(it)              # log / eval / checkpoint / stop now?
                run.check_finite(losses, first_iter)  # NaN / inf: one line, the last checkpoint kept
                if due.log or due.eval: run.log(it, {"train/loss": ...}, row)  # TensorBoard; metrics.jsonl
                if due.checkpoint: run.save_checkpoint(run.state(model, meta, opt, ...), it)
                if due.stop: break                    # SIGINT / SIGTERM, agreed across ranks
        run.end(it, run.record(model, meta))          # final.pt, or the stop line

What `open_run` guarantees, in this order, before any data or model is loaded:
1. `--out` is a folder this process can write (a file in the way, a read-only folder: one line).
2. An exclusive lock (`OUT/.lock`, `fcntl.flock`) held by rank 0 for the run's life; a second process
   on the same folder stops at once with one line naming the holder (host, pid, start time). The lock
   dies with its process, so a killed run never leaves a stale lock.
3. The folder's state matches the request: a new run refuses a folder that holds one (`checkpoint.pt`
   or `final.pt`); `--resume` compares the stored config with the requested one and refuses any
   difference outside `RESUMABLE_KEYS` with a one-line diff, and refuses a `train.max_iters` below the
   iteration the run reached. A folder whose run died before its first checkpoint holds no run: the
   same command starts it again.
4. Only then `config.yaml` is written (the config was validated when it was loaded), `metrics.jsonl`
   loses the rows after the checkpoint, `final.pt` goes (its presence means "finished"), and
   TensorBoard purges from the first iteration not yet done.
Rank 0 decides 1-3 and every rank gets the verdict, so under `torchrun` all ranks stop with the same
line (none hangs in a collective). SIGINT / SIGTERM set a flag that the ranks agree on at the next
step boundary; the loop checkpoints there and the command exits 130 / 143.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import dump, flat_diff, from_dict, read_yaml, to_dict
from resnetlab.errors import UserError
from resnetlab.utils import checkpoint
from resnetlab.utils import distributed as dist

# Keys that change where and how a run is carried out or reported, never its result: `reproduce`
# reuses a finished run whose config differs from the requested one in these keys only.
PLACE_KEYS = frozenset(
    {
        "train.device",
        "train.compile",
        "train.compile_mode",
        "train.log_every",
        "train.checkpoint_every",
        "train.eval_batch_size",
        "data.dir",
        "data.download",
        "data.workers",
    }
)
# Keys that may differ between a run and its `--resume`: those above, and how long it runs and how
# often it evaluates. Anything else is a different run.
RESUMABLE_KEYS = PLACE_KEYS | {"train.max_iters", "train.eval_every", "train.eval_max_images"}
LOCK = ".lock"


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""


@dataclasses.dataclass(frozen=True)
class Due:
    """What a finished step calls for (`Run.after_step`)."""

    log: bool
    eval: bool
    checkpoint: bool
    stop: bool


class Run:
    """The handle a loop gets from `open_run`: where to write, what to resume from, when to stop."""

    def __init__(self, cfg: Any, out: Path, info: dist.DistInfo, device: torch.device, quiet: bool = False) -> None:
        self.cfg, self.out, self.info, self.device = cfg, out, info, device
        self.quiet = quiet  # no progress bar (there is none off a terminal either)
        self.checkpoint: dict[str, Any] | None = None  # the training checkpoint to continue from
        self.start_iter = 0
        self.last_checkpoint: int | None = None  # iteration of the newest checkpoint.pt on disk
        self.stopped: str | None = None  # "SIGINT" / "SIGTERM" once the ranks agreed to stop
        self.elapsed_before = 0.0  # training seconds of the run before this process resumed it
        self.bar = None  # the progress bar while `steps()` is open
        self._t0: float | None = None
        self._writer = None
        self._signals = _StopSignal(info)

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal number (130 SIGINT, 143 SIGTERM) for a run stopped by a signal."""
        return 128 + int(getattr(signal, self.stopped)) if self.stopped else 0

    # ---- during the run ----------------------------------------------------------------------

    @contextlib.contextmanager
    def steps(self, desc: str | None = None) -> Iterator[Any]:
        """The training steps' progress bar (tqdm, rank 0) and the run's clock, started here."""
        self.bar = progress_bar(self.cfg.train.max_iters, self, desc)
        self._t0 = time.perf_counter()
        try:
            yield self.bar
        finally:
            self.bar.close()

    def elapsed(self) -> float:
        """Training seconds so far, the resumed run's included (data and model building left out)."""
        return self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def after_step(self, it: int) -> Due:
        """Call on every rank once iteration `it` (counted from 1) is done: what is due now. Every
        `train.log_every` / `eval_every` / `checkpoint_every` iterations and at the last one; a
        checkpoint and a stop when a signal arrived (SIGINT / SIGTERM, agreed across ranks)."""
        t = self.cfg.train
        if self.bar is not None:
            self.bar.update(1)
        last = it == t.max_iters
        stop = self.stop_requested()
        return Due(
            log=it % t.log_every == 0 or last,
            eval=it % t.eval_every == 0 or last,
            checkpoint=it % t.checkpoint_every == 0 or last or stop,
            stop=stop,
        )

    def parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` under DistributedDataParallel when the run has several processes (gradients averaged
        over them; BN statistics stay per process, as in the paper), else `model` itself."""
        if not self.info.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def record(self, model: torch.nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
        """What rebuilds the network: its weights, the run's config and the loop's meta."""
        return {"model": model.state_dict(), "config": to_dict(self.cfg), "meta": meta}

    def state(
        self, model: torch.nn.Module, meta: dict[str, Any], optimizer: torch.optim.Optimizer, **loop: Any
    ) -> dict[str, Any]:
        """A training checkpoint: `record`, the optimizer, the loop's own entries (schedule, meters,
        ...), every rank's RNG state and the elapsed time. Call on every rank (it gathers RNGs)."""
        return {
            **self.record(model, meta),
            "optimizer": optimizer.state_dict(),
            **loop,
            "rng": gather_rng_states(self),  # each rank draws its own stream
            "elapsed": self.elapsed(),
        }

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Weights, optimizer and RNG states from `checkpoint` (call after the loop's own entries:
        the RNGs are set last, as they were when the checkpoint was written)."""
        assert self.checkpoint is not None
        model.load_state_dict(self.checkpoint["model"])
        optimizer.load_state_dict(self.checkpoint["optimizer"])
        restore_rng_states(self, self.checkpoint["rng"])

    def end(self, it: int, final: dict[str, Any]) -> None:
        """After the loop: a run stopped by a signal prints its one line (its checkpoint is on disk);
        a finished one writes `final` (`record` and more) as final.pt."""
        if self.stopped:
            self.announce_stop(it)
        else:
            self.finish({**final, "iteration": it})

    def log(self, it: int, scalars: dict[str, float], row: dict[str, Any] | None = None) -> None:
        """TensorBoard scalars at step `it` and, with `row`, one line of metrics.jsonl (rank 0)."""
        if not self.is_main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only where it is used

            # Purge what a killed run logged after its checkpoint: the first step not yet done.
            self._writer = SummaryWriter(str(self.out / "tb"), purge_step=self.start_iter + 1)
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, it)
        if row is not None:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def check_finite(self, losses: list[float], first_iter: int) -> None:
        """NonFiniteLoss naming the iteration of the first NaN / inf in `losses` (iterations
        `first_iter`, `first_iter + 1`, ...). Pass values already reduced over ranks so all stop."""
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                if self.last_checkpoint is None:
                    kept = "no checkpoint was written yet, so the same command starts the run again"
                else:
                    kept = f"the last good checkpoint (iteration {self.last_checkpoint}) was kept"
                raise NonFiniteLoss(
                    f"loss is {value} at iteration {first_iter + i}; training stopped, {kept} "
                    "(lower optim.lr or set a warm-up)"
                )

    def stop_requested(self) -> bool:
        """Call once per step on every rank: True at the step boundary where all ranks stop."""
        self.stopped = self._signals.poll()
        return self.stopped is not None

    def announce_stop(self, it: int) -> None:
        """The one line a signal-stopped run prints (rank 0)."""
        if self.is_main:
            print(f"{self.stopped}: stopped at iteration {it}; checkpoint saved. Continue: --resume --out {self.out}")

    def save_checkpoint(self, state: dict[str, Any], iteration: int) -> None:
        """`state` (with "model", "config", "meta", "optimizer", ...) as OUT/checkpoint.pt, atomically,
        by rank 0; every rank waits for it."""
        if self.is_main:
            checkpoint.save_atomic({**state, "iteration": iteration}, self.out / "checkpoint.pt")
        self.last_checkpoint = iteration
        dist.barrier()

    def finish(self, final: dict[str, Any]) -> None:
        """OUT/final.pt, written last: its presence means the run finished."""
        if self.is_main:
            checkpoint.save_atomic(final, self.out / "final.pt")
        dist.barrier()

    def close(self) -> None:
        self._signals.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@contextlib.contextmanager
def open_run(cfg: Any, out: str | Path, *, resume: bool, quiet: bool = False) -> Iterator[Run]:
    """Join the process group (under torchrun), claim `out` and decide where the run starts (see the
    module docstring); on exit release the lock, restore the signal handlers, leave the group.
    `quiet`: no progress bar."""
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    info, device = dist.init_distributed(cfg.train.device)
    out = Path(out)
    lock_fd = None
    run = None
    try:
        verdict: str | None = None
        if info.is_main:
            try:
                lock_fd = _claim(out)
                _check_folder(cfg, out, resume)
            except UserError as e:
                verdict = str(e)
        verdict = dist.broadcast_object(verdict)  # type: ignore[assignment]
        if verdict is not None:
            raise UserError(verdict)
        run = Run(cfg, out, info, device, quiet)
        ckpt_path = out / "checkpoint.pt"
        if resume and ckpt_path.is_file():
            run.checkpoint = checkpoint.load(ckpt_path, map_location=device)  # rank 0 checked it
            run.start_iter = run.last_checkpoint = int(run.checkpoint["iteration"])
            run.elapsed_before = float(run.checkpoint.get("elapsed", 0.0))
        if info.is_main:
            _prepare_folder(cfg, out, run.start_iter)
        dist.barrier()
        with _lost_peers(run):
            yield run
    finally:
        if run is not None:
            run.close()
        if lock_fd is not None:
            os.close(lock_fd)  # releases the flock
        if not was_initialized:
            dist.cleanup()


# ---- the folder ------------------------------------------------------------------------------------


def _claim(out: Path) -> int:
    """Create `out` if needed and take its lock; UserError if it cannot be written or is in use."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise UserError(f"--out {out}: a file is in the way (a run folder must be a directory)") from None
    except NotADirectoryError:
        raise UserError(f"--out {out}: a file is in the way of the folder path") from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(
            f"--out {out} is in use by {holder}; wait for that run to end or choose another --out"
        ) from None
    if not os.access(out, os.W_OK):
        os.close(fd)
        raise UserError(f"--out {out}: cannot write there (permission denied)")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (started {started})\n".encode(), 0)
    return fd


def _check_folder(cfg: Any, out: Path, resume: bool) -> None:
    """UserError unless the folder's state fits the request (new run / --resume)."""
    ckpt_path, final = out / "checkpoint.pt", out / "final.pt"
    if not resume:
        for path in (ckpt_path, final):
            if path.exists():
                raise UserError(
                    f"{out} already holds a run ({path.name}); pass --resume to continue it or choose another --out"
                )
        return
    if not ckpt_path.exists():
        if not (out / "config.yaml").is_file():
            raise UserError(f"--resume: {out} holds no run to resume (no checkpoint.pt, no config.yaml)")
        compare_configs(read_yaml(out / "config.yaml"), cfg, out)
        return  # started but never checkpointed: start again from iteration 0
    ckpt = checkpoint.load(ckpt_path)
    if "iteration" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"{ckpt_path} is a weights file, not a training checkpoint; cannot resume from it")
    compare_configs(ckpt["config"], cfg, out)
    reached = int(ckpt["iteration"])
    if cfg.train.max_iters < reached:
        raise UserError(
            f"--resume: the run in {out} reached iteration {reached}; train.max_iters={cfg.train.max_iters} "
            f"is below it (give train.max_iters >= {reached})"
        )


def config_diff(saved: dict[str, Any], cfg: Any, *, allowed: frozenset[str] = RESUMABLE_KEYS) -> str | None:
    """None if the stored config `saved` and `cfg` agree outside `allowed`, else the differences in
    one line: `optim.lr: 0.1 there, 0.2 now; train.seed: 0 there, 3 now`."""
    try:  # through the loader: old key names migrate, keys added since take their defaults
        saved = to_dict(from_dict(saved, base=type(cfg)()))
    except UserError:
        pass  # a key that no longer exists: compare as stored (it shows in the diff)
    diff = [(k, a, b) for k, a, b in flat_diff(saved, to_dict(cfg)) if k not in allowed]
    return "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff) or None


def compare_configs(saved: dict[str, Any], cfg: Any, out: Path) -> None:
    """UserError with a one-line diff if `saved` and `cfg` differ outside RESUMABLE_KEYS."""
    changes = config_diff(saved, cfg)
    if changes:
        raise UserError(
            f"{out} holds a different run: {changes} (on --resume only {', '.join(sorted(RESUMABLE_KEYS))} "
            "may change; choose another --out for a new run)"
        )


def _prepare_folder(cfg: Any, out: Path, start_iter: int) -> None:
    """config.yaml, metrics.jsonl up to `start_iter`, no final.pt unless the run is already done."""
    tmp = out / ".config.yaml.tmp"
    dump(cfg, tmp)
    os.replace(tmp, out / "config.yaml")
    truncate_metrics(out / "metrics.jsonl", start_iter)
    if start_iter < cfg.train.max_iters:
        (out / "final.pt").unlink(missing_ok=True)


def truncate_metrics(path: Path, upto_iter: int) -> None:
    """Drop rows logged after iteration `upto_iter` (they will be redone), and any torn last line."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iter"] <= upto_iter:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line half-written when the process died
    path.write_text("".join(line + "\n" for line in keep))


# ---- signals, lost peers -----------------------------------------------------------------------------


class _StopSignal:
    """SIGTERM / SIGINT set a flag; `poll()` returns the agreed signal name at a step boundary.

    With many processes each rank posts its flag (the signal number, 0 for none) in an asynchronous
    all-reduce (max) on a CPU-side gloo group and reads the result one step later, so no step waits on
    it and every rank stops at the same iteration. A second Ctrl-C falls through to Python's default.
    """

    def __init__(self, info: dist.DistInfo) -> None:
        self.info = info
        self.signum = 0
        self._previous: dict[int, Any] = {}
        self._pending = None
        self._vote = None
        self._group = dist.cpu_group() if info.enabled else None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = max(self.signum, signum)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def poll(self) -> str | None:
        agreed = self.signum
        if self.info.enabled:
            agreed = 0
            if self._pending is not None:
                self._pending.wait()
                agreed = int(self._vote.item())
            self._vote = torch.tensor([self.signum], dtype=torch.int64)
            self._pending = torch.distributed.all_reduce(
                self._vote, op=torch.distributed.ReduceOp.MAX, group=self._group, async_op=True
            )
        return signal.Signals(agreed).name if agreed else None

    def close(self) -> None:
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending.wait()
            self._pending = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@contextlib.contextmanager
def _lost_peers(run: Run) -> Iterator[None]:
    """A collective that fails because another process died becomes one line (no traceback)."""
    try:
        yield
    except torch.distributed.DistError as e:
        raise UserError(_lost_message(run, e)) from None
    except RuntimeError as e:
        if run.info.enabled and any(s in str(e) for s in ("gloo", "Connection", "NCCL", "closed", "timed out")):
            raise UserError(_lost_message(run, e)) from None
        raise


def _lost_message(run: Run, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = (
        f"the last checkpoint is at iteration {run.last_checkpoint}: the same command with --resume continues it"
        if run.last_checkpoint is not None
        else "no checkpoint was written yet: the same command starts the run again"
    )
    return f"rank {run.info.rank}: lost contact with another process of this run ({first[:160]}); {where}"


def progress_bar(total: int, run: Run, desc: str | None = None):
    """The steps' bar (`utils.progress.step_bar`): rank 0, from the resumed iteration, on a terminal and
    without `quiet` only; the evaluation lines are printed either way."""
    from resnetlab.utils.progress import step_bar

    return step_bar(total, initial=run.start_iter, desc=desc, quiet=run.quiet or not run.is_main)


# ---- RNG state (exact resume) ----------------------------------------------------------------------


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
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


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
