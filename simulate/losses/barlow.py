"""Barlow Twins (Zbontar et al., ICML 2021, eq. 1)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import as_runs, check_views, compute_dtype, finish, nonnegative_number


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` per run, ``C`` the cross-correlation
    of the batch-standardised views (``C = Z1n^T Z2n / B``, biased std, ``eps`` added).

    Convention: the official code (facebookresearch/barlowtwins, ``main.py``,
    ``BarlowTwins.forward``: ``BatchNorm1d(affine=False)`` on each view, ``c = bn(z1).T @
    bn(z2) / batch_size``, ``on_diag + lambd * off_diag``, no further scaling) and lightly's
    ``BarlowTwinsLoss`` from 1.5.20 on (``F.batch_norm`` per view, eps 1e-5). Each view is
    standardised with its own statistics; lightly 1.4.17 to 1.5.19 pooled the two views'
    statistics, and earlier versions used the unbiased std without eps. The official code's
    first release multiplied both terms by ``--scale-loss`` (1/32), dropped later.
    ``lambda``: the paper's 5e-3 (lightly's default); the official script's default is
    0.0051.

    Shape:
        z1, z2: (R, B, D) or (B, D), B >= 2; output (R,).
    """
    check_views(z1, z2, min_batch=2, why="Barlow Twins")
    unbatched, (z1, z2) = as_runs(z1, z2)
    dtype = z1.dtype
    z1, z2 = z1.to(compute_dtype(dtype)), z2.to(compute_dtype(dtype))
    b = z1.shape[1]

    def standardise(z):
        zc = z - z.mean(1, keepdim=True)
        return zc / (zc.pow(2).mean(1, keepdim=True) + eps).sqrt()

    c = standardise(z1).transpose(1, 2) @ standardise(z2) / b
    diag = torch.diagonal(c, dim1=1, dim2=2)
    off = (c**2).sum((1, 2)) - (diag**2).sum(1)
    return finish(((1 - diag) ** 2).sum(1) + lambd * off, unbatched, dtype)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (module form of :func:`barlow_twins`).

    Args:
        lambd: weight of the redundancy term, >= 0 (paper: 5e-3).

    Shape:
        z1, z2: (R, B, D) or (B, D); output (R,) or scalar.
    """

    def __init__(self, lambd: float = 5e-3):
        super().__init__()
        self.lambd = nonnegative_number("lambd", lambd)

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return barlow_twins(z1, z2, self.lambd)
