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
    if run.optimizer != "sgd" or run.schedule != "constant" or run.warmup_steps != 0:
        raise ValueError(f"run.optimizer must be 'sgd' with schedule 'constant' and no warmup for "
                         f"the stability analysis, got {run.optimizer!r}, {run.schedule!r}, "
                         f"warmup_steps {run.warmup_steps!r}")
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
        # the Jacobian of the steps at z in one forward-mode pass (vmap over jvp), then the
        # projections applied as matrices
        jac = torch.func.jacfwd(lambda x: step.iterate(x, steps))(z).reshape(n, n)
        eye = torch.eye(n, dtype=DT)
        left = torch.stack([q(proj(eye[i].reshape(z.shape))).reshape(-1) for i in range(n)], 1)
        mat = (left @ jac @ left).numpy()  # q and proj are symmetric projections
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


# ---------------------------------------------------------------------------- collapse and onset


def collapsed(final_rank: float) -> bool:
    """Whether a run whose effective rank at its last step is ``final_rank`` is collapsed
    (:data:`COLLAPSED_RANK`). A diverged run (NaN rank) counts as collapsed: it did not stay
    healthy."""
    return not (final_rank > COLLAPSED_RANK)


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
        from .engine import train_chunk

        lr = 1e-3 * rate_scale(run) if healthy_lr is None else healthy_lr
        w = train_chunk([replace(run, lr=float(lr))]).model.weight[0].detach().to(DT)
        n = w.shape[0] // 2
        z = torch.cat([w[:b], w[n:n + b]])
        z = z / z.norm(dim=-1, keepdim=True)
    return z


def _batch_labels(run: RunConfig) -> torch.Tensor:
    """Labels of an analysis batch: points cycle through the k classes, the first
    ``round(label_fraction * B)`` keep theirs (-1 for the rest)."""
    b = run.batch_size
    labels = torch.arange(b) % run.k
    labels[int(round(run.label_fraction * b)):] = -1
    return labels


def attraction_edge(run: RunConfig, lo: float | None = None, hi: float | None = None,
                    rel_tol: float = 1e-3) -> float:
    """Learning rate above which the collapsed configuration (:func:`collapsed_state`)
    attracts under the run's step: the spectral radius of the Jacobian of two steps
    (tangent, global rotations removed) falls below 1. ``math.inf`` when it is not a fixed
    point of two steps (CLOP pulls it apart) or does not attract anywhere in ``[lo, hi]``
    (default ``[1e-3, 1e4]`` times :func:`rate_scale`; the projected steps of the sphere and
    free modes never make it attract). Bisection on the linear stability only, no training.
    For NT-Xent in the sphere_raw mode it equals 2B times ``critical_lr("rank1_cycle", n=B)``.
    """
    run = _check_run(run)
    nu2 = 1.0 if run.update_mode != "free" else initial_sq_norm(run)
    if (run.loss == "ntxent" and run.update_mode == "sphere_raw" and run.clop_weight == 0
            and lo is None and hi is None):
        # claim rank1_cycle (n = B per side) in the engine's units; the bisection below
        # reproduces it (tests/test_onset.py)
        import theory

        return 2 * run.batch_size * theory.critical_lr("rank1_cycle", tau=run.temperature,
                                                       n=run.batch_size)
    sphere_run = replace(run, update_mode="sphere" if run.update_mode == "free" else run.update_mode,
                         init_norm=None)
    scale = 2 * run.batch_size * (run.temperature if run.loss in ("ntxent", "supcon", "dcl") else 1.0)
    lo = 1e-3 * scale if lo is None else lo
    hi = 1e4 * scale if hi is None else hi
    dim = 2 if run.clop_weight == 0 else max(2, run.embedding_dim)
    z = collapsed_state(run, dim)
    labels = _batch_labels(run)
    rot = rotation_modes(z) if run.clop_weight == 0 else None

    def radius(eta):
        step = make_step(sphere_run, labels=labels, lr=eta)
        back = step.iterate(z, 2)
        if not torch.allclose(back, z, atol=1e-9):
            return math.inf
        return spectrum(step, z, steps=2, k=1, deflate=rot)["radius"]

    grid = np.geomspace(lo, hi, 15)
    rs = [radius(float(e)) for e in grid]
    below = [i for i, r in enumerate(rs) if r < 1]
    if not below:
        return math.inf
    i = below[0]
    if i == 0:
        return float(grid[0]) * nu2
    a, b = float(grid[i - 1]), float(grid[i])
    while b / a - 1 > rel_tol:
        m = math.sqrt(a * b)
        a, b = (a, m) if radius(m) < 1 else (m, b)
    return math.sqrt(a * b) * nu2


def isotropic_statistics(run: RunConfig, grid: int = 4001, cos_pair: float = 1.0) -> dict:
    """Softmax statistics an anchor sees in an isotropic healthy state: its positive at
    cosine ``cos_pair`` (1: aligned), the 2B - 2 other rows spread uniformly on the sphere of
    dimension D (cosine density proportional to sin^(D-2) of the angle). Returns ``p`` (the
    positive's weight; 0 for DCL, whose denominator leaves it out), ``qc`` (the
    softmax-weighted sum of the other rows' cosines, ``sum_k q_k c_k``) and ``s`` (the
    softmax-weighted tangent second moment along one tangent direction,
    ``sum_k q_k (1 - c_k^2) / (D - 1)``). On the sphere ``qc = s / tau`` (integration by parts
    of ``e^{c/tau}`` against the density; a check of the quadrature)."""
    d, b = run.embedding_dim, run.batch_size
    tau = run.temperature
    if not (-1.0 <= cos_pair <= 1.0):
        raise ValueError(f"cos_pair must lie in [-1, 1], got {cos_pair!r}")
    theta = np.linspace(0.0, math.pi, grid)
    c = np.cos(theta)
    dens = np.sin(theta) ** (d - 2) if d > 2 else np.ones_like(theta)
    dens /= np.trapezoid(dens, theta)
    shift = 1.0 / tau
    e_neg = np.trapezoid(dens * np.exp(c / tau - shift), theta)  # E[e^{c/tau}] e^{-1/tau}
    e_cos = np.trapezoid(dens * np.exp(c / tau - shift) * c, theta)
    e_tan = np.trapezoid(dens * np.exp(c / tau - shift) * (1 - c**2), theta)
    pos = 0.0 if run.loss == "dcl" else math.exp((cos_pair - 1.0) / tau)
    z = pos + (2 * b - 2) * e_neg
    return {"p": pos / z, "qc": (2 * b - 2) * e_cos / z, "s": (2 * b - 2) * e_tan / ((d - 1) * z)}


def collective_edge(run: RunConfig) -> float:
    """Learning rate at which the collective modes (pairs moving together) of an isotropic
    healthy state lose stability under the projected step: claim ``ntxent_batch``'s
    curvature of the other anchors' softmax, ``2 s / tau^2`` with every point moving (the
    positive's attraction does not act on a pair moving rigidly), in the engine's units
    ``eta = 2B * 2 / (2 s / tau^2) = 2B tau^2 / s`` (:func:`isotropic_statistics`); times the
    initial squared norm in the free mode (effective rate). Temperature losses only. A
    diagnostic: :func:`predict_onset` does not use it (the raw step's pair-splitting edge,
    :func:`splitting_edge`, lies at half of it)."""
    if run.loss not in ("ntxent", "supcon", "dcl"):
        return math.nan
    st = isotropic_statistics(run)
    return 2 * run.batch_size * run.temperature**2 / st["s"] * initial_sq_norm(run)


def training_points(run: RunConfig) -> int:
    """Number of training points N (the minibatches draw B of them per step)."""
    data = run.data_config()
    if run.data == "digits":
        return int(data.n_train)
    n = data.per_class * data.k
    return int(n - round(data.holdout_fraction * n))


def updates_per_point(run: RunConfig) -> float:
    """How often a point (both its views) takes a step in a run: ``steps * B / N``."""
    return run.steps * run.batch_size / training_points(run)


def initial_pair_cosine(run: RunConfig) -> float:
    """Cosine between a point's two views at the start, from the data model: views
    ``x + aug_sigma * n1`` and ``x + aug_sigma * n2`` of a point ``x`` with
    ``|x|^2 ~ mean_scale^2 + noise_dims sigma^2``, so ``cos ~ |x|^2 / (|x|^2 + d aug_sigma^2)``
    (the ratio of the expected dot product to the expected squared norm). ``init_norm``
    rescales rows and leaves it unchanged. Gaussian-mixture data without ``sign_flip`` only
    (the edges below are NaN otherwise)."""
    noise_dims = run.d if run.noise_rank is None else run.noise_rank
    sig = run.mean_scale**2 + noise_dims * run.sigma**2
    return sig / (sig + run.d * run.aug_sigma**2)


def pair_split_ratio(run: RunConfig, beta: float, cos_pair: float) -> float:
    """One update of an aligned-then-split pair under the raw step, mean field.

    A point's two views ``z_i, z_p`` at angle theta (``cos_pair``), the other 2B - 2 rows
    isotropic. The raw step of NT-Xent (mean over the 2B anchors) moves ``z_i`` to
    ``z_i + beta [(2 - q_ip - q_pi) z_p - sum_k (q_ik + q_ki) z_k]`` with
    ``beta = lr / (2 B tau)``; for isotropic others the softmax-weighted sum is, on average,
    ``2 qc z_i`` (:func:`isotropic_statistics` at this ``cos_pair``), so
    ``z_i' ~ (1 - 2 beta qc) z_i + 2 beta (1 - p) z_p`` and after renormalisation
    ``tan(theta'/2) = r tan(theta/2)`` with
    ``r = |1 - 2 beta (qc + 1 - p)| / (1 + 2 beta (1 - p - qc))``. Returns r: the pair
    re-aligns for r < 1 and splits for r > 1, which happens for ``beta > 1 / (2 qc)``
    (p cancels). Linearised at theta = 0 it is the splitting mode's multiplier
    ``1 - eta lambda / (1 - eta gamma)`` of the raw step (claim ``ntxent_batch``'s splitting
    eigenvalue lambda, the normal gradient gamma renormalising it). DCL has p = 0; SupCon is
    treated as NT-Xent (its class positives are left out); weight decay ``wd`` scales ``z_i``
    by ``1 - lr wd`` first, so ``1 - 2 beta qc`` becomes ``1 - lr wd - 2 beta qc``."""
    st = isotropic_statistics(run, cos_pair=cos_pair)
    return _split_ratio(beta, st["p"], st["qc"], _decay_per_beta(run))


def _decay_per_beta(run: RunConfig) -> float:
    """Weight decay's radial factor ``1 - lr wd`` written as ``1 - beta w``, ``w = 2B tau wd``."""
    return 2 * run.batch_size * run.temperature * run.weight_decay


def _split_ratio(beta: float, p: float, qc: float, w: float = 0.0) -> float:
    # z_i' ~ a z_i + c z_p with a = 1 - beta w - 2 beta qc, c = 2 beta (1 - p): the pair's
    # centre scales by a + c, its half-difference by a - c
    a, c = 1 - beta * w - 2 * beta * qc, 2 * beta * (1 - p)
    den = abs(a + c)
    return math.inf if den == 0 else abs(a - c) / den


def _raw_temperature_run(run: RunConfig) -> bool:
    """Whether the pair map applies: raw steps, a temperature loss, mixture data whose views
    start on the same side (:func:`initial_pair_cosine` models exactly that)."""
    return (run.update_mode == "sphere_raw" and run.loss in ("ntxent", "supcon", "dcl")
            and run.data == "mixture" and not run.sign_flip)


def splitting_edge(run: RunConfig, cos_pair: float | None = None) -> float:
    """Learning rate above which a pair at cosine ``cos_pair`` (default
    :func:`initial_pair_cosine`) splits under the raw step: ``lr = 2B tau / (2 qc)``
    (:func:`pair_split_ratio` = 1; with weight decay ``2B tau / (2 qc + 2B tau wd)``). At ``cos_pair = 1`` it is ``2B tau^2 / (2 s)``, half the
    isotropic :func:`collective_edge`. The initial pairs are not aligned (the views differ by
    the augmentation), which lowers the positive's softmax weight and raises ``qc``; at small
    tau this moves the edge by a large factor (tau = 0.1, B = 32, d = 16: 5.5 instead of 25
    times 2B tau). NaN unless the update mode is ``sphere_raw`` with a temperature loss on
    mixture data without ``sign_flip``."""
    if not _raw_temperature_run(run):
        return math.nan
    c = initial_pair_cosine(run) if cos_pair is None else float(cos_pair)
    qc = isotropic_statistics(run, cos_pair=c)["qc"]
    return 2 * run.batch_size * run.temperature / (2 * qc + _decay_per_beta(run))


#: the pair angle at which a split pair counts as having left the healthy state: its views
#: orthogonal, halfway to the antipodal (+-u*) pairing
ESCAPE_ANGLE = math.pi / 2


def _pair_weights(run: RunConfig):
    """``cos_pair -> (p, qc)`` of :func:`isotropic_statistics`, its integrals done once."""
    st = isotropic_statistics(run)  # at cos_pair = 1: recover the integrals from p and qc
    tau = run.temperature
    if run.loss == "dcl":
        return lambda c: (0.0, st["qc"])
    neg = (1.0 / st["p"] - 1.0)  # (2B - 2) E[e^{(c - 1)/tau}] with the positive's term 1
    cos_sum = st["qc"] / st["p"]  # (2B - 2) E[e^{(c - 1)/tau} c]

    def weights(c):
        pos = math.exp((c - 1.0) / tau)
        z = pos + neg
        return pos / z, cos_sum / z

    return weights


def _escapes(beta: float, theta0: float, updates: int, weights, w: float = 0.0) -> bool:
    t = math.tan(theta0 / 2)
    target = math.tan(ESCAPE_ANGLE / 2)
    for _ in range(updates):
        th = 2 * math.atan(t)
        p, qc = weights(math.cos(th))
        t *= _split_ratio(beta, p, qc, w)
        if t >= target:
            return True
    return False


def escape_edge(run: RunConfig, rel_tol: float = 1e-4) -> float:
    """Smallest learning rate at which the run's pairs leave the healthy state within its
    steps: the pair angle, iterated by :func:`pair_split_ratio` (its statistics updated with
    the angle) from :func:`initial_pair_cosine`, reaches :data:`ESCAPE_ANGLE` within the
    ``floor(updates_per_point(run))`` updates a point takes. The ratio grows with the rate
    (its derivative in beta has the sign of 1 - p), so a bisection on the rate finds it.
    ``math.inf`` when even the largest rates (the ratio's limit
    ``(qc + 1 - p) / (1 - p - qc)``) do not split the pairs in time (few updates per point);
    NaN unless the update mode is ``sphere_raw`` with a temperature loss on mixture data
    without ``sign_flip``. Rates in the engine's units, ``lr = beta * 2 B tau``."""
    if not _raw_temperature_run(run):
        return math.nan
    theta0 = math.acos(min(1.0, max(-1.0, initial_pair_cosine(run))))
    updates = int(math.floor(updates_per_point(run)))
    weights = _pair_weights(run)
    w = _decay_per_beta(run)
    big = 1e12
    if updates < 1 or theta0 <= 0 or not _escapes(big, theta0, updates, weights, w):
        return math.inf
    lo, hi = 1e-6, big
    while hi / lo - 1 > rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if _escapes(mid, theta0, updates, weights, w) else (mid, hi)
    return hi * 2 * run.batch_size * run.temperature


def predict_onset(run: RunConfig) -> float:
    """Predicted learning rate above which training ``run`` ends collapsed
    (:data:`COLLAPSED_RANK`), from the stability analysis alone (no training).

    Collapse needs two things. The collapsed configuration must attract
    (:func:`attraction_edge`; never under the projected steps of the sphere and free modes,
    never with CLOP, which makes it non-stationary). And the run must leave the healthy state
    within its steps: in the runs the healthy state is left through its pairs, whose two
    views split apart (then anti-align, the +-u* pairing, and gather on one line); the
    collective modes of the spread state do not bind. :func:`escape_edge` is the smallest
    rate at which a pair, starting at the views' initial angle (:func:`initial_pair_cosine`)
    and moved by the raw step's mean-field pair map (:func:`pair_split_ratio`, isotropic
    other rows), reaches :data:`ESCAPE_ANGLE` within the updates a point takes
    (:func:`updates_per_point`). The prediction is the larger of the two edges;
    ``math.inf``: no collapse predicted. (In the free mode the edges would be at
    ``lr = e * |z|^2``, the effective rate times the initial squared norm, and norm growth
    only raises them; the projected step never makes +-u* attract, so the prediction there
    is ``math.inf``.) Losses without a temperature, update modes other than ``sphere_raw``,
    the digits data and sign-flipped views get the attraction edge alone.

    Accuracy (``python -m figures onset``, 1000 steps, 3 seeds; measured brackets are about
    +-5% wide). ``--grid full`` (18 rows): median ``|pred / meas - 1|`` 0.053 (target 0.15),
    14 rows within 15%, 16 within 2x. ``--grid heldout`` (13 rows, values the full grid does
    not use; run once, after the predictor was fixed): median 0.083, 11 within 15%, all 13
    within 2x, worst B = 16 (0.73) and tau = 0.15 (0.79). Short runs are outside its reach:
    the full grid's rows at 300 steps (25 updates per point, ``--steps 300``) give median
    0.51, 9 of 18 within 2x, with the prediction far below or collapse predicted where none
    is measured. Where it is off at 1000 steps the prediction is low (ratios 0.6 to 0.97
    outside tau <= 0.2): the time the split pairs then need to gather onto one line (about
    20 to 30 updates per point in runs at very large rates, B = 8 to 32, d = 16 and 64) is
    not modelled, and it counts most where the pair map grows slowly (d = 64: 0.61, tau = 1:
    0.79) or a point takes few updates (B = 16). Misses: B = 8 (21 updates per point: the
    pairs split in time, but no run gathers onto one line within 1000 steps at any rate) and
    SupCon (no run collapses: its class positives, which the pair map leaves out, keep the
    classes apart; it ends in class collapse, not on +-u*). The sphere and free modes and
    CLOP agree (no collapse). Nothing here was fitted to a grid: the escape angle pi/2 is the
    views' orthogonality (pi/3 or 2 pi/3 move the full grid's ratios by at most 0.09, at
    d = 64), the initial angle comes from the data model, the statistics from an isotropic
    sphere.
    """
    run = _check_run(run)
    a = attraction_edge(run)
    if not math.isfinite(a):
        return math.inf
    e = escape_edge(run)
    return a if math.isnan(e) else max(a, e)


def _train_final_ranks(runs: list[RunConfig], device: str = "cpu") -> list[float]:
    """Final effective rank of each run, training runs that share a chunk key together."""
    from .engine import train_chunk

    groups: dict = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.chunk_key(), []).append(i)
    out = [math.nan] * len(runs)
    for idx in groups.values():
        chunk = [runs[i] for i in idx]
        rows = train_chunk(chunk, device).rows
        last = {}
        for row in rows:
            if row["run_id"] not in last or row["step"] > last[row["run_id"]]["step"]:
                last[row["run_id"]] = row
        for i in idx:
            out[i] = float(last[runs[i].run_id]["effective_rank"])
    return out


def measure_onsets(runs: list[RunConfig], seeds=(0, 1, 2), lo: float | None = None,
                   hi: float | None = None, points: int = 9, rounds: int = 4,
                   device: str = "cpu") -> list[dict]:
    """Measured onset of collapse of each configuration, per seed, by training.

    For every configuration and seed: a scan of ``points`` learning rates log-spaced over
    ``[lo, hi]`` (default ``[0.03, 3000]`` times :func:`rate_scale`), then ``rounds``
    bisections (geometric midpoints) between the largest healthy rate below the first
    collapsed one and that one. Every round trains all brackets of all configurations as
    stacks (runs sharing a chunk key train together). A seed's onset is the geometric
    midpoint of its final bracket; ``math.inf`` when no scanned rate collapses, ``lo`` when
    the smallest does.

    Returns one dict per configuration: ``onset`` (median over seeds), ``per_seed``,
    ``spread`` (largest over smallest finite per-seed onset), ``brackets``, ``runs_trained``.
    """
    if not runs:
        return []
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if not (isinstance(points, int) and points >= 2):
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    for r in runs:
        if r.model != "free":
            raise ValueError(f"run.model must be 'free', got {r.model!r}")
    trained = 0
    brackets = {}
    scans = []
    for ci, r in enumerate(runs):
        s = rate_scale(r)
        a = 0.03 * s if lo is None else lo
        b = 3000.0 * s if hi is None else hi
        if not (0 < a < b):
            raise ValueError(f"lo and hi must satisfy 0 < lo < hi, got {a!r}, {b!r}")
        grid = [float(x) for x in np.geomspace(a, b, points)]
        for seed in seeds:
            scans.append((ci, seed, grid))
    jobs = [replace(runs[ci], lr=lr, seed=seed) for ci, seed, grid in scans for lr in grid]
    ranks = _train_final_ranks(jobs, device)
    trained += len(jobs)
    k = 0
    for ci, seed, grid in scans:
        rk = ranks[k:k + len(grid)]
        k += len(grid)
        first = next((i for i, v in enumerate(rk) if collapsed(v)), None)
        if first is None:
            brackets[(ci, seed)] = (grid[-1], math.inf)
        elif first == 0:
            brackets[(ci, seed)] = (0.0, grid[0])
        else:
            brackets[(ci, seed)] = (grid[first - 1], grid[first])
    for _ in range(rounds):
        open_ = [key for key, (a, b) in brackets.items() if a > 0 and math.isfinite(b)]
        if not open_:
            break
        mids = [math.sqrt(brackets[key][0] * brackets[key][1]) for key in open_]
        jobs = [replace(runs[ci], lr=m, seed=seed) for (ci, seed), m in zip(open_, mids)]
        ranks = _train_final_ranks(jobs, device)
        trained += len(jobs)
        for key, m, v in zip(open_, mids, ranks):
            a, b = brackets[key]
            brackets[key] = (a, m) if collapsed(v) else (m, b)
    out = []
    for ci, r in enumerate(runs):
        per = []
        for seed in seeds:
            a, b = brackets[(ci, seed)]
            per.append(math.inf if not math.isfinite(b) else (b if a == 0 else math.sqrt(a * b)))
        finite = [v for v in per if math.isfinite(v)]
        out.append({
            "onset": float(np.median(per)) if per else math.nan,
            "per_seed": per,
            "spread": (max(finite) / min(finite)) if finite else math.nan,
            "brackets": [brackets[(ci, s)] for s in seeds],
            "runs_trained": trained,
        })
    return out


def measure_onset(run: RunConfig, seeds=(0, 1, 2), **kw) -> dict:
    """:func:`measure_onsets` for one configuration."""
    return measure_onsets([run], seeds, **kw)[0]


# ---------------------------------------------------------------------------- onset grids

#: the configuration every grid row changes one thing of: NT-Xent on free embeddings,
#: unprojected steps, 4 classes in 16 dimensions, 512 points (384 for training), batch 32
#: (the data of the quick preset's phase-diagram sweeps)
ONSET_BASE = dict(model="free", update_mode="sphere_raw", loss="ntxent", temperature=0.5,
                  batch_size=32, k=4, d=16, per_class=128, mean_scale=2.0, sigma=1.0,
                  aug_sigma=0.5, label_fraction=0.5, steps=300, log_every=300)
#: steps of the quick, full and held-out grids' runs: collapse is a slow escape from the
#: healthy state (at tau = 0.5, lr = 540 a run is still spread at step 300 and on one line at
#: step 500), so 300 steps would mostly measure how long the escape takes
FULL_GRID_STEPS = 1000
#: grid name -> (rows: label -> changes to ONSET_BASE, seeds, scan points, bisection rounds)
ONSET_GRIDS = {
    "tiny": ({"tau=0.2": {"temperature": 0.2}, "sphere": {"update_mode": "sphere"}},
             (0,), 4, 1),
    "quick": ({"tau=0.2": {"temperature": 0.2}, "tau=0.5": {},
               "sphere": {"update_mode": "sphere"}, "clop=1": {"clop_weight": 1.0}},
              (0, 1), 7, 3),
    "full": ({
        "tau=0.1": {"temperature": 0.1}, "tau=0.2": {"temperature": 0.2}, "tau=0.5": {},
        "tau=1": {"temperature": 1.0},
        "B=8": {"batch_size": 8}, "B=64": {"batch_size": 64}, "B=256": {"batch_size": 256},
        "d=4": {"d": 4}, "d=64": {"d": 64},
        "k=2": {"k": 2, "per_class": 256}, "k=16": {"k": 16, "per_class": 32},
        "dcl": {"loss": "dcl"}, "supcon": {"loss": "supcon"},
        "clop=1": {"clop_weight": 1.0}, "clop=10": {"clop_weight": 10.0},
        "sphere": {"update_mode": "sphere"}, "free": {"update_mode": "free"},
        "free, init_norm=0.3": {"update_mode": "free", "init_norm": 0.3},
    }, (0, 1, 2), 9, 4),
    # values the full grid does not use, checked separately (the predictor was built
    # against the full grid's measurements; this grid was not looked at while building it)
    "heldout": ({
        "tau=0.15": {"temperature": 0.15}, "tau=0.3": {"temperature": 0.3},
        "tau=0.7": {"temperature": 0.7},
        "B=16": {"batch_size": 16}, "B=128": {"batch_size": 128},
        "d=8": {"d": 8}, "d=32": {"d": 32}, "k=8": {"k": 8, "per_class": 64},
        "aug=0.3": {"aug_sigma": 0.3}, "aug=0.8": {"aug_sigma": 0.8},
        "tau=0.2, d=8": {"temperature": 0.2, "d": 8},
        "dcl, tau=0.2": {"loss": "dcl", "temperature": 0.2},
        "dcl, clop=1": {"loss": "dcl", "clop_weight": 1.0},
    }, (0, 1, 2), 9, 4),
}


def onset_grid(name: str, steps: int | None = None) -> list[tuple[str, RunConfig]]:
    """``(label, run)`` rows of a named grid (``tiny``, ``quick``, ``full``, ``heldout``)."""
    if name not in ONSET_GRIDS:
        raise ValueError(f"grid must be one of {', '.join(ONSET_GRIDS)}, got {name!r}")
    rows, *_ = ONSET_GRIDS[name]
    base = dict(ONSET_BASE)
    if name == "tiny":
        base.update(per_class=16, batch_size=8, d=4, steps=60, log_every=60)
    if name in ("quick", "full", "heldout"):
        base.update(steps=FULL_GRID_STEPS, log_every=FULL_GRID_STEPS)
    if steps is not None:
        base.update(steps=steps, log_every=steps)
    return [(label, RunConfig(**{**base, **change})) for label, change in rows.items()]


def onset_ratio(predicted: float, measured: float) -> float:
    """``predicted / measured``; 1 when neither collapses (both infinite), inf or 0 when
    only one does."""
    if not math.isfinite(predicted) and not math.isfinite(measured):
        return 1.0
    if not math.isfinite(measured):
        return 0.0
    return predicted / measured


def onset_table(name: str, device: str = "cpu", steps: int | None = None,
                progress: Callable[[str], None] | None = None) -> list[dict]:
    """Predicted against measured onset for every row of grid ``name``."""
    grid = onset_grid(name, steps)
    _, seeds, points, rounds = ONSET_GRIDS[name]
    preds = []
    for label, run in grid:
        a, e = attraction_edge(run), escape_edge(run)
        preds.append((predict_onset(run), a, e, splitting_edge(run), collective_edge(run)))
        if progress:
            progress(f"predicted {label}")
    measured = measure_onsets([r for _, r in grid], seeds, points=points, rounds=rounds, device=device)
    out = []
    for (label, run), (pred, a, e, split, c), m in zip(grid, preds, measured):
        ratio = onset_ratio(pred, m["onset"])
        out.append({
            "config": label, "loss": run.loss, "update_mode": run.update_mode,
            "temperature": run.temperature, "batch_size": run.batch_size, "d": run.d, "k": run.k,
            "clop_weight": run.clop_weight, "init_norm": run.init_norm, "aug_sigma": run.aug_sigma,
            "steps": run.steps, "updates_per_point": updates_per_point(run),
            "predicted": pred, "attraction_edge": a, "escape_edge": e, "splitting_edge": split,
            "collective_edge": c,
            "measured": m["onset"], "per_seed": m["per_seed"], "spread": m["spread"],
            "ratio": ratio, "within_2x": bool(0.5 <= ratio <= 2.0),
            "note": _miss_note(pred, m["onset"], a, e, run),
        })
    return out


def _miss_note(pred: float, meas: float, attract: float, escape: float, run: RunConfig) -> str:
    """Why a row agrees or misses, from which edge binds and which side is infinite."""
    if not math.isfinite(pred) and not math.isfinite(meas):
        why = ("CLOP makes +-u* non-stationary" if run.clop_weight > 0 else
               "the projected step never makes +-u* attract" if run.update_mode != "sphere_raw" else
               "+-u* is not a fixed point of this loss's step" if not math.isfinite(attract) else
               "the pairs do not split within the run's updates")
        return f"agree: no collapse ({why})"
    if math.isfinite(pred) and not math.isfinite(meas):
        if run.loss == "supcon":
            return (f"miss: collapse predicted above {pred:.3g} (the +-u* attraction edge) but no "
                    f"run collapsed within {run.steps} steps up to 3000 x 2B tau: SupCon's class "
                    f"positives hold the classes apart (its runs end in class collapse, rank "
                    f"k - 1, not on +-u*); the pair map ignores the class positives")
        return (f"miss: collapse predicted above {pred:.3g} but no run collapsed within "
                f"{run.steps} steps up to 3000 x 2B tau: the pairs split in time "
                f"({updates_per_point(run):.3g} updates per point), but the gathering onto one "
                f"line that follows the split is not modelled and takes longer than the run")
    if not math.isfinite(pred):
        return "miss: collapse measured although +-u* does not attract under this step"
    r = pred / meas
    edge = "escape" if math.isfinite(escape) and escape >= attract else "attraction"
    if 0.85 <= r <= 1.15:
        return f"within 15% ({edge} edge binds)"
    side = "above" if r > 1 else "below"
    why = ""
    if r < 1 and edge == "escape":
        why = (f"; after the split the pairs still gather onto one line, about 20-30 updates "
               f"per point, which is not modelled: this run has {updates_per_point(run):.3g}")
    within = "within 2x" if 0.5 <= r <= 2 else "miss"
    return f"{within}: prediction {side} the measured onset by {max(r, 1 / r):.2g}x ({edge} edge binds{why})"
