"""Attention transfer: train a CBSA encoder's attention to reproduce its softmax teacher, block by block.

LoLCATs-style: teacher-forced (each CBSA block gets the teacher's block input), loss = the mean over
blocks of the relative squared error of the LayerScale-weighted attention outputs. Only the parameters
the swap adds train by default (``step_sizes``: ``step_x`` and ``step_rep``; ``local``: the opt-in
depthwise term); ``qk`` also trains the query and key rows of ``qkv`` (the value rows, ``proj`` and all
other weights stay frozen). Early stopping keeps the parameters of the best loss on held-out crops.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from cbsa_dense.errors import ConfigError
from cbsa_dense.linearize.teacher import student_output, teacher_targets
from cbsa_dense.models.encoders.base import TokenEncoder

#: What attention transfer may train.
TRAINABLE = ("step_sizes", "local", "qk")


@dataclass
class TransferReport:
    steps: int
    best_step: int
    holdout_before: float
    holdout_after: float
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)     # (step, held-out loss)


def _params(student: TokenEncoder, blocks: list[int], train: Sequence[str]) -> tuple[list, list, list]:
    """(fresh parameters, q/k parameters, gradient hooks masking the value rows of ``qkv``)."""
    unknown = sorted(set(train) - set(TRAINABLE))
    if unknown or not train:
        raise ConfigError(f"attention transfer: train={list(train)} must name some of {list(TRAINABLE)}")
    fresh, qk, hooks = [], [], []
    for i in blocks:
        attn = student.blocks[i].attn
        if "step_sizes" in train:
            fresh += [p for p in (attn.step_x, attn.step_rep) if p is not None]
        if "local" in train and attn.local is not None:
            fresh += list(attn.local.parameters())
        if "qk" in train:
            inner = attn.inner_dim
            for p in (attn.qkv.weight, attn.qkv.bias):
                if p is None:
                    continue
                qk.append(p)
                p.requires_grad_(True)                        # a hook needs it (the caller restores the flags)

                def keep_qk(grad: torch.Tensor, inner: int = inner) -> torch.Tensor:
                    grad = grad.clone()
                    grad[2 * inner:] = 0                      # the value rows keep the softmax model's weights
                    return grad

                hooks.append(p.register_hook(keep_qk))
    if not fresh and not qk:
        raise ConfigError(f"attention transfer: train={list(train)} finds no parameter to train in the CBSA "
                          "blocks (query broadcast has no step sizes; 'local' needs local_kernel > 0)")
    return fresh, qk, hooks


def transfer_loss(student: TokenEncoder, blocks: list[int], targets: dict, grid: tuple[int, int]) -> torch.Tensor:
    """Mean over ``blocks`` of ``||y - t||^2 / ||t||^2`` (LayerScale-weighted outputs, teacher-forced)."""
    losses = []
    for i in blocks:
        target = targets[i].target
        out = student_output(student, i, targets[i], grid)
        losses.append((out - target).float().square().sum() / target.float().square().sum().clamp_min(1e-12))
    return torch.stack(losses).mean()


@torch.no_grad()
def holdout_loss(student: TokenEncoder, blocks: list[int], forced: list[tuple[dict, tuple[int, int]]]) -> float:
    return sum(transfer_loss(student, blocks, t, g).item() for t, g in forced) / max(len(forced), 1)


def transfer_attention(student: TokenEncoder, teacher: TokenEncoder, blocks: list[int],
                       batches: Iterator[torch.Tensor], holdout: Iterable[torch.Tensor], steps: int = 150,
                       train: Sequence[str] = ("step_sizes", "local"), lr: float = 1e-2, qk_lr: float = 1e-4,
                       eval_every: int = 25, patience: int = 4,
                       progress: bool = True) -> TransferReport:
    """Train the CBSA ``blocks`` of ``student`` toward ``teacher`` for ``steps`` batches from ``batches``
    (normalized image tensors); early stop on ``holdout`` (a few batches, evaluated every ``eval_every``
    steps; after ``patience`` evaluations without improvement training stops); the best parameters stay.
    Everything but the trained parameters is left as it was (``requires_grad`` flags included). No weight
    decay: it would also shrink the value rows of ``qkv``, which share a tensor with the query/key rows."""
    started = time.perf_counter()
    flags = {p: p.requires_grad for p in student.parameters()}    # e.g. a frozen encoder stays frozen after
    student.requires_grad_(False)
    fresh, qk, hooks = _params(student, blocks, train)
    was_training = student.training
    trained = fresh + qk
    for p in trained:
        p.requires_grad_(True)
    groups = [g for g in ({"params": fresh, "lr": lr, "weight_decay": 0.0},
                          {"params": qk, "lr": qk_lr, "weight_decay": 0.0}) if g["params"]]
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    forced = [teacher_targets(teacher, images, blocks)[:2] for images in holdout]
    student.eval()                                      # no dropout / drop-path while matching the teacher
    before = best = holdout_loss(student, blocks, forced)
    best_state, best_step, stale, history = [p.detach().clone() for p in trained], 0, 0, [(0, before)]
    step = 0
    try:
        bar = tqdm(total=steps, desc="attention transfer", disable=not progress, leave=False)
        for step, images in enumerate(batches, start=1):
            targets, grid, _ = teacher_targets(teacher, images, blocks)
            loss = transfer_loss(student, blocks, targets, grid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{best:.3f}")
            if step % eval_every == 0 or step == steps:
                current = holdout_loss(student, blocks, forced)
                history.append((step, current))
                if current < best:
                    best, best_step, stale = current, step, 0
                    best_state = [p.detach().clone() for p in trained]
                else:
                    stale += 1
                if stale >= patience:
                    break
            if step >= steps:
                break
        bar.close()
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for p, value in zip(trained, best_state):
                p.copy_(value)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        student.train(was_training)
    return TransferReport(steps=step, best_step=best_step, holdout_before=before, holdout_after=best,
                          seconds=time.perf_counter() - started, history=history)
