"""NT-Xent / InfoNCE (SimCLR: Chen et al., ICML 2020, eq. 1)."""

from __future__ import annotations

import math

import torch

from ._common import TemperatureLoss, as_runs, check_views, compute_dtype, finish, positive_number


def symmetric_ok(tau: float, dtype: torch.dtype) -> bool:
    """Whether unit rows may skip the max-shift of the softmax: every ``s_ij`` lies in
    ``[-1/tau, 1/tau]``, so ``exp(s_ij)`` neither overflows nor underflows while ``2/tau``
    stays well inside the dtype's exponent range (float32: tau > 0.026)."""
    return 2.0 / tau < 0.9 * -math.log(torch.finfo(dtype).tiny)


def softmax_terms(u: torch.Tensor, tau: float, symmetric: bool):
    """``(e, zsum, m)`` for rows ``u`` (R, N, D): ``e = exp(u u^T / tau - m)`` with a zero
    diagonal (the unnormalised softmax of each row over the others), ``zsum`` its row sums
    (R, N) and the shift ``m``: 0 with ``symmetric`` (no shift: ``e`` is symmetric and comes
    from one ``bmm``), else the row maximum (R, N)."""
    if symmetric:
        # exp, not exp2 (faster on CPUs): torch's float exp2 rounds differently depending on
        # the tensor's size, so a run's numbers would depend on how many runs share its chunk
        e = torch.bmm(u * (1.0 / tau), u.transpose(1, 2)).exp_()
        e.diagonal(dim1=1, dim2=2).zero_()
        return e, e.sum(-1), 0.0
    e = torch.bmm(u, u.transpose(1, 2)).div_(tau)
    e.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    m = e.amax(-1, keepdim=True)
    e.sub_(m).exp_()
    return e, e.sum(-1), m.squeeze(-1)


def ntxent_value(u: torch.Tensor, zsum: torch.Tensor, m, tau: float) -> torch.Tensor:
    """``(sum_i lse_i - 2 sum_{i<B} s_{i,i+B}) / 2B`` per run, ``lse = m + log zsum``."""
    n = u.shape[1]
    b = n // 2
    lse = zsum.log().add_(m)
    pos = (u[:, :b] * u[:, b:]).sum(-1)
    return (lse.sum(1) - (2.0 / tau) * pos.sum(1)) / n


def ntxent_direction(u: torch.Tensor, e: torch.Tensor, zsum: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """``(P + P^T) u - 2 u_partner`` with ``P = e / zsum`` row-wise: ``2B tau`` times the
    gradient of :func:`ntxent_value` with respect to the rows ``u``. A symmetric ``e``
    needs ``e u`` and ``e (u / zsum)``; otherwise ``e u`` and ``e^T (u / zsum)``."""
    b = u.shape[1] // 2
    zs = zsum.unsqueeze(-1)
    w = u / zs
    other = torch.bmm(e if symmetric else e.transpose(1, 2), w)
    g = torch.addcdiv(other, torch.bmm(e, u), zs)
    g[:, :b].sub_(u[:, b:], alpha=2.0)
    g[:, b:].sub_(u[:, :b], alpha=2.0)
    return g


def unit_rows(z: torch.Tensor):
    """``(u, r)``: rows of ``z`` divided by their norms ``r = max(|z_i|, 1e-12)`` (R, N, 1)."""
    r = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min_(1e-12)
    return z / r, r


def project_rows(g: torch.Tensor, u: torch.Tensor, r: torch.Tensor, scale: float | None = None,
                 inplace: bool = False) -> torch.Tensor:
    """``(I - u u^T) g / r`` row-wise (times ``scale`` if given): a gradient with respect to
    unit rows ``u = z / r`` carried back to ``z``. ``inplace`` overwrites ``g`` (and, with
    ``scale``, ``r``)."""
    dot = (g * u).sum(-1, keepdim=True)
    g = g.addcmul_(u, dot, value=-1.0) if inplace else torch.addcmul(g, u, dot, value=-1.0)
    if scale is None:
        return g.div_(r)
    return g.mul_((r.reciprocal_() if inplace else r.reciprocal()).mul_(scale))


class _NTXentGram(torch.autograd.Function):
    """NT-Xent of rows ``z`` (R, 2B, D) with the analytic gradient.

    Forward: ``u = z / max(|z|, 1e-12)`` (or ``u = z`` when ``normalize`` is False), ``s = u
    u^T / tau`` with the diagonal excluded, a shifted softmax ``P = e / zsum`` with ``e =
    exp(s - m)`` and ``lse = m + log zsum``; the loss is ``(sum_i lse_i - 2 sum_{i<B}
    s_{i,i+B}) / 2B``. Backward: ``dL/ds = (P - E) / 2B`` (E marks positives) and ``dL/du =
    (dL/ds + dL/ds^T) u / tau`` (:func:`ntxent_direction`), then through the normalisation
    ``dL/dz = (I - u u^T) dL/du / |z|``. One N x N buffer (``e``) is kept. Unit rows need no
    shift (``m = 0``) when :func:`symmetric_ok`; raw dot products and tiny temperatures
    shift by the row maximum.
    """

    @staticmethod
    def forward(ctx, z, tau, normalize):
        u, r = unit_rows(z) if normalize else (z, None)
        symmetric = normalize and symmetric_ok(tau, z.dtype)
        e, zsum, m = softmax_terms(u, tau, symmetric)
        ctx.save_for_backward(u, e, zsum, r if normalize else zsum)
        ctx.tau, ctx.normalize, ctx.symmetric = tau, normalize, symmetric
        return ntxent_value(u, zsum, m, tau)

    @staticmethod
    def backward(ctx, grad_out):
        u, e, zsum, r = ctx.saved_tensors
        g = ntxent_direction(u, e, zsum, ctx.symmetric)
        g.mul_((grad_out / (u.shape[1] * ctx.tau)).view(-1, 1, 1))
        if ctx.normalize:
            g = project_rows(g, u, r)
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
