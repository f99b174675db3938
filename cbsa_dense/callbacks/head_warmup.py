"""Head warm-up as a step of ``fit``: the fresh head learns the pretrained features before they fine-tune."""

from __future__ import annotations

import math
import time

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from cbsa_dense.callbacks.once import OnceBeforeTraining
from cbsa_dense.data.loaders import loader_passes
from cbsa_dense.errors import ConfigError


class HeadWarmup(OnceBeforeTraining):
    """Before the first training step of a fresh ``fit``, train everything outside the encoder (the head, and
    the neck of a detector) alone on the frozen encoder's features of ``batches`` training batches, computed
    once and reused for ``steps`` steps; then fine-tune everything as usual.

    A fresh head's first gradients are noise, and fine-tuning passes them into the pretrained encoder; a head
    that already reads the features asks the encoder for small changes. This is LP-FT (Kumar et al., "Fine-Tuning
    can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022: a linear probe first, then
    full fine-tuning), with the task's own head and loss in place of the linear probe. The encoder runs once per
    cached batch, so the warm-up costs about ``batches`` forward passes plus ``steps`` head steps (cheap for a
    linear head, about a fifth of a training step for a detection neck and head).

    It runs after :class:`AttentionTransfer` (list it after that callback: the head learns the features the
    encoder will fine-tune from) and once: skipped on resume (``--ckpt_path``) and when its saved state says
    done. With no trainable parameter outside the encoder it is skipped with a printed line. Deterministic
    given the run's seed. Under DDP every rank warms up on its own shard, then rank 0's head is broadcast.

    The task provides ``head_inputs(batch)`` (the encoder's output of a training batch and the targets) and
    ``head_loss(inputs)`` (the training loss through the head alone): both tasks of this package do.

    Args:
        batches: training batches whose encoder features are kept in memory (ViT-S, batch 2: about 0.45 MB a
            batch at 168 px, 0.8 MB at 224 px).
        steps: optimizer steps of the head, each on one kept batch (in a shuffled order, repeated).
        lr: AdamW learning rate, cosine-decayed to 1 % of it over the steps.
        weight_decay: AdamW weight decay (not on 1-D parameters: norms and biases).
    """

    step_name = "head warm-up"

    def __init__(self, batches: int = 100, steps: int = 1000, lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        for name, value in (("batches", batches), ("steps", steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"HeadWarmup {name}={value!r} must be a positive integer")
        if not lr > 0 or weight_decay < 0:
            raise ConfigError(f"HeadWarmup lr={lr!r} must be > 0 and weight_decay={weight_decay!r} >= 0")
        self.batches, self.steps, self.lr, self.weight_decay = batches, steps, float(lr), float(weight_decay)
        super().__init__()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from cbsa_dense.callbacks.attention_transfer import AttentionTransfer

        if self.skipped(trainer):
            return
        if any(isinstance(cb, AttentionTransfer) and not cb.done for cb in trainer.callbacks):
            raise ConfigError("trainer.callbacks lists HeadWarmup before AttentionTransfer: list it after, so that "
                              "the head learns the features the encoder fine-tunes from")
        model = getattr(pl_module, "model", None)
        encoder = getattr(model, "encoder", None)
        if encoder is None or not hasattr(pl_module, "head_inputs") or not hasattr(pl_module, "head_loss"):
            raise ConfigError(f"HeadWarmup needs a task with model.encoder, head_inputs and head_loss, not "
                              f"{type(pl_module).__name__}")
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ConfigError(f"HeadWarmup runs under a single device or DDP, not {type(trainer.strategy).__name__}"
                              " (its parameters are sharded): leave it out of trainer.callbacks")
        in_encoder = {id(p) for p in encoder.parameters()}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_encoder]
        if not params:
            rank_zero_info("head warm-up: skipped (nothing outside the encoder trains)")
            self.done = True
            return
        start = time.perf_counter()
        first, last = self._warm_up(trainer, pl_module, encoder, params)
        if trainer.world_size > 1:
            with torch.no_grad():
                in_encoder |= {id(b) for b in encoder.buffers()}
                for tensor in [*params, *(b for b in model.buffers() if id(b) not in in_encoder)]:
                    tensor.copy_(trainer.strategy.broadcast(tensor.detach(), src=0))
        self.done = True
        rank_zero_info(f"head warm-up: {self.steps} steps on the frozen encoder's features of {self.batches} "
                       f"training batches in {time.perf_counter() - start:.0f} s: loss {first:.4f} -> {last:.4f} "
                       "(mean of the first / last 10 steps)")
        for logger in trainer.loggers:
            logger.log_metrics({"head_warmup_loss_first": first, "head_warmup_loss_last": last}, step=0)

    def _warm_up(self, trainer: Trainer, pl_module: LightningModule, encoder, params) -> tuple[float, float]:
        kept = []
        encoder_mode = encoder.training
        encoder.eval()                          # features as fine-tuning starts them, without drop-path noise
        loader = trainer.datamodule.train_dataloader() if trainer.datamodule else trainer.train_dataloader
        try:
            with torch.no_grad():
                for batch in loader_passes(loader):    # as many passes over a small training set as it takes
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                    kept.append(pl_module.head_inputs(batch))
                    if len(kept) == self.batches:
                        break
        except ValueError as err:
            raise ConfigError(f"HeadWarmup: {err}") from None
        encoder.train(encoder_mode)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(i, self.steps) / self.steps)))
        losses: list[float] = []
        order: list[int] = []
        for _ in range(self.steps):
            if not order:
                order = torch.randperm(len(kept)).tolist()
            loss = pl_module.head_loss(kept[order.pop()])
            if not torch.isfinite(loss):
                raise ConfigError(f"HeadWarmup: the head's loss is {loss.item()} at step {len(losses)}: lower its lr "
                                  f"({self.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        n = min(10, len(losses))
        return sum(losses[:n]) / n, sum(losses[-n:]) / n
