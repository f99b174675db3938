"""LightningModules (systems): they own losses, metrics and optimization, and assemble their model the same
way: an encoder that declares its outputs, and head (and neck) factories built from them.

The names below are imported from their modules on first use, so importing one task (a segmentation
checkpoint loads :mod:`cbsa_dense.tasks.segmentation` only) or :mod:`cbsa_dense.tasks.eval_protocol` does not
import the others (detection pulls in torchvision's detection models).
"""

from __future__ import annotations

from cbsa_dense.lazy import lazy_namespace

#: Public name -> the module defining it.
_HOMES = {
    "BaseTask": "cbsa_dense.tasks.base",
    "DetectionTask": "cbsa_dense.tasks.detection",
    "SegmentationTask": "cbsa_dense.tasks.segmentation",
    "SlidingWindowInference": "cbsa_dense.tasks.sliding_window",
    "WarmupCosineLR": "cbsa_dense.tasks.schedulers",
    "WarmupPolyLR": "cbsa_dense.tasks.schedulers",
    "WarmupStepLR": "cbsa_dense.tasks.schedulers",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_namespace(__name__, _HOMES)
