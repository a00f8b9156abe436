"""The paper's test protocols (center, 10-crop, multi-scale fully-convolutional), ensembles, predict,
and interop (torchvision weights in, ONNX / TorchScript out)."""

from resnetlab.evaluate.checkpoints import LoadedModel, load_model, load_models
from resnetlab.evaluate.export import export_checkpoint, import_weights
from resnetlab.evaluate.predict import predict
from resnetlab.evaluate.protocols import (
    PAPER_SCALES,
    PROTOCOLS,
    ensemble_probs,
    fully_convolutional_logits,
    multiscale_probs,
    ten_crop,
)
from resnetlab.evaluate.run import evaluate_checkpoints

__all__ = [
    "PAPER_SCALES",
    "PROTOCOLS",
    "LoadedModel",
    "ensemble_probs",
    "evaluate_checkpoints",
    "export_checkpoint",
    "fully_convolutional_logits",
    "import_weights",
    "load_model",
    "load_models",
    "multiscale_probs",
    "predict",
    "ten_crop",
]
