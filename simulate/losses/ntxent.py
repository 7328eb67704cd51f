"""NT-Xent / InfoNCE (SimCLR: Chen et al., ICML 2020, eq. 1)."""

from __future__ import annotations

import math

import torch

from ._common import TemperatureLoss, as_runs, check_views, compute_dtype, finish, positive_number


class _NTXentGram(torch.autograd.Function):
    """NT-Xent of rows ``z`` (R, 2B, D) with the analytic gradient.

    Forward: ``u = z / max(|z|, 1e-12)`` (or ``u = z`` when ``normalize`` is False), ``s = u
    u^T / tau`` with the diagonal excluded, a row-max-shifted softmax ``P`` and ``lse``; the
    loss is ``(sum_i lse_i - 2 sum_{i<B} s_{i,i+B}) / 2B``. Backward: ``dL/ds = (P - E) / 2B``
    (E marks positives), ``dL/du = (dL/ds + dL/ds^T) u / tau`` as two batched matmuls, and
    through the normalisation ``dL/dz = (I - u u^T) dL/du / |z|``. One N x N buffer (the unnormalised softmax) is kept.
    """

    @staticmethod
    def forward(ctx, z, tau, normalize):
        n = z.shape[1]
        b = n // 2
        if normalize:
            r = z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            u = z / r
        else:
            r, u = None, z
        s = torch.bmm(u, u.transpose(1, 2)).div_(tau)
        s.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        if normalize and 2.0 / tau < 0.9 * -math.log(torch.finfo(z.dtype).tiny):
            # unit rows: every s_ij lies in [-1/tau, 1/tau]; shifting by 1/tau cannot underflow
            m = torch.full_like(s[..., :1], 1.0 / tau)
        else:
            m = s.amax(-1, keepdim=True)
        e = s.sub_(m).exp_()  # unnormalised softmax; P = e / zsum row-wise
        zsum = e.sum(-1, keepdim=True)
        lse = (m + zsum.log()).squeeze(-1)
        pos = (u[:, :b] * u[:, b:]).sum(-1) / tau
        ctx.save_for_backward(u, e, zsum, r if normalize else zsum)
        ctx.tau, ctx.normalize = tau, normalize
        return (lse.sum(1) - 2 * pos.sum(1)) / n

    @staticmethod
    def backward(ctx, grad_out):
        u, e, zsum, r = ctx.saved_tensors
        n = u.shape[1]
        b = n // 2
        scale = (grad_out / (n * ctx.tau)).view(-1, 1, 1)
        # (P + P^T) u with P = diag(1/zsum) e
        g = torch.bmm(e, u).div_(zsum).add_(torch.bmm(e.transpose(1, 2), u / zsum))
        g[:, :b].sub_(u[:, b:], alpha=2.0)
        g[:, b:].sub_(u[:, :b], alpha=2.0)
        g.mul_(scale)
        if ctx.normalize:
            g = (g - (g * u).sum(-1, keepdim=True) * u).div_(r)
        return g, None, None


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
    loss = _NTXentGram.apply(z, tau, normalize)
    return finish(loss, unbatched, dtype)


class NTXentLoss(TemperatureLoss):
    """NT-Xent loss (module form of :func:`nt_xent`).

    Args:
        temperature: tau > 0.

    Shape:
        z1, z2: (R, B, D) or (B, D); output (R,) or scalar.
    """

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return nt_xent(z1, z2, self.temperature, normalize)

    def forward_rows(self, z: torch.Tensor, labels=None, normalize: bool = True) -> torch.Tensor:
        """Unchecked fast path on the concatenated views ``z = [z1; z2]`` (R, 2B, D), float32
        or float64; used by the training engine, whose inputs are validated once."""
        return _NTXentGram.apply(z, self.temperature, normalize)
