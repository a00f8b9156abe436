"""Analyses of the paper: error curves (figs. 1/4/6), layer responses (fig. 7), table 6, and the
report of a finished `reproduce` grid (`report`). The runner that trains the grids is `resnetlab.runner`.

The names below are imported on first use (PEP 562): importing the package imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ResponseMeter": "responses",
    "layer_responses": "responses",
    "response_layers": "responses",
    "Run": "runs",
    "load_run": "runs",
    "model_label": "runs",
    "parse_model_name": "runs",
    "best_mean_std": "table",
    "format_best_mean_std": "table",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'resnetlab.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"resnetlab.analysis.{_WHERE[name]}"), name)
