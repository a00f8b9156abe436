"""Training: `run_training(cfg, out_dir)` (the loop) and `make_train_step(...)` (one SGD step)."""

from resnetlab.train.loop import NonFiniteLoss, run_training
from resnetlab.train.schedule import LRSchedule
from resnetlab.train.step import autocast_dtype, evaluate_error, make_grad_scaler, make_sgd, make_train_step

__all__ = [
    "LRSchedule",
    "NonFiniteLoss",
    "autocast_dtype",
    "evaluate_error",
    "make_grad_scaler",
    "make_sgd",
    "make_train_step",
    "run_training",
]
