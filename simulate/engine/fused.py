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

from ..losses.ntxent import ntxent_direction, ntxent_value, project_rows, softmax_terms, symmetric_ok, unit_rows


def supported(run, dtype: torch.dtype) -> bool:
    """Whether a chunk of runs like ``run`` takes the fused path (see
    :attr:`simulate.config.RunConfig.fused_step`) in ``dtype``."""
    return run.fused_step and dtype in (torch.float32, torch.float64)


def ntxent_clop_value_and_grad(z: torch.Tensor, tau: float, clop: tuple | None = None, value: bool = True):
    """``(loss (R,), dloss/dz (R, 2B, D))`` of NT-Xent (averaged over the 2B anchors) plus,
    with ``clop = (targets, row_weights, clop_weight)``, ``clop_weight`` (R,) times cosine
    CLOP: ``targets`` (R, B, D) each point's prototype and ``row_weights`` (R, B) each view's
    weight in the CLOP mean, as
    :func:`simulate.losses.clop.prototype_targets` gives them. ``value=False`` skips the loss
    (None). Inputs are not validated."""
    n = z.shape[1]
    b = n // 2
    u, r = unit_rows(z)
    symmetric = symmetric_ok(tau, z.dtype)
    e, zsum, m = softmax_terms(u, tau, symmetric)
    loss = ntxent_value(u, zsum, m, tau) if value else None
    g = ntxent_direction(u, e, zsum, symmetric)
    del e
    scale = 1.0 / (n * tau)
    if clop is not None:
        targets, row_weights, clop_weight = clop
        clop_weight = clop_weight.view(-1, 1)
        if value:
            cos = (u[:, :b] * targets).sum(-1) + (u[:, b:] * targets).sum(-1)
            loss = loss + clop_weight.view(-1) * ((2 - cos) * row_weights).sum(1)
        # in units of the NT-Xent direction, which carries the factor 1 / (2B tau) = scale
        coef = (row_weights * clop_weight).unsqueeze_(-1).mul_(-1.0 / scale)
        g[:, :b].addcmul_(targets, coef)
        g[:, b:].addcmul_(targets, coef)
    return loss, project_rows(g, u, r, scale=scale, inplace=True)
