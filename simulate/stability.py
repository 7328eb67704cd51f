"""Linear stability of the real training step, and the onset of collapse.

The step is the engine's update of free embeddings on one batch: rows ``z = [z1; z2]``
(2B, D), the loss of the run (any base loss of :mod:`simulate.losses`, plus CLOP), a plain
gradient step of size ``lr`` (with weight decay if the run has it), and, in the sphere modes,
renormalisation of every row (see :mod:`simulate.models`). A full batch is the batch of all
N points (B = N). :func:`make_step` builds that map in float64; :func:`spectrum` gives the
spectral radius and leading modes of the Jacobian of one or two steps from Jacobian-vector
products (``torch.func.jvp``; dense only for small states, Arnoldi iteration otherwise);
:func:`free_mode_split` separates, in the free mode, the radial (norm) direction from the
tangent spectrum of the direction map and reports the effective rate ``lr / |z|^2``.

What is written here rather than taken from the engine (the engine's pieces are not
twice-differentiable): NT-Xent is evaluated as :func:`simulate.losses.supcon` without labels
(the same value: SupCon falls back to the other view as the only positive) because
``nt_xent``'s analytic backward cannot be differentiated again; the cosine CLOP term is
written from its formula (``lambda * mean over labelled points of (d(z, p) + d(z', p)) / 2``
with ``d = 1 - cos``; :func:`simulate.losses.clop.clop_rows` uses an analytic backward for it).
Momentum is not covered (the state would include the momentum buffer); MLP encoders are not
covered (the state is the free embeddings).

"Collapsed" is :data:`COLLAPSED_RANK`; the onset of a configuration is the learning rate above
which its runs end collapsed (:func:`measure_onset`), predicted by :func:`predict_onset`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch.func import jvp, vjp

from .config import RunConfig
from .losses import BASE_LOSSES, dcl, make_prototypes, supcon
from .losses.clop import clop_rows

DT = torch.float64

#: A run is *collapsed* when the RankMe effective rank (:func:`simulate.metrics.effective_rank`,
#: over all its 2N embedding rows) at the last of its steps is at or below this value. A
#: configuration on one line (all equal, or +-u*) has rank 1; two equally weighted orthogonal
#: directions have rank 2; 1.5 lies halfway, so a run counts as collapsed only when one
#: direction carries almost all of its spectrum. (metrics.collapse_state, about cosines, is
#: a different, stricter test and is left as it is.)
COLLAPSED_RANK = 1.5
#: states up to this many numbers get their Jacobian spectrum from the dense matrix (built
#: column by column from Jacobian-vector products); larger states use Arnoldi iteration
DENSE_LIMIT = 600


def _check_run(run: RunConfig) -> RunConfig:
    if not isinstance(run, RunConfig):
        raise ValueError(f"run must be a simulate.config.RunConfig, got {type(run).__name__}")
    if run.model != "free":
        raise ValueError(f"run.model must be 'free' (the stability analysis acts on free "
                         f"embeddings), got {run.model!r}")
    if run.momentum != 0:
        raise ValueError(f"run.momentum must be 0 for the stability analysis, got {run.momentum!r}")
    return run


# ---------------------------------------------------------------------------- the step map


def cosine_clop(z: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine CLOP with weight 1 on rows ``z = [z1; z2]`` (2B, D), labels (B,): the mean over
    labelled points of ``(1 - cos(z_i, p) + 1 - cos(z'_i, p)) / 2``; 0 without labels."""
    b = labels.shape[0]
    lab = labels >= 0
    m = int(lab.sum())
    if m == 0:
        return z.new_zeros(())
    u = z / z.norm(dim=-1, keepdim=True)
    p = protos[labels.clamp(min=0)]
    cos = (u[:b] * p).sum(-1) + (u[b:] * p).sum(-1)
    return ((1 - cos / 2) * lab).sum() / m


@dataclass
class StepMap:
    """The training step of one run on one batch, as a function of the rows ``z`` (2B, D).

    Attributes:
        run: the configuration (loss, temperature, CLOP weight and distance, update mode,
            weight decay); ``lr`` the learning rate used (the run's unless overridden).
        labels: (B,) int64, -1 for unlabelled points (CLOP and SupCon read them).
        prototypes: (K, D) float64 or None (no CLOP).
    """

    run: RunConfig
    lr: float
    labels: torch.Tensor
    prototypes: torch.Tensor | None

    @property
    def raw(self) -> bool:
        return self.run.update_mode == "sphere_raw"

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """The run's objective on the rows ``z`` (2B, D): base loss + lambda * CLOP."""
        run, b = self.run, z.shape[0] // 2
        z1, z2 = z[:b], z[b:]
        norm = not self.raw
        if run.loss == "ntxent":
            val = supcon(z1, z2, None, run.temperature, norm)
        elif run.loss == "supcon":
            val = supcon(z1, z2, self.labels, run.temperature, norm)
        elif run.loss == "dcl":
            val = dcl(z1, z2, run.temperature, norm)
        else:
            val = BASE_LOSSES[run.loss]()(z1, z2, None, norm)
        if self.prototypes is not None and run.clop_weight > 0:
            if run.distance == "cosine":
                term = cosine_clop(z, self.labels, self.prototypes)
            else:
                term = clop_rows(z[None], self.labels[None], self.prototypes, run.distance)[0]
            val = val + run.clop_weight * term
        return val

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(self.loss)(z)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        g = self.grad(z)
        if self.run.weight_decay:
            g = g + self.run.weight_decay * z
        new = z - self.lr * g
        if self.run.update_mode != "free":
            new = new / new.norm(dim=-1, keepdim=True)
        return new

    def iterate(self, z: torch.Tensor, steps: int) -> torch.Tensor:
        for _ in range(steps):
            z = self(z)
        return z

    def jvp(self, z: torch.Tensor, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``J v`` for the Jacobian ``J`` of ``steps`` steps at ``z``."""
        return jvp(lambda x: self.iterate(x, steps), (z,), (v,))[1]

    def vjp(self, z: torch.Tensor, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``J^T v`` for the Jacobian ``J`` of ``steps`` steps at ``z``."""
        _, pull = vjp(lambda x: self.iterate(x, steps), z)
        return pull(v)[0]


def make_step(run: RunConfig, labels=None, lr: float | None = None) -> StepMap:
    """The step map of ``run`` on a batch with ``labels`` (B,) (None: unlabelled).

    ``lr`` overrides the run's learning rate. The prototypes are the engine's
    (:func:`simulate.losses.make_prototypes` of the run's k, embedding dimension and kind).
    """
    run = _check_run(run)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.dim() != 1:
            raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    protos = None
    if run.clop_weight > 0:
        protos = make_prototypes(run.k, run.embedding_dim, run.prototypes).to(DT)
    return StepMap(run, float(run.lr if lr is None else lr),
                   labels if labels is not None else torch.empty(0, dtype=torch.int64), protos)


def _labels_for(step: StepMap, b: int) -> StepMap:
    if step.labels.numel() == b:
        return step
    if step.labels.numel() == 0:
        return replace(step, labels=torch.full((b,), -1, dtype=torch.int64))
    raise ValueError(f"labels must have shape ({b},) for a state of {2 * b} rows, "
                     f"got {tuple(step.labels.shape)}")


# ---------------------------------------------------------------------------- spectra


def tangent_projector(z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (I - u_i u_i^T) v_i`` row by row, ``u = z / |z|``."""
    u = z / z.norm(dim=-1, keepdim=True)
    return lambda v: v - (v * u).sum(-1, keepdim=True) * u


def rotation_modes(z: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (m, 2B, D) of the infinitesimal global rotations ``v_i = A z_i``
    (A antisymmetric) at ``z``: the neutral directions of every rotation-invariant loss."""
    n, d = z.shape
    gens = []
    for a in range(d):
        for b in range(a + 1, d):
            v = torch.zeros_like(z)
            v[:, a], v[:, b] = -z[:, b], z[:, a]
            gens.append(v.reshape(-1))
    if not gens:
        return z.new_zeros((0, n, d))
    m = torch.stack(gens, 1)
    q, r = torch.linalg.qr(m)
    keep = r.diagonal().abs() > 1e-9 * max(1.0, float(r.diagonal().abs().max()))
    return q[:, keep].T.reshape(-1, n, d)


def spectrum(step: StepMap, z: torch.Tensor, steps: int = 1, k: int = 4,
             tangent: bool = True, deflate: torch.Tensor | None = None) -> dict:
    """Spectral radius and leading modes of the Jacobian of ``steps`` steps at ``z``.

    Args:
        step: the step map. z: the state (2B, D); it need not be a fixed point (then the
            spectrum is that of the local linear map).
        steps: 1 (one step) or 2 (two steps, for period-2 orbits such as +-u* flipping).
        k: number of leading eigenvalues and modes returned.
        tangent: restrict to the tangent space of every row (``P J P``, P the row-wise
            projection at ``z``); the sphere modes have no radial freedom.
        deflate: an orthonormal basis (m, 2B, D) of an invariant subspace to remove (e.g.
            :func:`rotation_modes` at a fixed point of a rotation-invariant loss, whose
            multipliers are exactly +-1); the operator becomes ``Q P J P Q``.

    Returns:
        ``radius`` (largest modulus), ``eigenvalues`` (k complex, by decreasing modulus),
        ``modes`` (k, 2B, D) real parts of the eigenvectors, ``method`` (dense | arnoldi).
    """
    if steps not in (1, 2):
        raise ValueError(f"steps must be 1 or 2, got {steps!r}")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    z = z.detach().to(DT)
    if z.dim() != 2 or z.shape[0] % 2:
        raise ValueError(f"z must have shape (2B, D), got {tuple(z.shape)}")
    step = _labels_for(step, z.shape[0] // 2)
    proj = tangent_projector(z) if tangent else (lambda v: v)
    basis = None if deflate is None or len(deflate) == 0 else deflate.reshape(len(deflate), -1).to(DT)

    def q(v):
        if basis is None:
            return v
        flat = v.reshape(-1)
        return (flat - basis.T @ (basis @ flat)).reshape(v.shape)

    def op(v):
        return q(proj(step.jvp(z, proj(q(v)), steps)))

    n = z.numel()
    if n <= DENSE_LIMIT:
        eye = torch.eye(n, dtype=DT)
        cols = [op(eye[i].reshape(z.shape)).reshape(-1) for i in range(n)]
        mat = torch.stack(cols, 1).numpy()
        vals, vecs = np.linalg.eig(mat)
        method = "dense"
    else:
        from scipy.sparse.linalg import LinearOperator, eigs

        lin = LinearOperator((n, n), dtype=np.float64, matvec=lambda x: op(
            torch.as_tensor(np.real(x), dtype=DT).reshape(z.shape)).reshape(-1).numpy())
        vals, vecs = eigs(lin, k=min(k + 2, n - 2), which="LM", tol=1e-10, maxiter=5000)
        method = "arnoldi"
    order = np.argsort(-np.abs(vals), kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    if basis is not None:  # the deflated directions show as zeros; drop exactly those
        m = basis.shape[0]
        if method == "dense":
            small = np.argsort(np.abs(vals), kind="stable")[:m]
            keep = np.setdiff1d(np.arange(vals.size), small)
            vals, vecs = vals[keep], vecs[:, keep]
    kk = min(k, vals.size)
    return {
        "radius": float(np.abs(vals[0])) if vals.size else 0.0,
        "eigenvalues": vals[:kk],
        "modes": np.real(vecs[:, :kk]).T.reshape((kk,) + tuple(z.shape)),
        "method": method,
    }


def free_mode_split(step: StepMap, z: torch.Tensor, steps: int = 1, k: int = 4,
                    deflate: torch.Tensor | None = None) -> dict:
    """Free mode: the norms and the directions of the rows, separately.

    A plain step on a loss of the directions ``u = z / |z|`` moves each row orthogonally to
    itself (claim ``projection``), so ``|z'|^2 = |z|^2 + lr^2 |grad|^2`` (claim
    ``norm_growth``) and the direction takes a projected sphere step of size ``lr / |z|^2``
    (the effective rate). Returns ``effective_rate`` (per row, ``lr / |z_i|^2``),
    ``radial_growth`` (``|z'_i| / |z_i|`` per row, >= 1 without weight decay) and
    ``tangent``: :func:`spectrum` of the direction map ``z -> |z| z' / |z'|`` (norms held,
    directions moved by the step) on the tangent space.
    """
    if step.run.update_mode != "free":
        raise ValueError(f"update_mode must be 'free' for the radial/tangent split, got "
                         f"{step.run.update_mode!r}")
    z = z.detach().to(DT)
    step = _labels_for(step, z.shape[0] // 2)
    r = z.norm(dim=-1)
    new = step(z)

    class _Directions(StepMap):
        def __call__(self, x):
            y = StepMap.__call__(self, x)
            return y * (x.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))

    held = _Directions(step.run, step.lr, step.labels, step.prototypes)
    return {
        "effective_rate": (step.lr / r**2).numpy(),
        "radial_growth": (new.norm(dim=-1) / r).numpy(),
        "tangent": spectrum(held, z, steps, k, tangent=True, deflate=deflate),
    }
