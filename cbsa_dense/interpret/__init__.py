"""Interpretability: capture CBSA extraction matrices and turn them into pictures and scores."""

from cbsa_dense.interpret.capture import CapturedExtraction, capture_extractions, token_affinity

__all__ = ["CapturedExtraction", "capture_extractions", "token_affinity"]
