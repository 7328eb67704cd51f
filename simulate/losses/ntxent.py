"""NT-Xent / InfoNCE (SimCLR: Chen et al., ICML 2020, eq. 1)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import as_runs, check_views, compute_dtype, finish, masked_logsumexp, positive_number, unit


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, normalize: bool = True) -> torch.Tensor:
    """NT-Xent averaged over the 2B anchors of each run.

    ``l_i = -s_{i,p(i)} + log sum_{j != i} exp(s_ij)``, ``s_ij = cos(z_i, z_j) / tau`` over the
    concatenated views, ``p(i)`` the other view of the same point.

    Args:
        z1, z2: the two views. Shape: ``(R, B, D)`` or ``(B, D)``.
        tau: temperature, > 0.
        normalize: False uses raw dot products (the ``sphere_raw`` update mode).

    Returns:
        ``(R,)`` (or a scalar for unbatched input). All embeddings equal: ``log(2B - 1)``.
        B = 1: each anchor's only candidate is its positive, loss 0.
    """
    check_views(z1, z2)
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
    others = idx[None, :] != idx[:, None]
    lse = masked_logsumexp(s, others.expand_as(s))
    loss = (lse - s[:, idx, pos]).mean(dim=1)
    return finish(loss, unbatched, dtype)


class NTXentLoss(nn.Module):
    """NT-Xent loss (module form of :func:`nt_xent`).

    Args:
        temperature: tau > 0.

    Shape:
        z1, z2: (R, B, D) or (B, D); output (R,) or scalar.
    """

    cosine_only = True

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        self.temperature = positive_number("temperature", temperature)

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return nt_xent(z1, z2, self.temperature, normalize)
