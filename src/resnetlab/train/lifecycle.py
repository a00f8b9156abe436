"""A training run's life in its folder, the same for every loop (`train`, `detect train`, `reproduce`).

    with open_run(cfg, out, resume=resume) as run:
        ... build data and model; if run.checkpoint: run.restore(model, opt, load_loop_entries)
                                                      # then, only then, the folder is prepared
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
1. `--out` is a folder this process can write (a file in the way, a read-only folder, a name too
   long: one line). Claim first, then look: the folders are made and the lock taken before anything
   in the folder is read, so a process that loses the race for a new folder never touches it.
2. An exclusive lock (`OUT/.lock`, `fcntl.flock`) held by rank 0 for the run's life; a second process
   on the same folder stops at once with one line naming the holder (host, pid, start time). The lock
   dies with its process, so a killed run never leaves a stale lock.
3. The folder's state matches the request: a new run refuses a folder that holds one (`checkpoint.pt`
   or `final.pt`); `--resume` compares the stored config with the requested one and refuses any
   difference outside `RESUMABLE_KEYS` with a one-line diff, and refuses a `train.max_iters` below the
   iteration the run reached. A folder whose run died before its first checkpoint holds no run: the
   same command starts it again. A directory where a run's file belongs is one line.
4. Nothing in the folder changes until the checkpoint has been read, checked and restored (the loop's
   `run.restore`; a checkpoint that does not restore is one line and the folder stays as it was). Only
   then `config.yaml` is written (the config was validated when it was loaded), `metrics.jsonl` loses
   the rows after the checkpoint, `final.pt` goes (its presence means "finished"), temp files that a
   killed checkpoint write left are removed, and TensorBoard purges from the first iteration not yet done.
5. A run that fails before it saved anything (no checkpoint, no metrics) leaves nothing behind: the
   folders it made are removed (the run folder and the parents it created), and a lock file it made
   in a folder that existed goes too; all while the lock is held.
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
import shlex
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import Config, dump, flat_diff, from_dict, read_yaml, to_dict
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
        self.prepared = False  # the folder brought to `start_iter` (after the checkpoint was restored)
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
        self.prepare()  # a loop that restored nothing: the folder is brought to `start_iter` now
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

    def restore(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loop_state: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """The loop's own entries (`loop_state(checkpoint)`), then weights, optimizer and RNG states
        from `checkpoint` (the RNGs last, as they were when the checkpoint was written); then the folder
        is prepared. A checkpoint that does not fit (an entry missing, another network, another
        optimizer) is a one-line UserError naming it, and the folder is left as it was."""
        assert self.checkpoint is not None
        with self.restoring():
            if loop_state is not None:
                loop_state(self.checkpoint)
            model.load_state_dict(self.checkpoint["model"])
            optimizer.load_state_dict(self.checkpoint["optimizer"])
            restore_rng_states(self, self.checkpoint["rng"])
        self.prepare()

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Errors of reading the checkpoint's entries into the run become one line naming it."""
        try:
            yield
        except RESTORE_ERRORS as e:
            raise UserError(_restore_message(self, e)) from None

    def prepare(self) -> None:
        """Bring the folder to `start_iter` (once; every rank calls it, rank 0 writes): see step 4 of
        the module docstring."""
        if self.prepared:
            return
        if self.is_main:
            _prepare_folder(self.cfg, self.out, self.start_iter)
        self.prepared = True
        dist.barrier()

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
            try:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:
                raise UserError(f"cannot write {self.out / 'metrics.jsonl'}: {e.strerror or e}") from None

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
            again = resume_command(self.cfg, self.out)
            print(f"{self.stopped}: stopped at iteration {it}; checkpoint saved. Continue: {again}")

    def save_checkpoint(self, state: dict[str, Any], iteration: int) -> None:
        """`state` (with "model", "config", "meta", "optimizer", ...) as OUT/checkpoint.pt, atomically,
        by rank 0; every rank waits for it."""
        if self.is_main:
            try:
                checkpoint.save_atomic({**state, "iteration": iteration}, self.out / "checkpoint.pt")
            except UserError as e:  # a full disk: say what is kept and how to go on
                if self.last_checkpoint is None:
                    kept = "no checkpoint was written yet"
                else:
                    kept = f"the checkpoint of iteration {self.last_checkpoint} is kept: free space, then --resume"
                raise UserError(f"{e}; {kept}") from None
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


def resume_command(cfg: Any, out: Path) -> str:
    """The command that continues the run in `out`, ready to paste. `train --resume` reads the run's
    config.yaml by itself; `detect train` is given it as its preset."""
    if isinstance(cfg, Config):
        return f"resnetlab train --out {shlex.quote(str(out))} --resume"
    preset = shlex.quote(str(out / "config.yaml"))
    return f"resnetlab detect train --preset {preset} --out {shlex.quote(str(out))} --resume"


@contextlib.contextmanager
def open_run(cfg: Any, out: str | Path, *, resume: bool, quiet: bool = False) -> Iterator[Run]:
    """Join the process group (under torchrun), claim `out` and decide where the run starts (see the
    module docstring); on exit clear up after a run that saved nothing, release the lock, restore the
    signal handlers, leave the group. `quiet`: no progress bar."""
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    info, device = dist.init_distributed(cfg.train.device)
    out = Path(out)
    claim: _Claim | None = None
    run = None
    failed = True
    try:
        verdict: str | None = None
        checked = None  # the checkpoint rank 0 read to check it: restored from, not read again
        if info.is_main:
            try:
                claim = _claim(out)
                checked = _check_folder(cfg, out, resume, device)
            except UserError as e:
                verdict = str(e)
        verdict = dist.broadcast_object(verdict)  # type: ignore[assignment]
        if verdict is not None:
            raise UserError(verdict)
        run = Run(cfg, out, info, device, quiet)
        ckpt_path = out / "checkpoint.pt"
        if resume and ckpt_path.is_file():
            run.checkpoint = checked or checkpoint.load(ckpt_path, map_location=device)  # rank 0 checked it
            with run.restoring():
                run.start_iter = run.last_checkpoint = int(run.checkpoint["iteration"])
                run.elapsed_before = float(run.checkpoint.get("elapsed", 0.0))
        else:
            run.prepare()  # nothing to restore, nothing to lose
        with _lost_peers(run), _unrestored(run):
            yield run
        failed = False
    finally:
        if run is not None:
            run.close()
        if claim is not None:
            if failed:
                claim.clear_up()
            claim.release()
        if not was_initialized:
            dist.cleanup()


@contextlib.contextmanager
def _unrestored(run: Run) -> Iterator[None]:
    """A loop that reads the checkpoint's entries outside `Run.restore` (and so before the folder was
    prepared): a missing or malformed entry is the same one line."""
    try:
        yield
    except (KeyError, TypeError, IndexError) as e:
        if run.checkpoint is None or run.prepared:
            raise
        raise UserError(_restore_message(run, e)) from None


# Errors of torch's load_state_dict and of reading a checkpoint entry that is not there / not right.
RESTORE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


def _restore_message(run: Run, e: BaseException) -> str:
    why = f"it has no {e.args[0]!r} entry" if isinstance(e, KeyError) and e.args else " ".join(str(e).split())
    return (
        f"--resume: {run.out / 'checkpoint.pt'} cannot be restored into this run ({why[:300] or type(e).__name__}); "
        f"nothing in {run.out} was changed"
    )


# ---- the folder ------------------------------------------------------------------------------------

# The files of a run: each must be a file where it exists (a folder in its place is one line).
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "final.pt")
# What a run that saved nothing may have written: removed after it fails, unless there before.
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "data.json", "tb")


@dataclasses.dataclass
class _Claim:
    """The run folder held by this process: the lock's descriptor, the folders this process made
    (outermost first), whether it made the lock file and which of a run's entries were there before."""

    out: Path
    fd: int
    created: list[Path]
    made_lock: bool
    found: frozenset[str] = frozenset()

    def clear_up(self) -> None:
        """After a failed run, with the lock still held: if the folder holds no run (no checkpoint, no
        final weights, no metrics), remove what this process made there."""
        metrics = self.out / "metrics.jsonl"
        if any((self.out / n).exists() for n in ("checkpoint.pt", "final.pt")) or (
            metrics.is_file() and metrics.stat().st_size
        ):
            return  # what --resume continues
        if self.out in self.created:
            shutil.rmtree(self.out, ignore_errors=True)
        else:  # a folder that was there: only the entries this run added go
            added = [name for name in RUN_ENTRIES if name not in self.found] + [LOCK] * self.made_lock
            for name in added:
                path = self.out / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        _remove_empty(self.created)

    def release(self) -> None:
        os.close(self.fd)  # releases the flock


def _remove_empty(folders: list[Path]) -> None:
    """rmdir `folders` innermost first; stops at the first that is not empty (never removes content)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def _claim(out: Path) -> _Claim:
    """Make `out` (noting which folders this process made) and take its lock; UserError if it cannot
    be written or is in use. The lock is verified to be the file at OUT/.lock after it is taken: a
    holder that failed may remove the folder (see `_Claim.clear_up`) between our open and our lock."""
    created: list[Path] = []
    try:
        for _ in range(10):
            created += _make_folders(out)
            fd, made_lock = _open_lock(out / LOCK)
            if fd is None:
                continue  # the folder went away under us: make it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                _remove_empty(created)  # only empty ones: the holder's files are never touched
                raise UserError(
                    f"--out {out} is in use by {holder}; wait for that run to end or choose another --out"
                ) from None
            if _same_file(fd, out / LOCK):
                break
            os.close(fd)  # we locked a file that its holder removed on failing: take the new one
        else:
            raise UserError(f"--out {out}: cannot take its lock (the folder keeps disappearing)")
    except FileExistsError:
        raise UserError(f"--out {out}: a file is in the way (a run folder must be a directory)") from None
    except NotADirectoryError:
        raise UserError(f"--out {out}: a file is in the way of the folder path") from None
    except OSError as e:
        _remove_empty(created)
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    claim = _Claim(out, fd, created, made_lock, frozenset(n for n in RUN_ENTRIES if os.path.lexists(out / n)))
    if not os.access(out, os.W_OK):
        claim.clear_up()
        claim.release()
        raise UserError(f"--out {out}: cannot write there (permission denied)")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (started {started})\n".encode(), 0)
    return claim


def _make_folders(out: Path) -> list[Path]:
    """mkdir `out` and its missing parents one by one; the ones this process made (a folder made by
    another process at the same moment is theirs: `mkdir` tells which one made it)."""
    missing = []
    p = out
    while not p.exists() and p != p.parent:  # os.stat: a name too long raises here
        missing.append(p)
        p = p.parent
    if not missing and not out.is_dir():
        raise FileExistsError(out)
    made = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        made.append(p)
    return made


def _open_lock(path: Path) -> tuple[int | None, bool]:
    """(descriptor, made by us) for the lock file; (None, False) if its folder vanished meanwhile."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        pass
    except FileNotFoundError:
        return None, False
    try:
        return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        return None, False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _check_folder(cfg: Any, out: Path, resume: bool, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """UserError unless the folder's state fits the request (new run / --resume); the checkpoint it
    read (on `device`) when it resumes from one, else None."""
    ckpt_path, final = out / "checkpoint.pt", out / "final.pt"
    for name in RUN_FILES:
        if (out / name).exists() and not (out / name).is_file():
            raise UserError(
                f"{out / name} is not a file (a run writes its {name} there); move it away or choose another --out"
            )
    if (out / "tb").exists() and not (out / "tb").is_dir():
        raise UserError(f"{out / 'tb'} is not a folder (a run writes TensorBoard events there); move it away")
    if not resume:
        for path in (ckpt_path, final):
            if path.exists():
                raise UserError(
                    f"{out} already holds a run ({path.name}); pass --resume to continue it or choose another --out"
                )
        return None
    if not ckpt_path.exists():
        if not (out / "config.yaml").is_file():
            raise UserError(f"--resume: {out} holds no run to resume (no checkpoint.pt, no config.yaml)")
        compare_configs(read_yaml(out / "config.yaml"), cfg, out)
        return None  # started but never checkpointed: start again from iteration 0
    ckpt = checkpoint.load(ckpt_path, map_location=device)
    if "iteration" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"{ckpt_path} is a weights file, not a training checkpoint; cannot resume from it")
    compare_configs(ckpt["config"], cfg, out)
    reached = int(ckpt["iteration"])
    if cfg.train.max_iters < reached:
        raise UserError(
            f"--resume: the run in {out} reached iteration {reached}; train.max_iters={cfg.train.max_iters} "
            f"is below it (give train.max_iters >= {reached})"
        )
    return ckpt


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
    """config.yaml, metrics.jsonl up to `start_iter`, no final.pt unless the run is already done, no
    temp file of a killed checkpoint write."""
    checkpoint.remove_stale_temps(out, ("checkpoint.pt", "final.pt"))
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
    it and every rank stops at the same iteration. A second one falls through to Python's default.
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
        signal.signal(signum, self._second(signum))

    def _second(self, signum: int) -> Any:
        """What a second signal meets: the handler below every run's (K runs in one process each set
        one: the next one down would only set its flag again), and for a Ctrl-C that was ignored before
        (a process a shell started with `&`), Python's own: a second Ctrl-C stops at once."""
        previous = self._previous.get(signum)
        while isinstance(getattr(previous, "__self__", None), _StopSignal):
            previous = previous.__self__._previous.get(signum)
        if previous in (None, signal.SIG_IGN):
            return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        return previous

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
