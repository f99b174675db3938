"""How far a CBSA encoder's attention is from its softmax teacher's, block by block (forward only).

Per CBSA block, teacher-forced (the block gets the teacher's own input): the relative squared error
``||y - t||^2 / ||t||^2`` of the LayerScale-weighted attention outputs (``y`` CBSA, ``t`` softmax; 1.0 is
as far off as returning zeros; the attention transfer's loss), the norm ratio ``||y|| / ||t||`` and the
cosine of ``y`` and ``t`` (each flattened per image, averaged over images). End to end, running free: the
mean per-token cosine of the final features to the teacher's. :data:`LEGEND` says so under each table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sized
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cbsa_dense.linearize.teacher import final_features, student_output, teacher_targets
from cbsa_dense.models.encoders.base import TokenEncoder

#: What the columns of :meth:`Diagnosis.table` are, printed under each table.
LEGEND = [
    "rel.error: ||y - t||^2 / ||t||^2 of the block's LayerScale-weighted attention output y against the softmax",
    "  teacher's t, the block given the teacher's input: 0 = identical, 1.0 = as far off as predicting zero; lower is better",
    "norm ratio: ||y|| / ||t|| (1 = the same size, below 1 = CBSA's output is too small); cosine: of y and t per image",
    "  (1 = the same direction); final-feature cosine: of the encoder's output tokens and the teacher's (1 = the same)",
]


@dataclass
class BlockStats:
    block: int
    rel_error: float
    norm_ratio: float
    cosine: float


@dataclass
class Diagnosis:
    """Per-block teacher-forced statistics and the final-feature cosine, at one input size."""

    size: tuple[int, int]
    images: int
    blocks: list[BlockStats] = field(default_factory=list)
    final_cosine: float = float("nan")

    def mean_error(self) -> float:
        return sum(b.rel_error for b in self.blocks) / max(len(self.blocks), 1)

    def table(self, title: str = "", legend: bool = True) -> str:
        """A plain-text table, one row per block, then the mean and the final-feature cosine; with ``legend``,
        what the columns are (:data:`LEGEND`)."""
        head = f"{title + ': ' if title else ''}{self.images} crops of {self.size[0]}x{self.size[1]}"
        lines = [head, f"{'block':>5}  {'rel.error':>9}  {'norm ratio':>10}  {'cosine':>6}"]
        lines += [f"{b.block:>5}  {b.rel_error:>9.3f}  {b.norm_ratio:>10.3f}  {b.cosine:>6.3f}" for b in self.blocks]
        lines.append(f"{'mean':>5}  {self.mean_error():>9.3f}")
        lines.append(f"final-feature cosine to the softmax teacher: {self.final_cosine:.3f}")
        if legend:
            lines += LEGEND
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def diagnose(student: TokenEncoder, teacher: TokenEncoder, blocks: list[int],
             batches: Iterable[torch.Tensor], progress: bool = False, desc: str = "diagnosis") -> Diagnosis:
    """Compare ``student``'s CBSA blocks (indices ``blocks``) with ``teacher`` on image ``batches``
    ((B, 3, H, W) normalized float tensors, all of one size). ``progress``: a progress bar (stderr) over the
    batches, titled ``desc``."""
    was_training = student.training
    student.eval()
    sums = {i: torch.zeros(4, dtype=torch.float64) for i in blocks}   # err^2, target^2, output^2, cosine sum
    final_cos, count, size = 0.0, 0, (0, 0)
    total = len(batches) if isinstance(batches, Sized) else None
    for images in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
        size = tuple(images.shape[-2:])
        targets, grid, teacher_final = teacher_targets(teacher, images, blocks)
        for i in blocks:
            out = student_output(student, i, targets[i], grid).flatten(1).double()
            target = targets[i].target.flatten(1).double()
            sums[i] += torch.stack([(out - target).square().sum(), target.square().sum(), out.square().sum(),
                                    F.cosine_similarity(out, target, dim=1).sum()])
        final = final_features(student, images)
        final_cos += F.cosine_similarity(final, teacher_final, dim=-1).mean(dim=1).sum().item()
        count += images.shape[0]
    student.train(was_training)
    report = Diagnosis(size=size, images=count, final_cosine=final_cos / max(count, 1))
    for i in blocks:
        err2, target2, out2, cos = sums[i].tolist()
        report.blocks.append(BlockStats(i, err2 / target2, (out2 / target2) ** 0.5, cos / count))
    return report


def reports_json(reports: dict[str, Diagnosis]) -> str:
    return json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=1)
