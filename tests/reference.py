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
