"""Deployment wrappers: raw RGB images in [0, 1] in, predictions out, normalization baked in."""

from __future__ import annotations

from torch import Tensor, nn

from cbsa_dense.interpret.inputs import unit_mean_std


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        mean, std = unit_mean_std(mean, std)                  # given in [0, 1] or [0, 255] units
        self.register_buffer("mean", mean[None])
        self.register_buffer("std", std[None])

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class DeployedSegmenter(_Normalized):
    """``images (B, 3, H, W)`` RGB float in [0, 1] -> class logits ``(B, C, H, W)``."""

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.normalize(images))


class DeployedDetector(_Normalized):
    """``images (1, 3, H, W)`` RGB float in [0, 1] -> ``boxes (N, 4)`` xyxy pixels, ``scores (N,)``,
    ``labels (N,)`` (contiguous class indices; map them with the sidecar's ``category_ids``)."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = (images.shape[-2], images.shape[-1])
        detections = self.model(self.normalize(images), [size])[0]
        return detections["boxes"], detections["scores"], detections["labels"]
