"""CLOP: pull labelled embeddings toward fixed orthonormal class prototypes
(Li, Nguyen, Pimentel-Alarcon, arXiv 2403.18699)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import as_runs, check_labels, check_views, compute_dtype, finish, nonnegative_number

DISTANCES = ("cosine", "euclidean", "manhattan")
PROTOTYPE_KINDS = ("orthonormal", "simplex")
#: mixed into the prototypes' seed so that their stream differs from the data's for one seed
#: (the bytes of "pro"; the data use "mix", :data:`simulate.data.MIXTURE_SEED_SALT`)
PROTOTYPE_SEED_SALT = 0x70726F


def check_prototype_shape(k: int, d: int, kind: str = "orthonormal") -> None:
    """The one check that ``k`` prototypes of kind ``kind`` fit in ``d`` dimensions (k <= d
    orthonormal, 2 <= k <= d + 1 simplex); ValueError naming ``k`` otherwise."""
    if kind not in PROTOTYPE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PROTOTYPE_KINDS)}, got {kind!r}")
    if not (isinstance(k, int) and k >= 1) or not (isinstance(d, int) and d >= 1):
        raise ValueError(f"k and d must be integers >= 1, got k={k!r}, d={d!r}")
    if kind == "orthonormal" and k > d:
        raise ValueError(f"k must be <= the embedding dimension {d} for orthonormal prototypes, got k = {k}")
    if kind == "simplex" and (k > d + 1 or k < 2):
        raise ValueError(f"k must be in [2, {d + 1}] (the embedding dimension + 1) for simplex "
                         f"prototypes, got k = {k}")


def make_prototypes(k: int, d: int, kind: str = "orthonormal", seed: int = 0) -> torch.Tensor:
    """Fixed unit prototypes ``(k, d)`` in float64.

    ``orthonormal``: k rows of a seeded QR of a Gaussian matrix (needs k <= d).
    ``simplex``: a simplex ETF, pairwise cosine -1/(k-1) (needs k <= d + 1), the ablation
    the paper argues against.
    """
    check_prototype_shape(k, d, kind)
    from ..data import class_directions

    rng = np.random.default_rng(np.random.SeedSequence([seed, PROTOTYPE_SEED_SALT]))
    return torch.as_tensor(class_directions(kind, k, d, rng), dtype=torch.float64).contiguous()


def clop_term(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
    weight: float = 1.0, distance: str = "cosine",
) -> torch.Tensor:
    """``weight * mean_{labelled i} (d(z_i, p_{y_i}) + d(z'_i, p_{y_i})) / 2`` per run.

    Distances act on L2-normalised embeddings: cosine ``1 - cos``, euclidean ``|u - p|_2``,
    manhattan ``|u - p|_1``. Rows with label -1 are skipped; a run with no labelled row
    gives 0 (and a zero gradient). For cosine the value lies in [0, 2] (times weight) and is 0
    exactly when every labelled embedding points at its prototype.

    Shape:
        z1, z2: (R, B, D) or (B, D); labels: (B,) or (R, B); prototypes: (K, D); output (R,).
    """
    check_views(z1, z2)
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    unbatched, (z1, z2) = as_runs(z1, z2)
    runs, b, d = z1.shape
    if prototypes.dim() != 2 or prototypes.shape[1] != d:
        raise ValueError(f"prototypes must have shape (K, {d}), got {tuple(prototypes.shape)}")
    labels = check_labels(labels, runs, b, prototypes.shape[0]).to(z1.device)
    dtype = z1.dtype
    cdt = compute_dtype(dtype)
    protos = prototypes.to(device=z1.device, dtype=cdt)
    return finish(weight * _clop_per_run(z1.to(cdt), z2.to(cdt), labels, protos, distance), unbatched, dtype)


def _clop_per_run(z1, z2, labels, protos, distance: str) -> torch.Tensor:
    """Unchecked core of :func:`clop_term` (R, B, D) -> (R,), weight 1; inputs validated."""
    return clop_rows(torch.cat([z1, z2], 1), labels, protos, distance)


class _CosineCLOP(torch.autograd.Function):
    """Cosine CLOP on rows ``z = [z1; z2]`` with its analytic gradient:
    ``dL/dz_i = -w_i (p - cos_i u_i) / |z_i|`` with ``w_i = 1 / (2 m)`` for labelled rows."""

    @staticmethod
    def forward(ctx, z, target2, weight2):
        r = z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        u = z / r
        cos = (u * target2).sum(-1)
        ctx.save_for_backward(u, r, cos, target2, weight2)
        return ((1 - cos) * weight2).sum(1)

    @staticmethod
    def backward(ctx, grad_out):
        u, r, cos, target2, weight2 = ctx.saved_tensors
        coef = (weight2 * grad_out[:, None]).unsqueeze(-1)
        return -coef * (target2 - cos.unsqueeze(-1) * u) / r, None, None


def prototype_weights(labels: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Weight of each view of each point in the CLOP mean (R, B): ``1 / (2 m)`` for labelled
    points and 0 otherwise, with ``m`` the run's number of labelled points."""
    labelled = labels >= 0
    return labelled.to(dtype) / (2 * labelled.sum(1, keepdim=True).clamp(min=1)).to(dtype)


def prototype_rows(labels: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Each point's prototype ``p_{y_i}`` (R, B, D; any prototype for unlabelled points)."""
    return protos.index_select(0, labels.clamp(min=0).reshape(-1)).view(labels.shape + (-1,))


def prototype_targets(labels: torch.Tensor, protos: torch.Tensor):
    """``(target, weight)``: :func:`prototype_rows` and :func:`prototype_weights`."""
    return prototype_rows(labels, protos), prototype_weights(labels, protos.dtype)


def clop_rows(z, labels, protos, distance: str = "cosine") -> torch.Tensor:
    """Unchecked CLOP on the concatenated views ``z = [z1; z2]`` (R, 2B, D) with labels (R, B),
    weight 1 -> (R,). Used by the training engine, whose inputs are validated once."""
    if distance == "cosine" and z.dtype in (torch.float32, torch.float64):
        target, w = prototype_targets(labels, protos.to(z.dtype))
        return _CosineCLOP.apply(z, torch.cat([target, target], 1), torch.cat([w, w], 1))
    labelled = labels >= 0
    target = prototype_rows(labels, protos)
    u = torch.nn.functional.normalize(z, dim=-1)
    t2 = torch.cat([target, target], 1)
    if distance == "cosine":
        d = 1 - (u * t2).sum(-1)
    elif distance == "euclidean":
        d = (u - t2).norm(dim=-1)
    else:
        d = (u - t2).abs().sum(-1)
    b = labels.shape[1]
    per_row = 0.5 * (d[:, :b] + d[:, b:]) * labelled
    return per_row.sum(1) / labelled.sum(1).clamp(min=1)


class CLOPLoss(nn.Module):
    """CLOP term with fixed prototypes held as a buffer.

    Args:
        num_classes: K.
        dim: embedding dimension D (K <= D for orthonormal prototypes).
        weight: lambda >= 0.
        distance: cosine | euclidean | manhattan.
        prototypes: orthonormal | simplex.
        seed: seed of the prototype draw.

    Shape:
        z1, z2: (R, B, D) or (B, D); labels: (B,) or (R, B), -1 unlabelled; output (R,).
    """

    def __init__(self, num_classes: int, dim: int, weight: float = 1.0, distance: str = "cosine",
                 prototypes: str = "orthonormal", seed: int = 0):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        self.weight = nonnegative_number("weight", weight)
        self.distance = distance
        self.register_buffer("prototypes", make_prototypes(num_classes, dim, prototypes, seed))

    def forward(self, z1, z2, labels):
        return clop_term(z1, z2, labels, self.prototypes, self.weight, self.distance)


class WithCLOP(nn.Module):
    """``base(z1, z2, labels) + CLOP(z1, z2, labels)``: any base loss with the CLOP term."""

    def __init__(self, base: nn.Module, clop: CLOPLoss):
        super().__init__()
        self.base, self.clop = base, clop

    def forward(self, z1, z2, labels=None, normalize: bool = True):
        if labels is None:
            raise ValueError("labels are required with CLOP (use -1 for unlabelled rows)")
        return self.base(z1, z2, labels, normalize) + self.clop(z1, z2, labels)
