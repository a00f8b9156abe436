"""The paper's learning-rate rules, with their state (saved in checkpoints).

- CIFAR (sec. 4.2): 0.1, divided by 10 at 32k and 48k iterations (`multistep`).
- ImageNet (sec. 3.4): 0.1, divided by 10 "when the error plateaus". The paper does not define the
  rule; `plateau` is ours: the evaluated error (the held-out split, else the test/val set) has not beaten
  its best by more than `threshold` points for `patience` evaluations; at most `max_drops` divisions
  (2: 0.1 -> 0.001, as in fb.resnet.torch's fixed 30/60/90-epoch schedule, which is the alternative:
  `multistep` with milestones at 30 and 60 epochs).
- 110 / 1202 layers (sec. 4.2): warm up at 0.01 until the training error is below 80%, then back to
  0.1 and the same schedule (milestones stay absolute iterations). Not in the paper: if the error never
  gets below 80%, the warm-up ends at the first milestone (plateau: the first division) at the latest,
  so the schedule is never skipped; `end_warmup_if_due` says so for the log.
- Linear scaling (not in the paper; Goyal et al. 2017): lr * batch_size / base_batch_size when the
  batch differs from the recipe's.
"""

from __future__ import annotations

from typing import Any


class LRSchedule:
    def __init__(
        self,
        *,
        lr: float,
        schedule: str = "multistep",
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        patience: int = 3,
        threshold: float = 0.0,
        max_drops: int | None = None,
        warmup_lr: float | None = None,
        warmup_until_error: float = 80.0,
        scale: float = 1.0,
    ) -> None:
        self.base_lr = lr * scale
        self.warmup_lr = warmup_lr * scale if warmup_lr is not None else None
        self.schedule = schedule
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.patience = patience
        self.threshold = threshold
        self.max_drops = max_drops
        self.warmup_until_error = warmup_until_error
        # State (checkpointed):
        self.warming_up = warmup_lr is not None
        self.warmup_ended_at: int | None = None
        self.warmup_capped = False  # True: ended by the first milestone, not by the training error
        self.decays = 0  # plateau: how many times the lr was divided
        self.best_error: float | None = None
        self.bad_evals = 0

    @classmethod
    def from_config(cls, o: Any, *, batch_size: int) -> LRSchedule:
        """From an `optim` config section (`resnetlab.config.OptimConfig`) and the global batch."""
        return cls(
            lr=o.lr,
            schedule=o.schedule,
            milestones=o.milestones,
            gamma=o.gamma,
            patience=o.plateau_patience,
            threshold=o.plateau_threshold,
            max_drops=o.plateau_max_drops,
            warmup_lr=o.warmup_lr,
            warmup_until_error=o.warmup_until_error,
            scale=batch_size / o.base_batch_size if o.base_batch_size else 1.0,
        )

    def lr(self, iteration: int) -> float:
        """The learning rate for the update of (0-based) `iteration`."""
        if self.warming_up and not self._warmup_past_cap(iteration):
            return self.warmup_lr  # type: ignore[return-value]
        if self.schedule == "multistep":
            return self.base_lr * self.gamma ** sum(iteration >= m for m in self.milestones)
        return self.base_lr * self.gamma**self.decays

    def _warmup_past_cap(self, iteration: int) -> bool:
        if self.schedule == "multistep":
            return bool(self.milestones) and iteration >= self.milestones[0]
        return self.decays > 0

    def end_warmup_if_due(self, iteration: int) -> str | None:
        """Called before each iteration's update: ends a warm-up that reached the first milestone (or
        the first plateau division) with the training error still >= `warmup_until_error`, and returns
        a warning line for the log; None otherwise."""
        if not (self.warming_up and self._warmup_past_cap(iteration)):
            return None
        self.warming_up, self.warmup_ended_at, self.warmup_capped = False, iteration, True
        return (
            f"warning: the training error never got below {self.warmup_until_error:g}% during the warm-up "
            f"at lr {self.warmup_lr:g}; warm-up ended at iteration {iteration} (the first lr division), "
            f"lr now {self.lr(iteration):g}"
        )

    def observe_train_error(self, iteration: int, error: float) -> None:
        """Called with the training error (%) over the recent iterations; ends the warm-up."""
        if self.warming_up and error < self.warmup_until_error:
            self.warming_up = False
            self.warmup_ended_at = iteration

    def observe_test_error(self, error: float) -> None:
        """Called after each evaluation; the plateau rule divides the lr after `patience` evaluations
        without a new best."""
        if self.schedule != "plateau":
            return
        if self.best_error is None or error < self.best_error - self.threshold:
            self.best_error, self.bad_evals = error, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience and (self.max_drops is None or self.decays < self.max_drops):
            self.decays += 1
            self.bad_evals = 0

    _STATE = ("warming_up", "warmup_ended_at", "warmup_capped", "decays", "best_error", "bad_evals")

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, d.get(k, False) if k == "warmup_capped" else d[k])  # older checkpoints lack it
