"""Datasets -> `DataBundle` (the contract in docs/DEVELOPING.md): `build_data(cfg, device)`."""

from resnetlab.data.build import DATASETS, build_data
from resnetlab.data.bundle import DataBundle, EvalSource, TrainSource

__all__ = ["DataBundle", "EvalSource", "TrainSource", "build_data", "DATASETS"]
