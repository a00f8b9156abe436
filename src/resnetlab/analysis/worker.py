"""One run of a `reproduce` grid in its own process (one per GPU): `python -m resnetlab.analysis.worker
CONFIG.yaml OUT_DIR [--resume]`. The parent sets CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetlab.config import from_dict, read_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnetlab.analysis.worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    from resnetlab.train import run_training

    cfg = from_dict(read_yaml(args.config))
    run_training(cfg, args.out_dir, resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
