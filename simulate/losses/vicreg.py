"""VICReg (Bardes, Ponce, LeCun, ICLR 2022), in the convention of the authors' code."""

from __future__ import annotations

import torch
from torch import nn

from ._common import as_runs, check_views, compute_dtype, finish, nonnegative_number, positive_number


def vicreg(
    z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
    cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg per run, with the variance term averaged over the two branches:

    ``L = lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')]``

    - ``s(Z, Z') = 1/(B D) sum_{b, j} (z_bj - z'_bj)^2``, the mean squared error over the
      batch and the dimensions;
    - ``v(Z) = 1/D sum_j max(0, gamma - sqrt(Var(z_.j) + eps))``, ``Var`` the unbiased
      variance over the batch (divisor ``B - 1``);
    - ``c(Z) = 1/D sum_{i != j} C(Z)_ij^2``, ``C(Z)`` the covariance matrix (divisor
      ``B - 1``), summed (not averaged) over the two branches.

    This is the official implementation's loss (facebookresearch/vicreg, ``main_vicreg.py``,
    ``VICReg.forward``: ``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``,
    ``cov_loss`` the sum of both branches' off-diagonal squares over ``num_features``,
    ``repr_loss = F.mse_loss(x, y)``), and lightly's ``VICRegLoss`` (``var_loss = 0.5 *
    (variance_loss(z_a) + variance_loss(z_b))``). The paper's eq. (6), read literally, has
    ``mu [v(Z) + v(Z')]`` without the 1/2; its weights (25, 25, 1) were tuned with the code,
    so they are the defaults here. For the literal reading pass ``var_weight = 2 mu``.

    Shape:
        z1, z2: (R, B, D) or (B, D), B >= 2; output (R,).
    """
    check_views(z1, z2, min_batch=2, why="VICReg (variance)")
    unbatched, (z1, z2) = as_runs(z1, z2)
    dtype = z1.dtype
    z1, z2 = z1.to(compute_dtype(dtype)), z2.to(compute_dtype(dtype))
    _, b, d = z1.shape
    inv = ((z1 - z2) ** 2).mean(dim=(1, 2))

    def var_cov(z):
        zc = z - z.mean(1, keepdim=True)
        cov = zc.transpose(1, 2) @ zc / (b - 1)
        std = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2) + eps)
        v = torch.relu(gamma - std).mean(1)
        off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
        return v, (off**2).sum((1, 2)) / d

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    loss = sim_weight * inv + var_weight * (v1 + v2) / 2 + cov_weight * (c1 + c2)
    return finish(loss, unbatched, dtype)


class VICRegLoss(nn.Module):
    """VICReg (module form of :func:`vicreg`; the variance term is averaged over the two
    branches, as in the official code).

    Args:
        sim_weight, var_weight, cov_weight: lambda, mu, nu >= 0 (paper and official code:
            25, 25, 1).
        gamma: target standard deviation > 0. eps: > 0.

    Shape:
        z1, z2: (R, B, D) or (B, D); output (R,) or scalar.
    """

    def __init__(self, sim_weight=25.0, var_weight=25.0, cov_weight=1.0, gamma=1.0, eps=1e-4):
        super().__init__()
        self.sim_weight = nonnegative_number("sim_weight", sim_weight)
        self.var_weight = nonnegative_number("var_weight", var_weight)
        self.cov_weight = nonnegative_number("cov_weight", cov_weight)
        self.gamma = positive_number("gamma", gamma)
        self.eps = positive_number("eps", eps)

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        return vicreg(z1, z2, self.sim_weight, self.var_weight, self.cov_weight, self.gamma, self.eps)
