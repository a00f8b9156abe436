# ResNet-56 of the same grid, with the paper's 110-layer warm-up (lr 0.01 until training error < 80%).
from resnetlab.runner.plan import plan  # resnetlab.analysis.reproduce when this ran
from resnetlab.runner.pool import run_jobs

jobs = plan(
    "degradation",
    out="runs/reproduce/degradation-warmup56",
    dataset="fashion-mnist",
    schedule_name="short",
    iters=120,
    eval_every=30,
    device="cpu",
    overrides=["data.val_split=2000", "optim.warmup_lr=0.01"],
)
run_jobs([j for j in jobs if j.name == "resnet56-seed0"])
