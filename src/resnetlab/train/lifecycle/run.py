"""The `Run` handle a loop gets from `open_run`: where to write, what to resume from, what is due
after each step (log, evaluate, checkpoint, stop), and the end of the run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import Config, to_dict
from resnetlab.errors import UserError, one_line
from resnetlab.train.lifecycle.claim import Claim, claim_folder
from resnetlab.train.lifecycle.resume import branch_folder, check_branch, check_folder, prepare_folder
from resnetlab.train.lifecycle.rng import gather_rng_states, restore_rng_states
from resnetlab.train.lifecycle.signals import StopSignal, lost_peers
from resnetlab.utils import checkpoint
from resnetlab.utils import distributed as dist


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
        self._signals = StopSignal(info)

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
        if self.start_iter and self.is_main:  # where a resumed run's log continues (`reproduce --status` reads it)
            self.bar.write(f"resumed at iteration {self.start_iter} from {self.out / 'checkpoint.pt'}")
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
        checkpoint and a stop when a signal arrived (SIGINT / SIGTERM, agreed across ranks) before the
        last step (one that arrives during it lets the run finish)."""
        t = self.cfg.train
        if self.bar is not None:
            self.bar.update(1)
        last = it == t.max_iters
        stop = self.stop_requested()  # polled on every step: under torchrun every rank takes part
        if last:  # a signal during the last step: the run is done, and it finishes (final.pt)
            self.stopped, stop = None, False
        return Due(
            log=it % t.log_every == 0 or last,
            eval=it % t.eval_every == 0 or last,
            checkpoint=it % t.checkpoint_every == 0 or last or stop or it in t.keep_checkpoints,
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
        """Bring the folder to `start_iter` (once; every rank calls it, rank 0 writes): step 4 of
        "Nothing lost" in docs/train.md."""
        if self.prepared:
            return
        if self.is_main:
            prepare_folder(self.cfg, self.out, self.start_iter)
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
                if iteration in self.cfg.train.keep_checkpoints:
                    checkpoint.link_atomic(self.out / "checkpoint.pt", self.out / f"checkpoint-{iteration}.pt")
            except UserError as e:  # a full disk: say what is kept and how to go on
                if self.last_checkpoint is None:
                    kept = "no checkpoint was written yet"
                else:
                    kept = f"the checkpoint of iteration {self.last_checkpoint} is kept: free space, then --resume"
                raise UserError(f"{one_line(e)}; {kept}") from None
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


def start_branch(cfg: Any, out: str | Path, source: str | Path) -> int:
    """A new run folder `out` for `cfg` that continues from another run's training checkpoint `source`
    (`check_branch`: the same run up to that checkpoint's iteration, which is returned): `--resume`
    (`run_training(resume=True)`) then trains it. Under the folder's lock; nothing is written unless
    every check passed. Call in one process (rank 0 under torchrun, before the others open the run)."""
    out, source = Path(out), Path(source)
    claim = claim_folder(out)
    made = False
    try:
        check_folder(cfg, out, resume=False)
        reached = int(check_branch(cfg, source)["iteration"])
        branch_folder(source, out, reached)
        prepare_folder(cfg, out, reached)
        made = True
    finally:
        if not made:
            claim.clear_up()
        claim.release()
    print(f"branch: {out} starts from {source} (iteration {reached})")
    return reached


@contextlib.contextmanager
def open_run(cfg: Any, out: str | Path, *, resume: bool, quiet: bool = False) -> Iterator[Run]:
    """Join the process group (under torchrun), claim `out` and decide where the run starts (steps 1-3
    of "Nothing lost" in docs/train.md); on exit clear up after a run that saved nothing, release the lock, restore the
    signal handlers, leave the group. `quiet`: no progress bar."""
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    info, device = dist.init_distributed(cfg.train.device)
    out = Path(out)
    claim: Claim | None = None
    run = None
    failed = True
    try:
        verdict: str | None = None
        checked = None  # the checkpoint rank 0 read to check it: restored from, not read again
        if info.is_main:
            try:
                claim = claim_folder(out)
                checked = check_folder(cfg, out, resume, device)
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
        with lost_peers(run), _unrestored(run):
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


def progress_bar(total: int, run: Run, desc: str | None = None):
    """The steps' bar (`utils.progress.step_bar`): rank 0, from the resumed iteration, on a terminal and
    without `quiet` only; the evaluation lines are printed either way."""
    from resnetlab.utils.progress import step_bar

    return step_bar(total, initial=run.start_iter, desc=desc, quiet=run.quiet or not run.is_main)
