"""Attention transfer as a step of ``fit``: the CBSA encoder learns its softmax teacher before fine-tuning."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from cbsa_dense.callbacks.once import OnceBeforeTraining
from cbsa_dense.errors import ConfigError
from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.linearize.run import LinearizeSettings, linearize_encoder
from cbsa_dense.linearize.teacher import cbsa_blocks


class AttentionTransfer(OnceBeforeTraining):
    """Before the first training step of a fresh ``fit``, match each CBSA block of the task's encoder to the
    softmax attention of the pretrained weights it was loaded with (:mod:`cbsa_dense.linearize`), on the
    run's own training crops (labels unused), then train as usual.

    Runs once: it is skipped, with a printed line, when ``fit`` resumes (``--ckpt_path``), when the checkpoint
    it starts from says that it ran, when the encoder's ``pretrained`` file was written by ``cbsa-dense
    linearize``, when there are no pretrained weights at all (random init: nothing to match), and when
    the encoder has no CBSA layer (softmax attention, e.g. as a baseline with the same config). CBSA
    layers that cannot hold softmax weights (the ``shared`` variant) are an error. The teacher is built from the encoder's own ``qkv``/``proj`` weights at that moment
    (no file is read), so the encoder must hold pretrained softmax-ViT weights: ``pretrained`` on the
    encoder, or the task's ``weights``. The diagnosis before and after (per-block relative error of the
    attention output to the teacher's, at the training crop and at twice its size) is printed and written
    to ``<run>/attention_transfer.json``; the mean errors go to the loggers.

    Deterministic given the run's seed (the crops come from the training loader, seeded by it). Under DDP
    every rank runs the transfer on its own shard of the crops, then rank 0's parameters are
    broadcast so that all ranks start fine-tuning from the same model. Strategies that shard parameters
    (FSDP, DeepSpeed) are refused with a pointer to ``cbsa-dense linearize``.

    Args:
        steps: transfer steps (batches of the training loader); ``0`` = no training (calibration only).
        train: what trains: ``step_sizes`` (``step_x``, ``step_rep``), ``local`` (the opt-in depthwise
            term), ``qk`` (the query and key rows of ``qkv``; values, ``proj`` and the rest stay frozen).
        calibrate: set the step sizes in closed form (least squares against the teacher) first.
        lr: learning rate of the step sizes and the local term (AdamW, no weight decay, cosine decay).
        qk_lr: learning rate of the query/key rows.
        holdout_batches: batches of a separate pass over the training loader used for early stopping.
        eval_every: steps between held-out evaluations; ``patience``: evaluations without improvement
            before stopping early.
        double_size_check: also diagnose at twice the crop size (the resolution check). Turn it off for
            large training images (detection at 1024: the softmax teacher at 2048 is expensive).
    """

    step_name = "attention transfer"

    def __init__(self, steps: int = 150, train: Sequence[str] = ("step_sizes", "local"), calibrate: bool = False,
                 lr: float = 1e-2, qk_lr: float = 1e-4, holdout_batches: int = 8, eval_every: int = 25,
                 patience: int = 4, double_size_check: bool = True) -> None:
        self.settings = LinearizeSettings(steps=steps, train=tuple(train), calibrate=calibrate, lr=lr, qk_lr=qk_lr,
                                          holdout_batches=holdout_batches, eval_every=eval_every,
                                          patience=patience, double_size_check=double_size_check)
        self.settings.check()
        super().__init__()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.skipped(trainer):
            return
        encoder = getattr(getattr(pl_module, "model", None), "encoder", None)
        if encoder is None:
            raise ConfigError(f"AttentionTransfer needs a task with model.encoder, not {type(pl_module).__name__}")
        if not any(isinstance(m, CBSAAttention) for m in encoder.modules()):
            rank_zero_info("attention transfer: skipped (the encoder has no CBSA layer: nothing to transfer)")
            self.done = True
            return
        cbsa_blocks(encoder)               # CBSA layers that cannot hold softmax weights: one-line error
        if not getattr(encoder, "pretrained_from", None) and not getattr(pl_module, "weights", None):
            rank_zero_info("attention transfer: skipped (the encoder starts from random init: no pretrained "
                           "weights and no task weights, so there is no softmax model to match)")
            self.done = True
            return
        if getattr(encoder, "linearized", False):
            rank_zero_info("attention transfer: skipped (the encoder's pretrained file was written by "
                           "cbsa-dense linearize: its attention is already matched)")
            self.done = True
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ConfigError("AttentionTransfer needs a datamodule (its training images are the transfer's data)")
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ConfigError(f"AttentionTransfer runs under a single device or DDP, not {type(trainer.strategy).__name__}"
                              " (its parameters are sharded): run `cbsa-dense linearize ... --out enc.safetensors` "
                              "first and give that file as the encoder's pretrained weights")
        report = linearize_encoder(encoder, datamodule.train_dataloader(), self.settings,
                                   progress=trainer.progress_bar_callback is not None)
        if trainer.world_size > 1:
            with torch.no_grad():
                for p in encoder.parameters():
                    p.copy_(trainer.strategy.broadcast(p.detach(), src=0))
        self.done = True
        rank_zero_info(report.text())
        if trainer.is_global_zero:
            from cbsa_dense.tasks.base import run_dir

            folder = run_dir(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "attention_transfer.json").write_text(json.dumps(report.to_dict(), indent=1))
            for logger in trainer.loggers:
                logger.log_metrics(report.metrics(), step=0)
