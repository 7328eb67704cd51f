"""States to probe and the run's natural scales: the collapsed configuration +-u*, the
reference arrangements of :func:`reference_state`, the unit of learning rate
(:func:`rate_scale`) and the rows' initial squared norm."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..config import RunConfig
from ..losses import make_prototypes
from .step import DT, _check_run


def rate_scale(run: RunConfig) -> float:
    """The natural unit of learning rate of a run: ``2 B tau nu^2``. The engine's losses are
    means over the 2B anchors of logits ``cos / tau`` (so every critical rate of the claims,
    which sum over anchors, is multiplied by 2B and is proportional to tau), and in the free
    mode a row of norm ``nu`` moves its direction at the effective rate ``lr / nu^2``."""
    tau = run.temperature if run.loss in ("ntxent", "supcon", "dcl") else 1.0
    return 2 * run.batch_size * tau * initial_sq_norm(run)


def initial_sq_norm(run: RunConfig) -> float:
    """Mean squared norm of the free rows at the start: 1 in the sphere modes, ``init_norm^2``
    when set, else the views' ``mean_scale^2 + d (sigma^2 + aug_sigma^2)`` (isotropic noise)."""
    if run.update_mode != "free":
        return 1.0
    if run.init_norm is not None:
        return float(run.init_norm) ** 2
    noise_dims = run.d if run.noise_rank is None else run.noise_rank
    return run.mean_scale**2 + noise_dims * run.sigma**2 + run.d * run.aug_sigma**2


def collapsed_state(run: RunConfig, dim: int = 2) -> torch.Tensor:
    """The collapsed configuration the training runs fall into: rows ``[z1; z2]`` (2B, dim) on
    one line, +-u*, every view 1 at +u* and its partner (view 2) at -u* (the sign-flip pairing
    of claim ``rank1_cycle``; the raw-gradient step flips every row each step)."""
    b = run.batch_size
    z = torch.zeros(2 * b, dim, dtype=DT)
    z[:b, 0], z[b:, 0] = 1.0, -1.0
    return z


def class_collapsed_state(run: RunConfig) -> torch.Tensor:
    """The class-collapsed configuration: rows ``[z1; z2]`` (2B, D), both views of every point
    of the analysis batch (classes cycling through the k classes, as
    :func:`simulate.stability.edges.attraction_edge`'s batch) at its class's vertex of a
    regular simplex of k unit vectors (the simplex prototypes of
    :func:`simulate.losses.make_prototypes`: pairwise cosine ``-1 / (k - 1)``, rank k - 1),
    the minimiser SupCon's class positives pull towards. Needs ``2 <= k <= D + 1``
    (ValueError otherwise)."""
    run = _check_run(run)
    vertices = make_prototypes(run.k, run.embedding_dim, "simplex").to(DT)
    cls = torch.arange(run.batch_size) % run.k
    return torch.cat([vertices[cls], vertices[cls]])


STATE_KINDS = ("all_equal", "rank1", "rank1_together", "prototypes", "axes", "simplex", "healthy")


def reference_state(kind: str, run: RunConfig, healthy_lr: float | None = None) -> torch.Tensor:
    """A state ``[z1; z2]`` (2B, D) of unit rows to probe with :func:`spectrum`.

    Kinds: ``all_equal`` (every row at e_0); ``rank1`` (:func:`collapsed_state`: view 1 at
    +e_0, partners at -e_0); ``rank1_together`` (+-e_0 alternating, partners on the same side);
    ``prototypes`` (every point at its class prototype, classes as in the analysis batch's
    labels, CLOP's fixed point); ``axes`` / ``simplex`` (claim ``ntxent_batch``'s arrangements
    of aligned pairs: B = 2D pairs at +-e_i, or B = D + 1 at simplex vertices); ``healthy``
    (the first B points of the run trained by the engine at ``healthy_lr``, default 1e-3 x
    :func:`rate_scale`, for the run's steps: the state training reaches at a small rate).
    """
    run = _check_run(run)
    b, d = run.batch_size, run.embedding_dim
    if kind not in STATE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(STATE_KINDS)}, got {kind!r}")
    z = torch.zeros(2 * b, d, dtype=DT)
    if kind == "all_equal":
        z[:, 0] = 1.0
    elif kind == "rank1":
        z = collapsed_state(run, d)
    elif kind == "rank1_together":
        sign = torch.where(torch.arange(b) % 2 == 0, 1.0, -1.0).to(DT)
        z[:b, 0], z[b:, 0] = sign, sign
    elif kind == "prototypes":
        protos = make_prototypes(run.k, d, run.prototypes).to(DT)
        cls = torch.arange(b) % run.k
        z = torch.cat([protos[cls], protos[cls]])
    elif kind in ("axes", "simplex"):
        from theory.batch import arrangement

        need = 2 * d if kind == "axes" else d + 1
        if b != need:
            raise ValueError(f"batch_size must be {need} for the {kind} arrangement in "
                             f"dimension {d}, got {b}")
        z = torch.tensor(arrangement(kind, d)[0], dtype=DT)
    else:
        from ..engine import train_chunk

        lr = 1e-3 * rate_scale(run) if healthy_lr is None else healthy_lr
        w = train_chunk([replace(run, lr=float(lr))]).model.weight[0].detach().to(DT)
        n = w.shape[0] // 2
        z = torch.cat([w[:b], w[n:n + b]])
        z = z / z.norm(dim=-1, keepdim=True)
    return z
