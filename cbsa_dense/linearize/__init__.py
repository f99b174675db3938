"""Linearizing a pretrained softmax ViT into CBSA: diagnosis against the softmax teacher, closed-form
calibration of the step sizes, and attention transfer (docs/finetuning.md has the measurements)."""

from cbsa_dense.linearize.calibrate import calibrate_step_sizes
from cbsa_dense.linearize.diagnose import Diagnosis, diagnose
from cbsa_dense.linearize.run import LinearizeReport, LinearizeSettings, linearize_encoder
from cbsa_dense.linearize.teacher import build_teacher, cbsa_blocks
from cbsa_dense.linearize.transfer import TransferReport, transfer_attention

__all__ = ["Diagnosis", "LinearizeReport", "LinearizeSettings", "TransferReport", "build_teacher",
           "calibrate_step_sizes", "cbsa_blocks", "diagnose", "linearize_encoder", "transfer_attention"]
