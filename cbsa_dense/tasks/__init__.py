"""LightningModules (systems): they own losses, metrics and optimization, and assemble their model the same
way: an encoder that declares its outputs, and head (and neck) factories built from them."""

from cbsa_dense.tasks.base import BaseTask
from cbsa_dense.tasks.detection import DetectionTask
from cbsa_dense.tasks.schedulers import WarmupCosineLR, WarmupPolyLR, WarmupStepLR
from cbsa_dense.tasks.segmentation import SegmentationTask
from cbsa_dense.tasks.sliding_window import SlidingWindowInference

__all__ = ["BaseTask", "DetectionTask", "SegmentationTask", "SlidingWindowInference", "WarmupCosineLR",
           "WarmupPolyLR", "WarmupStepLR"]
