"""One run of a `reproduce` grid in its own process (one per GPU): `python -m resnetlab.analysis.worker
CONFIG.yaml OUT_DIR [--resume] [--no-tf32]`. The parent sets CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetlab.config import from_dict, read_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnetlab.analysis.worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-tf32", action="store_true", help="fp32 convolutions and matmuls in full fp32")
    args = parser.parse_args(argv)
    from resnetlab.analysis.reproduce import no_tf32
    from resnetlab.train import run_training

    if args.no_tf32:
        no_tf32()
    cfg = from_dict(read_yaml(args.config))
    run_training(cfg, args.out_dir, resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
