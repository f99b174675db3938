"""Lightning callbacks of the project."""

from cbsa_dense.callbacks.attention_transfer import AttentionTransfer
from cbsa_dense.callbacks.compile import CompileEncoder
from cbsa_dense.callbacks.exact_resume import ExactResume
from cbsa_dense.callbacks.explain import ExplainCallback
from cbsa_dense.callbacks.finite_loss import FiniteLossCheck, NonFiniteLossError
from cbsa_dense.callbacks.head_warmup import HeadWarmup
from cbsa_dense.callbacks.log_progress import LogProgress
from cbsa_dense.callbacks.prediction_images import PredictionImages
from cbsa_dense.callbacks.prediction_writer import PredictionWriter
from cbsa_dense.callbacks.preemption import PreemptionCheckpoint
from cbsa_dense.callbacks.task_checkpoint import TaskCheckpoint

__all__ = ["AttentionTransfer", "CompileEncoder", "ExactResume", "ExplainCallback", "FiniteLossCheck", "HeadWarmup", "LogProgress",
           "NonFiniteLossError", "PredictionImages", "PredictionWriter",
           "PreemptionCheckpoint", "TaskCheckpoint"]
