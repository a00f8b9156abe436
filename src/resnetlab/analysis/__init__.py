"""Analyses of the paper: error curves (figs. 1/4/6), layer responses (fig. 7), table 6, and the
`reproduce` runner that trains the grids behind them."""

from resnetlab.analysis.responses import ResponseMeter, layer_responses, response_layers
from resnetlab.analysis.runs import Run, load_run, model_label, parse_model_name
from resnetlab.analysis.table import best_mean_std, format_best_mean_std

__all__ = [
    "ResponseMeter",
    "Run",
    "best_mean_std",
    "format_best_mean_std",
    "layer_responses",
    "load_run",
    "model_label",
    "parse_model_name",
    "response_layers",
]
