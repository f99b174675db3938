"""The whole linearization of one encoder: diagnose, calibrate and/or transfer, diagnose again."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cbsa_dense.errors import ConfigError
from cbsa_dense.linearize.calibrate import calibrate_step_sizes
from cbsa_dense.linearize.data import holdout_batches, training_batches
from cbsa_dense.linearize.diagnose import Diagnosis, diagnose
from cbsa_dense.linearize.teacher import build_teacher, cbsa_blocks
from cbsa_dense.linearize.transfer import TRAINABLE, TransferReport, transfer_attention


@dataclass
class LinearizeSettings:
    steps: int = 150
    train: Sequence[str] = ("step_sizes", "local")
    calibrate: bool = False
    lr: float = 1e-2
    qk_lr: float = 1e-4
    holdout_batches: int = 8
    eval_every: int = 25
    patience: int = 4
    double_size_check: bool = True

    def check(self) -> None:
        if self.steps < 0 or self.holdout_batches < 1 or self.eval_every < 1 or self.patience < 1:
            raise ConfigError(f"attention transfer: steps must be >= 0, holdout_batches, eval_every and patience >= 1 "
                              f"(got steps={self.steps}, holdout_batches={self.holdout_batches}, "
                              f"eval_every={self.eval_every}, patience={self.patience})")
        unknown = sorted(set(self.train) - set(TRAINABLE))
        if unknown or (self.steps and not self.train):
            raise ConfigError(f"attention transfer: train={list(self.train)} must name some of {list(TRAINABLE)}")
        if not self.steps and not self.calibrate:
            raise ConfigError("attention transfer: steps=0 and calibrate=false would change nothing")


@dataclass
class LinearizeReport:
    before: dict[str, Diagnosis] = field(default_factory=dict)      # "crop" / "2x crop" -> diagnosis
    after: dict[str, Diagnosis] = field(default_factory=dict)
    calibration: dict | None = None
    transfer: TransferReport | None = None
    seconds: float = 0.0

    def text(self) -> str:
        parts = [d.table(f"before, {name}") for name, d in self.before.items()]
        if self.transfer is not None:
            t = self.transfer
            parts.append(f"attention transfer: {t.steps} steps in {t.seconds:.0f} s, best at step {t.best_step}, "
                         f"held-out loss {t.holdout_before:.4f} -> {t.holdout_after:.4f}")
        parts += [d.table(f"after, {name}") for name, d in self.after.items()]
        parts.append(f"linearization took {self.seconds:.0f} s")
        return "\n\n".join(parts)

    def metrics(self) -> dict[str, float]:
        out = {}
        for when, reports in (("before", self.before), ("after", self.after)):
            for name, d in reports.items():
                key = name.replace(" ", "_")
                out[f"linearize/{when}_{key}_error"] = d.mean_error()
                out[f"linearize/{when}_{key}_final_cosine"] = d.final_cosine
        return out

    def to_dict(self) -> dict:
        return {"before": {k: v.to_dict() for k, v in self.before.items()},
                "after": {k: v.to_dict() for k, v in self.after.items()},
                "calibration": self.calibration, "transfer": asdict(self.transfer) if self.transfer else None,
                "seconds": self.seconds}


def _diagnoses(student, teacher, blocks, held: list[torch.Tensor], double_size: bool, when: str = "",
               progress: bool = False) -> dict[str, Diagnosis]:
    """At the training crop, and at twice its size (the held-out crops upsampled): the resolution check."""
    prefix = f"{when} " if when else ""
    reports = {"crop": diagnose(student, teacher, blocks, held, progress, f"diagnosis {prefix}at the crop")}
    if double_size:
        double = [F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) for x in held]
        reports["2x crop"] = diagnose(student, teacher, blocks, double, progress, f"diagnosis {prefix}at 2x the crop")
    return reports


def linearize_encoder(encoder: torch.nn.Module, loader: DataLoader, settings: LinearizeSettings,
                      progress: bool = True, diagnose_only: bool = False) -> LinearizeReport:
    """Match ``encoder``'s CBSA blocks to the softmax attention of the weights they hold, on ``loader``'s
    images (training crops; labels unused). In place; returns the before/after report. ``progress``: progress
    bars (stderr) for the diagnoses and the transfer."""
    started = time.perf_counter()
    blocks = cbsa_blocks(encoder)
    teacher = build_teacher(encoder)
    held = holdout_batches(loader, settings.holdout_batches)
    report = LinearizeReport(before=_diagnoses(encoder, teacher, blocks, held, settings.double_size_check, "before",
                                               progress))
    if not diagnose_only:
        if settings.calibrate:
            report.calibration = calibrate_step_sizes(encoder, teacher, blocks, held[: max(len(held) // 2, 1)])
        if settings.steps:
            report.transfer = transfer_attention(encoder, teacher, blocks, training_batches(loader), held,
                                                 steps=settings.steps, train=settings.train, lr=settings.lr,
                                                 qk_lr=settings.qk_lr, eval_every=settings.eval_every,
                                                 patience=settings.patience, progress=progress)
        report.after = _diagnoses(encoder, teacher, blocks, held, settings.double_size_check, "after", progress)
    report.seconds = time.perf_counter() - started
    return report
