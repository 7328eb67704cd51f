"""Independent float64 references for the tests: torch autograd on losses written from the
papers' formulas, and the literal update rules (step, then renormalise)."""

from __future__ import annotations

import torch

DT = torch.float64


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def ntxent_sum_loop(z: torch.Tensor, pos, tau: float, raw: bool = False) -> torch.Tensor:
    """NT-Xent summed over anchors, one anchor at a time (SimCLR eq. 1)."""
    u = z if raw else unit(z)
    total = z.new_zeros(())
    n = u.shape[0]
    for i in range(n):
        sims = torch.stack([u[i] @ u[j] / tau for j in range(n) if j != i])
        total = total - u[i] @ u[int(pos[i])] / tau + torch.logsumexp(sims, 0)
    return total


def grad(f, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x)
    return g.detach()


def sphere_step(u: torch.Tensor, g: torch.Tensor, eta: float, project: bool = True):
    if project:
        g = g - (u * g).sum(-1, keepdim=True) * u
    return unit(u - eta * g)


# ----------------------------------------------------------------------------- loss loops
import math  # noqa: E402


def cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def ntxent_views_loop(z1, z2, tau):
    """SimCLR eq. 1, averaged over 2B anchors, one anchor at a time."""
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        den = sum(torch.exp(cos(z[i], z[k]) / tau) for k in range(n) if k != i)
        total = total - torch.log(torch.exp(cos(z[i], z[p]) / tau) / den)
    return total / n


def supcon_views_loop(z1, z2, labels, tau):
    """Khosla et al. eq. 2 (L_out); positives: the other view and same-label labelled rows."""
    z = torch.cat([z1, z2])
    lab = torch.cat([labels, labels]).tolist()
    n, b = z.shape[0], z1.shape[0]
    total = 0.0
    for i in range(n):
        pos = [p for p in range(n) if p != i and (p % b == i % b or (lab[i] >= 0 and lab[p] == lab[i]))]
        den = sum(torch.exp(cos(z[i], z[k]) / tau) for k in range(n) if k != i)
        total = total - sum(torch.log(torch.exp(cos(z[i], z[p]) / tau) / den) for p in pos) / len(pos)
    return total / n


def dcl_views_loop(z1, z2, tau):
    z = torch.cat([z1, z2])
    n, b = z.shape[0], z1.shape[0]
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        den = sum(torch.exp(cos(z[i], z[k]) / tau) for k in range(n) if k not in (i, p))
        total = total - cos(z[i], z[p]) / tau + torch.log(den)
    return total / n


def clop_loop(z1, z2, labels, protos, weight, distance="cosine"):
    """CLOP: ``weight * mean_{labelled i} (d(z_i, p_y) + d(z'_i, p_y)) / 2`` on unit rows, with
    ``d`` = ``1 - cos`` (the paper's loss), the Euclidean or the Manhattan distance."""
    rows = [i for i in range(len(labels)) if labels[i] >= 0]
    if not rows:
        return torch.zeros((), dtype=z1.dtype)

    def dist(z, p):
        if distance == "cosine":
            return 1 - cos(z, p)
        u = z / z.norm()
        if distance == "euclidean":
            return torch.sqrt(sum((u[k] - p[k]) ** 2 for k in range(len(u))))
        return sum(abs(u[k] - p[k]) for k in range(len(u)))

    s = sum((dist(z1[i], protos[labels[i]]) + dist(z2[i], protos[labels[i]])) / 2 for i in rows)
    return weight * s / len(rows)


def vicreg_terms_loop(z1, z2, gamma=1.0, eps=1e-4):
    """The five VICReg terms ``(s, v1, v2, c1, c2)`` as Python floats, one element at a time
    (no tensor arithmetic): ``s`` the mean squared error over the B x D entries, ``v`` the
    mean over dimensions of ``max(0, gamma - sqrt(var + eps))`` with the unbiased variance,
    ``c`` the sum of squared off-diagonal covariances (divisor B - 1) over D."""
    a, c = z1.tolist(), z2.tolist()
    b, d = len(a), len(a[0])
    s = 0.0
    for k in range(b):
        for j in range(d):
            s += (a[k][j] - c[k][j]) ** 2
    s /= b * d

    def var_cov(z):
        mean = [sum(z[k][j] for k in range(b)) / b for j in range(d)]
        zc = [[z[k][j] - mean[j] for j in range(d)] for k in range(b)]
        v = 0.0
        for j in range(d):
            var = sum(zc[k][j] ** 2 for k in range(b)) / (b - 1)
            v += max(0.0, gamma - math.sqrt(var + eps))
        cov = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov += (sum(zc[k][i] * zc[k][j] for k in range(b)) / (b - 1)) ** 2
        return v / d, cov / d

    v1, c1 = var_cov(a)
    v2, c2 = var_cov(c)
    return s, v1, v2, c1, c2


def vicreg_loop(z1, z2, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    """VICReg as the official code computes it (facebookresearch/vicreg, ``main_vicreg.py``,
    ``VICReg.forward``): ``lam s + mu (v1 + v2) / 2 + nu (c1 + c2)``, the variance term
    averaged over the two branches, the covariance term summed."""
    s, v1, v2, c1, c2 = vicreg_terms_loop(z1, z2, gamma, eps)
    return lam * s + mu * (v1 + v2) / 2 + nu * (c1 + c2)


def barlow_loop(z1, z2, lambd=5e-3, eps=1e-5):
    """Barlow Twins as the official code computes it (facebookresearch/barlowtwins,
    ``main.py``: ``BatchNorm1d(affine=False)`` per view, ``c = bn(z1).T @ bn(z2) / B``,
    ``on_diag + lambd * off_diag``), one entry of ``c`` at a time."""
    b, d = z1.shape

    def std(z):
        m = z.mean(0)
        return (z - m) / torch.sqrt(((z - m) ** 2).mean(0) + eps)

    a, c = std(z1), std(z2)
    out = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[k, i] * c[k, j] for k in range(b)) / b
            out = out + ((1 - cij) ** 2 if i == j else lambd * cij**2)
    return out


def rankme_numpy(z):
    import numpy as np

    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))

