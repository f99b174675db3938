"""Closed-form calibration of the CBSA step sizes against the softmax teacher (parameter values only).

With the paper's transpose broadcast a block's output is linear in the per-head ``step_x`` (kappa):
``y = ls1(sum_h kappa_h U_h(eta) + c(eta))``, with ``U_h`` head h's contribution through ``proj`` and
``c`` what does not depend on kappa (the bias, the opt-in local term). For each value of ``step_rep``
(eta, one per block) on a grid, kappa is the least-squares solution against the teacher's
LayerScale-weighted output, teacher-forced, accumulated over the batches (an h x h solve); the eta with
the smallest residual wins. The CBSA formula is unchanged: only the values of its step sizes are set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from cbsa_dense.linearize.teacher import student_output, teacher_targets
from cbsa_dense.models.encoders.base import TokenEncoder

#: The ``step_rep`` values tried per block.
ETA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@torch.no_grad()
def calibrate_step_sizes(student: TokenEncoder, teacher: TokenEncoder, blocks: list[int],
                         batches: Iterable[torch.Tensor], eta_grid: Sequence[float] = ETA_GRID) -> dict[int, dict]:
    """Set ``step_x`` and ``step_rep`` of the transpose-broadcast CBSA ``blocks`` in place; return per block
    ``{"step_rep": eta, "step_x": [kappa_h ...], "rel_error": residual}`` (relative squared error of the fit
    on the batches). Blocks with the query broadcast (no step sizes) are left out."""
    blocks = [i for i in blocks if student.blocks[i].attn.step_x is not None]
    batches = list(batches)
    was_training = student.training
    student.eval()
    forced = [teacher_targets(teacher, images, blocks)[:2] for images in batches]
    result = {}
    for i in blocks:
        attn = student.blocks[i].attn
        heads = attn.num_heads
        target_norm = sum(targets[i].target.double().square().sum().item() for targets, _ in forced)
        best = None
        for eta in eta_grid:
            gram = torch.zeros(heads, heads, dtype=torch.float64)
            cross = torch.zeros(heads, dtype=torch.float64)
            total = 0.0
            attn.step_rep.fill_(eta)
            for targets, grid in forced:
                attn.step_x.zero_()
                const = student_output(student, i, targets[i], grid).flatten().double()
                columns = []
                for h in range(heads):
                    attn.step_x.zero_()
                    attn.step_x[h] = 1.0
                    columns.append(student_output(student, i, targets[i], grid).flatten().double() - const)
                basis = torch.stack(columns, dim=1)                                   # (M, h)
                rest = targets[i].target.flatten().double() - const
                gram += basis.T @ basis
                cross += basis.T @ rest
                total += rest.square().sum().item()
            kappa = torch.linalg.lstsq(gram, cross.unsqueeze(1)).solution.squeeze(1)
            residual = total - 2 * kappa @ cross + kappa @ gram @ kappa
            error = max(residual.item(), 0.0) / max(target_norm, 1e-30)
            if best is None or error < best[0]:
                best = (error, eta, kappa)
        error, eta, kappa = best
        attn.step_rep.fill_(eta)
        attn.step_x.copy_(kappa.view_as(attn.step_x).to(attn.step_x.dtype))
        result[i] = {"step_rep": eta, "step_x": [round(k, 4) for k in kappa.tolist()], "rel_error": error}
    student.train(was_training)
    return result
