"""Decoupled contrastive loss (Yeh et al., ECCV 2022, eq. 6)."""

from __future__ import annotations

import torch

from ._common import TemperatureLoss, as_runs, check_views, compute_dtype, finish, masked_logsumexp, positive_number, unit


def dcl(z1: torch.Tensor, z2: torch.Tensor, tau: float, normalize: bool = True) -> torch.Tensor:
    """DCL averaged over the 2B anchors: NT-Xent with the positive removed from the
    denominator, ``l_i = -s_{i,p(i)} + log sum_{j != i, p(i)} exp(s_ij)``, ``s_ij =
    cos(z_i, z_j) / tau``.

    Convention: lightly's ``DCLLoss`` (``0.5 * (loss0 + loss1)``, each a mean over the B
    anchors of one view, no weighting function). Yeh et al.'s eq. (6) sums over anchors and
    views; raminnakhli/Decoupled-Contrastive-Learning's ``DCL``, the implementation lightly's
    cites, returns the sum of the two one-way means, twice this value.

    Shape:
        z1, z2: (R, B, D) or (B, D), B >= 2 (B = 1 leaves no negative); output (R,).
        All embeddings equal: ``log(2B - 2)``.
    """
    check_views(z1, z2, min_batch=2, why="DCL (no negatives otherwise)")
    tau = positive_number("tau", tau)
    unbatched, (z1, z2) = as_runs(z1, z2)
    dtype = z1.dtype
    z = torch.cat([z1, z2], dim=1).to(compute_dtype(dtype))
    u = unit(z, normalize)
    n = u.shape[1]
    b = n // 2
    s = u @ u.transpose(1, 2) / tau
    idx = torch.arange(n, device=z.device)
    pos = torch.cat([idx[b:], idx[:b]])
    negatives = (idx[None, :] != idx[:, None]) & (idx[None, :] != pos[:, None])
    lse = masked_logsumexp(s, negatives)
    pos_sim = (u[:, :b] * u[:, b:]).sum(-1) / tau
    return finish((lse.sum(1) - 2 * pos_sim.sum(1)) / n, unbatched, dtype)


class DCLLoss(TemperatureLoss):
    """DCL loss (module form of :func:`dcl`).

    Args:
        temperature: tau > 0.

    Shape:
        z1, z2: (R, B, D) or (B, D); output (R,) or scalar.
    """

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return dcl(z1, z2, self.temperature, normalize)
