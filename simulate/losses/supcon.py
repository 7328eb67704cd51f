"""Supervised contrastive loss (Khosla et al., NeurIPS 2020, eq. 2, 'L_out')."""

from __future__ import annotations

import torch

from ._common import (
    TemperatureLoss, as_runs, check_labels, check_views, compute_dtype, finish,
    masked_logsumexp, positive_number, unit,
)


def supcon(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor | None, tau: float,
    normalize: bool = True,
) -> torch.Tensor:
    """SupCon averaged over the 2B anchors of each run.

    ``l_i = -1/|P(i)| sum_{p in P(i)} [s_ip - log sum_{a != i} exp(s_ia)]`` where ``P(i)`` is
    the other view of the same point plus every other view with the same label; unlabelled
    points (label -1) and ``labels=None`` fall back to the other view only (then SupCon
    equals NT-Xent, as it does for all-unique labels).

    Convention: pytorch-metric-learning's ``SupConLoss`` (the mean over anchors of
    ``-mean_{p in P(i)} log_prob``, denominator over every other row), with the two views
    passed as one batch of 2B rows. The authors' code (HobbitLong/SupContrast,
    ``losses.py``) multiplies each anchor's loss by ``temperature / base_temperature``
    (``base_temperature`` = 0.07): it equals this loss at ``tau = 0.07`` and is
    ``tau / 0.07`` times it elsewhere.

    Shape:
        z1, z2: (R, B, D) or (B, D); labels: (B,) or (R, B) int, -1 unlabelled; output (R,).
    """
    check_views(z1, z2)
    tau = positive_number("tau", tau)
    unbatched, (z1, z2) = as_runs(z1, z2)
    runs, b, _ = z1.shape
    labels = check_labels(labels, runs, b)
    dtype = z1.dtype
    z = torch.cat([z1, z2], dim=1).to(compute_dtype(dtype))
    u = unit(z, normalize)
    n = 2 * b
    s = u @ u.transpose(1, 2) / tau
    idx = torch.arange(n, device=z.device)
    eye = idx[None, :] == idx[:, None]
    same_point = (idx[None, :] % b == idx[:, None] % b) & ~eye
    pos = same_point.expand(runs, n, n)
    if labels is not None:
        lab = torch.cat([labels, labels], dim=1).to(z.device)
        same = (lab[:, :, None] == lab[:, None, :]) & (lab[:, :, None] >= 0)
        pos = pos | (same & ~eye)
    lse = masked_logsumexp(s, ~eye)
    log_prob = s - lse[..., None]
    per_anchor = -(log_prob * pos).sum(-1) / pos.sum(-1)
    return finish(per_anchor.mean(1), unbatched, dtype)


class SupConLoss(TemperatureLoss):
    """SupCon loss (module form of :func:`supcon`).

    Args:
        temperature: tau > 0.

    Shape:
        z1, z2: (R, B, D) or (B, D); labels: (B,) or (R, B); output (R,) or scalar.
    """

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return supcon(z1, z2, labels, self.temperature, normalize)
