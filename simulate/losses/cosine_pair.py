"""Plain cosine pair losses: the single terms the theory claims analyse."""

from __future__ import annotations

import torch
from torch import nn

from ._common import as_runs, check_views, compute_dtype, finish, positive_number, unit


def cosine_pair(z1: torch.Tensor, z2: torch.Tensor, weight: float, normalize: bool = True) -> torch.Tensor:
    """``weight * mean_i (1 - cos(z1_i, z2_i))`` per run.

    ``weight > 0`` pulls each positive pair together (align); ``weight < 0`` pushes it apart
    (repel). In the ``sphere`` update mode one step on this loss is the theory's pair map with
    ``beta = eta * weight / B`` (the mean divides the per-pair weight by B).

    Shape:
        z1, z2: (R, B, D) or (B, D); output (R,).
    """
    check_views(z1, z2)
    unbatched, (z1, z2) = as_runs(z1, z2)
    dtype = z1.dtype
    u1 = unit(z1.to(compute_dtype(dtype)), normalize)
    u2 = unit(z2.to(compute_dtype(dtype)), normalize)
    loss = weight * (1 - (u1 * u2).sum(-1)).mean(1)
    return finish(loss, unbatched, dtype)


class AlignLoss(nn.Module):
    """Align-only cosine loss, ``weight * mean(1 - cos)`` with weight > 0."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = positive_number("weight", weight)

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return cosine_pair(z1, z2, self.weight, normalize)


class RepelLoss(nn.Module):
    """Repel-only cosine loss, ``-weight * mean(1 - cos)`` with weight > 0."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = positive_number("weight", weight)

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return cosine_pair(z1, z2, -self.weight, normalize)
