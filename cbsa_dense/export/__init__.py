"""Export trained checkpoints for deployment (ONNX, TorchScript) with a parity check."""

from cbsa_dense.export.exporter import ExportResult, export_checkpoint
from cbsa_dense.export.wrappers import DeployedDetector, DeployedSegmenter

__all__ = ["DeployedDetector", "DeployedSegmenter", "ExportResult", "export_checkpoint"]
