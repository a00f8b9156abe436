"""Faster R-CNN with our ResNets (sec. 4.3, appendix A): models, VOC/COCO data, metrics, training."""

from resnetlab.detection.config import DetectionConfig, list_detection_presets, load_detection_config
from resnetlab.detection.models import build_detector, freeze_batchnorm, read_pretrained

__all__ = [
    "DetectionConfig",
    "build_detector",
    "freeze_batchnorm",
    "list_detection_presets",
    "load_detection_config",
    "read_pretrained",
]
