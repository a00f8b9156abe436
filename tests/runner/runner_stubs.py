"""Stand-ins for `run_training` in the runner's tests: they write the files a run leaves, at once."""

import json
from pathlib import Path

from resnetlab.config import Config, ModelConfig, dump, to_dict
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic


def tiny_config(kind, depth):
    return Config(model=ModelConfig(name=f"cifar_{kind}{depth}"))


class StubTrainer:
    """Stands in for run_training: records calls, writes the files a run leaves; `kill` names runs
    that die after their first checkpoint (once)."""

    def __init__(self, kill=()):
        self.calls, self.kill = [], set(kill)

    def __call__(self, cfg, out_dir, *, resume=False):
        out_dir = Path(out_dir)
        self.calls.append((out_dir.name, resume))
        out_dir.mkdir(parents=True, exist_ok=True)
        dump(cfg, out_dir / "config.yaml")
        meta = {"model": cfg.model.name, "model_options": {"num_classes": 10, "in_channels": 1}}
        save_atomic({"model": {}, "config": to_dict(cfg), "meta": meta}, out_dir / "checkpoint.pt")
        if out_dir.name in self.kill:
            self.kill.discard(out_dir.name)
            raise KeyboardInterrupt  # killed mid-run: checkpoint.pt but no final.pt
        seed = cfg.train.seed
        rows = [{"iter": cfg.train.max_iters, "train_error": 1.0 + seed, "test_error": 10.0 + seed}]
        (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        model = create_model(cfg.model.name, num_classes=10, in_channels=1)
        save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "meta": meta}, out_dir / "final.pt")


class SlowTrainer(StubTrainer):
    """A run that trains until SIGTERM, as the real loop does: its handler (set up `late` s after the
    run starts) asks for a stop, the run checkpoints and returns {"interrupted": "SIGTERM"}."""

    def __init__(self, late=0.0):
        super().__init__()
        self.late, self.stopped = late, False

    def __call__(self, cfg, out_dir, *, resume=False):
        import signal
        import time

        if self.stopped:  # the next window: every run finishes at once
            return super().__call__(cfg, out_dir, resume=resume)
        self.calls.append((Path(out_dir).name, resume))
        self.stopped = True
        time.sleep(self.late)
        stop = []
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        try:
            t0 = time.monotonic()
            while not stop:
                assert time.monotonic() - t0 < 30, "no SIGTERM came"
                time.sleep(0.01)
        finally:
            signal.signal(signal.SIGTERM, previous)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        dump(cfg, Path(out_dir) / "config.yaml")
        (Path(out_dir) / "checkpoint.pt").write_bytes(b"")
        return {"interrupted": "SIGTERM"}
