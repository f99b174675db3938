"""ISTA block of CRATE/CBT: one sparse-coding proximal step against a learned dictionary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ISTA(nn.Module):
    """``ISTA(x) = ReLU(x + eta * (x D - x D^T D) - eta * lambd)`` (row-vector form of the spec's
    ``x + 0.1 (D^T x - D^T D x) - 0.01``), with ``D`` a learned ``dim x dim`` dictionary ``weight``.

    Args:
        dim: token width.
        eta: step size (0.1).
        lambd: sparsity weight (0.1, so the threshold is eta * lambd = 0.01).
    """

    def __init__(self, dim: int, eta: float = 0.1, lambd: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)
        self.eta = eta
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (..., dim), non-negative."""
        coded = F.linear(x, self.weight)                       # x D^T
        grad = F.linear(x, self.weight.t()) - F.linear(coded, self.weight.t())  # x D - x D^T D
        return F.relu(x + self.eta * grad - self.eta * self.lambd)
