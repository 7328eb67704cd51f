"""Spectra of the step map's Jacobian: spectral radius and leading modes.

:func:`spectrum` gives the spectral radius and leading modes of the Jacobian of one or two
steps of a :class:`~simulate.stability.step.StepMap` from Jacobian-vector products
(``torch.func.jvp``; dense only for small states, Arnoldi iteration otherwise);
:func:`rotation_modes` spans the neutral global rotations to deflate;
:func:`free_mode_split` separates, in the free mode, the radial (norm) direction from the
tangent spectrum of the direction map and reports the effective rate ``lr / |z|^2``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .step import DT, StepMap, _labels_for

#: states up to this many numbers get their Jacobian spectrum from the dense matrix (built
#: column by column from Jacobian-vector products); larger states use Arnoldi iteration
DENSE_LIMIT = 600


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
    q, basis = _deflator(deflate)
    if z.numel() <= DENSE_LIMIT:
        vals, vecs = _dense_eig(step, z, steps, lambda v: q(proj(v)))
        method = "dense"
    else:
        vals, vecs = _arnoldi_eig(lambda v: q(proj(step.jvp(z, proj(q(v)), steps))), z.shape, k)
        method = "arnoldi"
    # the deflated directions show as zeros of the dense matrix; drop exactly those
    drop = basis.shape[0] if basis is not None and method == "dense" else 0
    vals, vecs = _by_modulus(vals, vecs, drop)
    kk = min(k, vals.size)
    return {
        "radius": float(np.abs(vals[0])) if vals.size else 0.0,
        "eigenvalues": vals[:kk],
        "modes": np.real(vecs[:, :kk]).T.reshape((kk,) + tuple(z.shape)),
        "method": method,
    }


def _deflator(deflate: torch.Tensor | None):
    """``(q, basis)``: ``q`` removes the span of the orthonormal ``deflate`` (m, 2B, D) from
    a state-shaped vector, ``basis`` its rows flattened (m, 2B D); the identity and None when
    there is nothing to remove."""
    basis = None if deflate is None or len(deflate) == 0 else deflate.reshape(len(deflate), -1).to(DT)

    def q(v):
        if basis is None:
            return v
        flat = v.reshape(-1)
        return (flat - basis.T @ (basis @ flat)).reshape(v.shape)

    return q, basis


def _dense_eig(step: StepMap, z: torch.Tensor, steps: int, outer: Callable):
    """All eigenvalues and eigenvectors of ``outer J outer``, ``J`` the Jacobian of ``steps``
    steps at ``z``, ``outer`` a symmetric projection of state-shaped vectors."""
    n = z.numel()
    # the Jacobian of the steps at z in one forward-mode pass (vmap over jvp), then the
    # projections applied as matrices
    jac = torch.func.jacfwd(lambda x: step.iterate(x, steps))(z).reshape(n, n)
    eye = torch.eye(n, dtype=DT)
    left = torch.stack([outer(eye[i].reshape(z.shape)).reshape(-1) for i in range(n)], 1)
    mat = left @ jac @ left  # outer is a symmetric projection
    # torch's eig, not numpy's: numpy's OpenBLAS threads spin against torch's on the same
    # cores (a 128 x 128 matrix took 0.1 to 1.1 s, the same eig in torch a few ms)
    vals, vecs = torch.linalg.eig(mat)
    return vals.numpy(), vecs.numpy()


def _arnoldi_eig(op: Callable, shape: torch.Size, k: int):
    """The ``k + 2`` eigenvalues of largest modulus of the linear map ``op`` on state-shaped
    vectors (and their eigenvectors), by Arnoldi iteration on its products."""
    from scipy.sparse.linalg import LinearOperator, eigs

    n = shape.numel()
    lin = LinearOperator((n, n), dtype=np.float64, matvec=lambda x: op(
        torch.as_tensor(np.real(x), dtype=DT).reshape(shape)).reshape(-1).numpy())
    return eigs(lin, k=min(k + 2, n - 2), which="LM", tol=1e-10, maxiter=5000)


def _by_modulus(vals: np.ndarray, vecs: np.ndarray, drop: int = 0):
    """Eigenpairs by decreasing modulus (stable order), without the ``drop`` smallest."""
    order = np.argsort(-np.abs(vals), kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    if drop:
        small = np.argsort(np.abs(vals), kind="stable")[:drop]
        keep = np.setdiff1d(np.arange(vals.size), small)
        vals, vecs = vals[keep], vecs[:, keep]
    return vals, vecs


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
