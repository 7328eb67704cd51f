"""Value and gradient of the engine's most common objective in one pass, without autograd.

The objective is NT-Xent on unit rows plus, per run, ``lambda_r`` times cosine CLOP, over
the rows ``z = [z1; z2]`` (R, 2B, D) of a minibatch. Both terms act on ``u = z / |z|``, so
their gradients with respect to ``u`` are summed first and carried back to ``z`` through the
normalisation once:

    dL/du = ((P + P^T) u - 2 u_partner) / (2B tau) - lambda_r w_i p_{y_i}
    dL/dz = (I - u u^T) dL/du / |z|

(``P`` the softmax over the other rows, ``w_i = 1 / (2 m)`` on labelled rows). The autograd
path (``objective`` then ``torch.autograd.grad``) computes the same quantities term by term;
the tests compare both with float64 autograd of the slow loops.
"""

from __future__ import annotations

import torch

from ..losses.ntxent import ntxent_direction, ntxent_value, project_rows, softmax_terms, unit_rows, unshifted_ok


def supported(run, dtype: torch.dtype) -> bool:
    """Whether a chunk of free-embedding runs like ``run`` may take the fused path."""
    return (run.model == "free" and run.loss == "ntxent" and run.update_mode in ("free", "sphere")
            and run.distance == "cosine" and dtype in (torch.float32, torch.float64))


def ntxent_clop_value_and_grad(z: torch.Tensor, tau: float, clop: tuple | None = None, value: bool = True):
    """``(loss (R,), dloss/dz (R, 2B, D))`` of NT-Xent (averaged over the 2B anchors) plus,
    with ``clop = (target, weight, lam)``, ``lam`` (R,) times cosine CLOP: ``target`` (R, B, D)
    each point's prototype and ``weight`` (R, B) each view's weight, as
    :func:`simulate.losses.clop.prototype_targets` gives them. ``value=False`` skips the loss
    (None). Inputs are not validated."""
    n = z.shape[1]
    b = n // 2
    u, r = unit_rows(z)
    sym = unshifted_ok(tau, z.dtype)
    e, zsum, m = softmax_terms(u, tau, sym)
    loss = ntxent_value(u, zsum, m, tau) if value else None
    g = ntxent_direction(u, e, zsum, sym)
    del e
    scale = 1.0 / (n * tau)
    if clop is not None:
        target, weight, lam = clop
        lam = lam.view(-1, 1)
        if value:
            cos = (u[:, :b] * target).sum(-1) + (u[:, b:] * target).sum(-1)
            loss = loss + lam.view(-1) * ((2 - cos) * weight).sum(1)
        # in units of the NT-Xent direction, which carries the factor 1 / (2B tau) = scale
        coef = (weight * lam).unsqueeze_(-1).mul_(-1.0 / scale)
        g[:, :b].addcmul_(target, coef)
        g[:, b:].addcmul_(target, coef)
    return loss, project_rows(g, u, r, scale=scale, inplace=True)
